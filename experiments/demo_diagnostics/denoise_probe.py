"""At which noise level does a trained demo model draw a clip's shape, and does the shape word
steer it?

Rendered clips (held-out corpus seed) are noised to x_t = t x1 + (1 - t) eps; the model's clean
prediction x1_hat = x_t + (1 - t) v is decoded and its shape read by the synthetic score, with
the clip's own caption and with the shape word swapped (does the word win over the pixels?).

python experiments/demo_diagnostics/denoise_probe.py WORKDIR [--clips 48]
"""
import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from stiv_jax import sharding as shd
from stiv_jax import video_io
from stiv_jax.data import synthetic as corpus
from stiv_jax.eval import synthetic
from stiv_jax.models.encoders.base import build_text_encoder, build_vae
from stiv_jax.tasks import TaskRunner
from stiv_jax.train import checkpoint as ckpt_lib

TIMES = (0.0, 0.2, 0.4, 0.6, 0.8)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("workdir")
  ap.add_argument("--clips", type=int, default=48)
  a = ap.parse_args()
  cfg = ckpt_lib.load_config(ckpt_lib.resolve_checkpoint(a.workdir)[0])
  mesh = shd.make_mesh(cfg.mesh)
  model = ckpt_lib.restore_ema(a.workdir, mesh, shd.rules_from_config(cfg.mesh.rules)).model()
  vae = build_vae(cfg.vae)
  runner = TaskRunner(None, build_text_encoder(cfg.text), vae, cfg.model,
                      frame_stride=float(cfg.eval.frame_stride))
  m = cfg.model
  size = m.latent_height * vae.spatial_factor
  specs = [corpus.shard_clip_spec(99, i, size=size, frames=(m.num_frames,), fade_fraction=0.0)
           for i in range(a.clips)]
  scenes = [s.scenes[0] for s in specs]
  x1 = np.stack([vae.encode(corpus.render_video(s, size=size).astype(np.float32) / 127.5 - 1)
                 for s in specs])
  other = {"circle": "square", "square": "triangle", "triangle": "circle"}
  swapped = [corpus.caption_for(s.color, other[s.shape], s.direction) for s in scenes]
  captions = {"own": [s.caption for s in scenes], "swapped": swapped}
  eps = jax.random.normal(jax.random.PRNGKey(0), x1.shape)
  micro = jnp.asarray(runner.micro(len(specs), m.num_frames))
  for t in TIMES:
    xt = t * x1 + (1 - t) * eps
    row = {"t": t}
    for name, caps in captions.items():
      cond, _ = runner.text(caps)
      v = model(xt, jnp.full((len(specs),), t), jnp.asarray(cond["text"]),
                jnp.asarray(cond["text_mask"]), jnp.asarray(cond["pooled"]), micro).velocity
      drawn = [synthetic.detect(video_io.to_uint8(x)).shape
               for x in runner.decode(np.asarray(xt + (1 - t) * v))]
      row[f"{name}_caption: reads the clip's shape"] = round(
          float(np.mean([d == s.shape for d, s in zip(drawn, scenes)])), 3)
      if name == "swapped":
        row["swapped_caption: reads the caption's shape"] = round(
            float(np.mean([d == other[s.shape] for d, s in zip(drawn, scenes)])), 3)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
