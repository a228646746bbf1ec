"""`stiv-bench model`: forward+backward FLOP/s of a mid-size STIV vs a same-run f32 matmul.

Mid-size: 8 blocks, 512 wide, 8 heads, 8 latent frames of 16x16 tokens, batch 4, masking off.
Also reports the compile time of the 28-block XL forward+backward (abstract shapes, no memory).
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
from flax import nnx

from stiv_jax import config_schema as schema
from stiv_jax.bench.common import matmul_flops_per_s, time_fn
from stiv_jax.models import flops as flops_lib
from stiv_jax.models.stiv import STIV


def make_inputs(cfg, batch: int, text_len: int, frames: int):
  ks = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(ks[0], (batch, frames, cfg.latent_height, cfg.latent_width,
                                cfg.latent_channels))
  return (x, jax.random.uniform(ks[1], (batch,)),
          jax.random.normal(ks[2], (batch, text_len, cfg.text_dim)),
          jnp.ones((batch, text_len), bool), jax.random.normal(ks[3], (batch, cfg.text_dim)),
          jnp.ones((batch, 6), jnp.float32))


def grad_fn(graphdef, masked: bool):
  """Loss = mean squared velocity; returns jax.grad of it wrt the model state."""

  def loss(state, *args):
    out = nnx.merge(graphdef, state)(*args, mask_key=jax.random.key(1) if masked else None)
    return jnp.mean(jnp.square(out.velocity))

  return jax.jit(jax.value_and_grad(loss))


def xl_compile_seconds(text_len: int = 77) -> float:
  """Lower + compile the 28-block XL forward+backward from abstract shapes only."""
  cfg = schema.model_config("XL", remat="save_self_attn")
  abstract = nnx.eval_shape(lambda: STIV(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  args = jax.eval_shape(lambda: make_inputs(cfg, 1, text_len, cfg.num_frames))
  t0 = time.perf_counter()
  grad_fn(graphdef, masked=True).lower(state, *args).compile()
  return time.perf_counter() - t0


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--frames", type=int, default=8)
  p.add_argument("--tokens-per-side", type=int, default=16)
  p.add_argument("--text-len", type=int, default=32)
  p.add_argument("--masked", action="store_true", help="50%% MaskDiT masking on")
  p.add_argument("--remat", default="save_self_attn", help="paper policy (also the fastest here)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--skip-xl-compile", action="store_true")
  a = p.parse_args()

  side = 2 * a.tokens_per_side
  cfg = schema.model_config("mid", latent_height=side, latent_width=side, num_frames=a.frames,
                            latent_channels=8, text_dim=512, remat=a.remat)
  model = STIV(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  args = make_inputs(cfg, a.batch, a.text_len, a.frames)
  f = grad_fn(graphdef, a.masked)
  t0 = time.perf_counter()
  jax.block_until_ready(f(state, *args))
  compile_s = time.perf_counter() - t0
  step_s = time_fn(lambda: f(state, *args), repeats=a.repeats, warmup=0)
  flops = flops_lib.train_step_flops(cfg, a.batch, a.frames, side, side, a.text_len, a.masked)
  matmul = matmul_flops_per_s()
  result = {
      "config": {"depth": cfg.depth, "hidden": cfg.hidden, "heads": cfg.heads,
                 "frames": a.frames, "tokens_per_frame": a.tokens_per_side ** 2,
                 "batch": a.batch, "masked": a.masked, "remat": a.remat},
      "step_s": step_s, "compile_s": compile_s, "flops_per_step": flops,
      "flops_per_s": flops / step_s, "matmul_flops_per_s": matmul,
      "ratio": flops / step_s / matmul,
  }
  if not a.skip_xl_compile:
    result["xl_compile_s"] = xl_compile_seconds()
  print(json.dumps(result))


if __name__ == "__main__":
  main()
