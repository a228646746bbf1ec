"""Which caption words does a trained demo model listen to, and does its prediction from pure
noise move the prompt's way?

For each attribute (color, shape, direction) the rms change of the model output when only that
word of the prompt changes, at t = 0 and 0.3, with the token sequence or the pooled vector
swapped alone; then the per-frame centroid of the x1 prediction at t = 0 (the model's
prior for the clip) for the four directions: the data's clips cross 60-100% of the frame.

python experiments/demo_diagnostics/word_probe.py WORKDIR
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from stiv_jax import sharding as shd
from stiv_jax.models.encoders.base import build_text_encoder, build_vae
from stiv_jax.tasks import TaskRunner
from stiv_jax.train import checkpoint as ckpt_lib

PAIRS = {"color": ("a red circle moving right", "a blue circle moving right"),
         "shape": ("a red circle moving right", "a red square moving right"),
         "direction": ("a red circle moving right", "a red circle moving left")}
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}


def main(path: str, seeds: int = 4) -> None:
  cfg = ckpt_lib.load_config(ckpt_lib.resolve_checkpoint(path)[0])
  mesh = shd.make_mesh(cfg.mesh)
  model = ckpt_lib.restore_ema(path, mesh, shd.rules_from_config(cfg.mesh.rules)).model()
  runner = TaskRunner(None, build_text_encoder(cfg.text), build_vae(cfg.vae), cfg.model,
                      frame_stride=float(cfg.eval.frame_stride))
  m = cfg.model
  shape = (seeds, m.num_frames, m.latent_height, m.latent_width, m.latent_channels)
  eps = jax.random.normal(jax.random.PRNGKey(0), shape)
  micro = jnp.asarray(runner.micro(seeds, m.num_frames))

  def run(tokens, pooled, t):
    return model(eps, jnp.full((seeds,), t), jnp.asarray(tokens["text"]),
                 jnp.asarray(tokens["text_mask"]), jnp.asarray(pooled["pooled"]), micro).velocity

  for attr, (a, b) in PAIRS.items():
    ca, _ = runner.text([a] * seeds)
    cb, _ = runner.text([b] * seeds)
    for t in (0.0, 0.3):
      base = run(ca, ca, t)
      rms = lambda x: round(float(jnp.sqrt(jnp.mean((x - base) ** 2))), 4)
      print(json.dumps({"word": attr, "t": t, "output_rms": rms(jnp.zeros_like(base)),
                        "change_tokens_only": rms(run(cb, ca, t)),
                        "change_pooled_only": rms(run(ca, cb, t)),
                        "change_both": rms(run(cb, cb, t))}), flush=True)

  for d, (dx, dy) in DIRECTIONS.items():
    c, _ = runner.text([f"a red circle moving {d}"] * seeds)
    x1 = eps + run(c, c, 0.0)           # the x1 prediction at t = 0: x_0 + v
    w = np.clip((runner.decode(np.asarray(x1)) + 1) / 2, 0, 1).sum(-1).mean(0)  # [T, H, W]
    ys, xs = np.mgrid[0:w.shape[1], 0:w.shape[2]]
    cx = (w * xs).sum((1, 2)) / w.sum((1, 2))
    cy = (w * ys).sum((1, 2)) / w.sum((1, 2))
    along = (cx[-1] - cx[0]) * dx + (cy[-1] - cy[0]) * dy
    print(json.dumps({"direction": d, "t0_centroid_x": np.round(cx, 1).tolist(),
                      "t0_centroid_y": np.round(cy, 1).tolist(),
                      "t0_travel_along_direction_px": round(float(along), 2)}), flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
