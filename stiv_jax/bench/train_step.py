"""`stiv-bench train-step`: the whole jitted train step of a mid-size STIV vs a same-run matmul.

The timed step is what `stiv-train` runs: host batch -> sharded arrays, t/noise/conditions,
MaskDiT forward+backward, AdaFactor, EMA, non-finite guard. Reports step_s, achieved FLOP/s
(analytic model FLOPs / step time), the same-run f32 matmul FLOP/s and their ratio (goal >= 0.35);
the step-time ratio of 50% masking to none (goal <= 0.6); and the compiled step's temporary
bytes without remat and with the 'save self-attention outputs' policy.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from stiv_jax import config_schema as schema
from stiv_jax import sharding as shd
from stiv_jax.bench.common import matmul_flops_per_s
from stiv_jax.models.encoders.base import build_text_encoder
from stiv_jax.train import metrics as metrics_lib
from stiv_jax.train import optimizer as opt_lib
from stiv_jax.train import state as state_lib
from stiv_jax.train import step as step_lib


def bench_config(args, mask_ratio: float, remat: str):
  """The train config of the benchmark: the 'mid' model on [frames, size, size, 8] latents."""
  c = schema.train_config()
  c.model = schema.model_config("mid", num_frames=args.frames, latent_height=args.size,
                                latent_width=args.size, latent_channels=8,
                                text_dim=args.text_dim, mask_ratio=mask_ratio, remat=remat)
  c.vae = schema.vae_config("pixel", spatial_factor=4, latent_channels=8)
  c.text = schema.text_config("hash", dim=args.text_dim, max_length=args.text_len)
  c.data.batch_size = args.batch
  c.optimizer.warmup_steps = 0
  c.mesh.data = -1
  return c


def host_batch(c) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  m, b = c.model, c.data.batch_size
  return {"latents": rng.standard_normal((b, m.num_frames, m.latent_height, m.latent_width,
                                          m.latent_channels)).astype(np.float32),
          "text": rng.standard_normal((b, c.text.max_length, c.text.dim)).astype(np.float32),
          "text_mask": np.ones((b, c.text.max_length), bool),
          "pooled": rng.standard_normal((b, c.text.dim)).astype(np.float32),
          "micro": np.tile(np.array([256, 256, 0, 0, 3, m.num_frames], np.float32), (b, 1))}


def compile_step(c):
  """(compiled step, state, batch, null_text, mesh, rules) for config c."""
  shd.set_partitioner(c.mesh)
  mesh = shd.make_mesh(c.mesh)
  rules = shd.rules_from_config(c.mesh.rules)
  tx = opt_lib.make_optimizer(c.optimizer)
  graphdef, state, shardings = state_lib.create_train_state(
      lambda: state_lib.build_model(c.model, c.seed), tx, mesh, rules)
  batch = host_batch(c)
  null = step_lib.null_text_arrays(build_text_encoder(c.text))
  fn = step_lib.jit_train_step(c, graphdef, tx, shardings, shd.batch_shardings(batch, mesh, rules),
                               mesh)
  compiled = fn.lower(state, shd.shard_batch(batch, mesh, rules), null).compile()
  return compiled, state, batch, null, mesh, rules


def time_steps(c, steps: int) -> tuple[float, object]:
  """Median seconds per step (host batch sharding included) after one warm-up step."""
  compiled, state, batch, null, mesh, rules = compile_step(c)
  state, m = compiled(state, shd.shard_batch(batch, mesh, rules), null)
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = compiled(state, shd.shard_batch(batch, mesh, rules), null)
    jax.block_until_ready((state.step, m))
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), compiled


def temp_bytes(c) -> int:
  """Temporary bytes of the compiled step (compiled.memory_analysis())."""
  compiled = compile_step(c)[0]
  mem = compiled.memory_analysis()
  return int(getattr(mem, "temp_size_in_bytes", -1)) if mem is not None else -1


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--frames", type=int, default=8)
  p.add_argument("--size", type=int, default=32, help="latent height = width (16x16 tokens)")
  p.add_argument("--text_dim", type=int, default=256)
  p.add_argument("--text_len", type=int, default=32)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--remat", default="save_self_attn",
                 help="remat policy of the timed steps (the paper's by default)")
  args = p.parse_args(argv)

  masked = bench_config(args, 0.5, args.remat)
  step_s, _ = time_steps(masked, args.steps)
  unmasked_s, _ = time_steps(bench_config(args, 0.0, args.remat), args.steps)
  no_remat = temp_bytes(bench_config(args, 0.5, "none"))
  remat = temp_bytes(bench_config(args, 0.5, "save_self_attn"))
  matmul = matmul_flops_per_s()
  flops = metrics_lib.step_flops(masked.model, args.batch, args.frames, args.size, args.size,
                                 args.text_len)
  result = {
      "step_s": step_s, "step_s_unmasked": unmasked_s, "step_flops": flops,
      "flops_per_s": flops / step_s, "matmul_flops_per_s": matmul,
      "ratio": flops / step_s / matmul, "mask_time_ratio": step_s / unmasked_s,
      "temp_bytes_no_remat": no_remat, "temp_bytes_remat": remat,
      "config": {"model": "mid", "batch": args.batch, "latent": [args.frames, args.size,
                                                               args.size, 8],
                 "remat": args.remat, "devices": jax.device_count(), "platform": jax.devices()[0].platform},
  }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
