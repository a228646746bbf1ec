"""How fast does a demo-sized model learn a caption's layout from pure noise?

Four clips (one red circle on the same kind of track, the four directions) rendered and
encoded with the demo's stand-in encoders; the model is trained at t = 0 only (its input is
pure noise, or zeros with --zero-input), so the caption is all it has. Prints the x1 error of
the caption-blind mean (what a model that ignores the caption reaches), the best least-squares
linear readout of the untrained model's final features, then the training loss every 25 steps.
WORKSPACE.md "Demo quality" (fourth session) has the figures for depth 4 + 2, 2 and 1.

python experiments/demo_diagnostics/layout_fit.py [--depth N] [--decoder N] [--steps N]
    [--abs-pos none|sincos] [--zero-input]
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from stiv_jax import config_schema as schema
from stiv_jax.data import synthetic
from stiv_jax.models import blocks
from stiv_jax.models.embeddings import patchify
from stiv_jax.models.encoders.base import build_text_encoder, build_vae
from stiv_jax.train import state as state_lib

SIZE, FRAMES = 64, 8


def four_clips(vae, text):
  """Latents [4, 8, 16, 16, C] and text arrays of the four direction clips."""
  latents, captions = [], []
  for direction, (dx, dy) in synthetic.DIRECTIONS.items():
    r = 9.0
    lo, hi = 2 + r, SIZE - 2 - r
    start = lo if dx + dy > 0 else hi
    x0, y0 = (start, SIZE / 2) if dx else (SIZE / 2, start)
    scene = synthetic.SceneSpec("red", "circle", direction, r, x0, y0,
                                (hi - lo) * 0.9 / (FRAMES - 1))
    px = synthetic.render_scene(scene, size=SIZE, num_frames=FRAMES).astype(np.float32)
    latents.append(np.asarray(vae.encode(px / 127.5 - 1), np.float32))
    captions.append(scene.caption)
  tokens, mask, pooled = text.encode_text(captions)
  return jnp.asarray(np.stack(latents)), jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(pooled)


def readout_floor(model, lat, tokens, mask, pooled, micro, cfg) -> float:
  """x1 error of the best linear map from the untrained model's final features (zero input).
  Simplification: the features are read by wrapping FinalLayer.__call__ for one forward (the
  model has no feature hook); the wrapper is removed before returning."""
  seen = {}
  original = blocks.FinalLayer.__call__

  def spy(self, x, c):
    seen["h"] = x
    return original(self, x, c)

  blocks.FinalLayer.__call__ = spy
  try:
    model(jnp.zeros(lat.shape), jnp.zeros((lat.shape[0],)), tokens, mask, pooled, micro)
  finally:
    blocks.FinalLayer.__call__ = original
  h = np.asarray(seen["h"])
  h = (h - h.mean(-1, keepdims=True)) / h.std(-1, keepdims=True)
  x = np.concatenate([h.reshape(-1, h.shape[-1]), np.ones((h[..., 0].size, 1))], axis=1)
  y = np.asarray(patchify(lat, cfg.patch_t, cfg.patch_s)).reshape(x.shape[0], -1)
  w, *_ = np.linalg.lstsq(x, y, rcond=None)
  return float(((x @ w - y) ** 2).mean())


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--depth", type=int, default=1)
  p.add_argument("--decoder", type=int, default=0)
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--abs-pos", default="sincos", choices=("none", "sincos"))
  p.add_argument("--zero-input", action="store_true")
  a = p.parse_args()
  cfg, vae_cfg, text_cfg = schema.cpu_preset(
      "demo", mask_ratio=0.0, prediction="data", num_frames=FRAMES, abs_pos_embed=a.abs_pos,
      depth=a.depth, mask_decoder_depth=a.decoder)
  lat, tokens, mask, pooled = four_clips(build_vae(vae_cfg), build_text_encoder(text_cfg))
  micro = jnp.tile(jnp.asarray([[SIZE, SIZE, 0, 0, 1, FRAMES]], jnp.float32), (4, 1))
  model = state_lib.build_model(cfg, 0)
  blind = float(((lat - lat.mean(0)) ** 2).mean())
  flat = float(((lat - lat.mean((0, 1, 2, 3))) ** 2).mean())
  print(f"caption-blind mean {blind:.4f}  one value per channel {flat:.4f}  "
        f"linear readout of the untrained features {readout_floor(model, lat, tokens, mask, pooled, micro, cfg):.4f}")
  graphdef, params = nnx.split(model, nnx.Param)
  tx = optax.adam(a.lr)
  opt = tx.init(params)

  def loss_fn(params, key):
    noise = jax.random.normal(key, lat.shape)
    x = jnp.zeros_like(noise) if a.zero_input else noise
    out = nnx.merge(graphdef, params)(x, jnp.zeros((4,)), tokens, mask, pooled, micro)
    return (((x + out.velocity) - lat) ** 2).mean()   # at t = 0 the velocity is x1_hat - x

  @jax.jit
  def step(params, opt, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, key)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  key, losses, start = jax.random.PRNGKey(0), [], time.time()
  for i in range(1, a.steps + 1):
    key, sub = jax.random.split(key)
    params, opt, loss = step(params, opt, sub)
    losses.append(float(loss))
    if i % 25 == 0 or i == a.steps:
      print(f"step {i}: x1 mse {np.mean(losses[-25:]):.4f} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
  main()
