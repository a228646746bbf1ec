"""Sampler variants on a trained demo checkpoint: t2v scores and the shape confusion.

python experiments/demo_diagnostics/sampvar.py WORKDIR [--prompts tune|heldout] [--seeds 0,1,2]
    '{}' '{"guidance": 5.0, "solver": "sde"}' ...
Each JSON replaces fields of the run's `sampling` section; every prompt is sampled once per
seed (choose on 'tune', report on 'heldout'). Grids go to /tmp/sv_<variant index>.png.
"""
import argparse
import collections
import json
import time

from stiv_jax import sampling, video_io
from stiv_jax import sharding as shd
from stiv_jax.eval import synthetic
from stiv_jax.models.encoders.base import build_text_encoder, build_vae
from stiv_jax.tasks import TaskRunner
from stiv_jax.train import checkpoint as ckpt_lib

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("workdir")
ap.add_argument("variants", nargs="*", default=["{}"])
ap.add_argument("--prompts", default="heldout", choices=("tune", "heldout"))
ap.add_argument("--seeds", default="0", help="comma-separated sampling seeds")
a = ap.parse_intermixed_args()
variants = [json.loads(v) for v in a.variants]
seeds = [int(s) for s in a.seeds.split(",")]
cfg = ckpt_lib.load_config(ckpt_lib.resolve_checkpoint(a.workdir)[0])
mesh = shd.make_mesh(cfg.mesh); rules = shd.rules_from_config(cfg.mesh.rules)
r = ckpt_lib.restore_ema(a.workdir, mesh, rules)
config, model = r.config, r.model()
text, vae = build_text_encoder(config.text), build_vae(config.vae)
prompts = synthetic.load_prompts(a.prompts)
for i, v in enumerate(variants):
  base = dict(config.sampling); base.update(v)
  t0 = time.time()
  runner = TaskRunner(sampling.Sampler(model, sampling.SamplerConfig.from_config(base)), text,
                      vae, config.model, frame_stride=float(config.eval.frame_stride))
  vids, asked = [], []
  for seed in seeds:
    vids += [video_io.to_uint8(x) for x in runner.decode(runner.run("t2v", prompts, seed=seed))]
    asked += prompts
  s = synthetic.score(vids, asked)
  # (asked shape -> drawn shape) counts: which shapes the model confuses.
  confusion = collections.Counter(f"{synthetic.parse_prompt(p)['shape']}->{synthetic.detect(x).shape}"
                                  for x, p in zip(vids, asked))
  print(json.dumps({"variant": v, "n": len(asked),
                    **{k: round(float(s[k]), 3) for k in ("color", "shape", "direction", "background")},
                    "shape_confusion": dict(sorted(confusion.items())),
                    "s": round(time.time() - t0)}), flush=True)
  video_io.write_png(f"/tmp/sv_{i}.png", video_io.contact_sheet(vids[:len(prompts)]))
