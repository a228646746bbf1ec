"""Sampler variants on a trained demo checkpoint: t2v scores on the held-out prompts.

python experiments/demo_diagnostics/sampvar.py WORKDIR '{}' '{"schedule": "shifted"}' ...
(each JSON replaces fields of the run's `sampling` section; grids go to /tmp/sv_*.png)
"""
import sys, json, time
import numpy as np
from stiv_jax import sampling, video_io
from stiv_jax.train import checkpoint as ckpt_lib
from stiv_jax import sharding as shd
from stiv_jax.eval import synthetic
from stiv_jax.models.encoders.base import build_text_encoder, build_vae
from stiv_jax.tasks import TaskRunner
from stiv_jax.data import contract as contract_lib
path = sys.argv[1]
variants = [json.loads(v) for v in sys.argv[2:]]
cfg = ckpt_lib.load_config(ckpt_lib.resolve_checkpoint(path)[0])
mesh = shd.make_mesh(cfg.mesh); rules = shd.rules_from_config(cfg.mesh.rules)
r = ckpt_lib.restore_ema(path, mesh, rules)
config, model = r.config, r.model()
text, vae = build_text_encoder(config.text), build_vae(config.vae)
prompts = synthetic.load_prompts("heldout")
for v in variants:
  base = dict(config.sampling); base.update(v)
  t0 = time.time()
  scfg = sampling.SamplerConfig.from_config(base)
  runner = TaskRunner(sampling.Sampler(model, scfg), text, vae, config.model,
                      frame_stride=float(config.eval.frame_stride))
  vids = [video_io.to_uint8(x) for x in runner.decode(runner.run("t2v", prompts, seed=0))]
  s = synthetic.score(vids, prompts)
  print(json.dumps({"variant": v, **{k: round(float(s[k]), 3) for k in ("color", "shape", "direction", "background")}, "s": round(time.time() - t0)}), flush=True)
  video_io.write_png(f"/tmp/sv_{len(json.dumps(v))}_{abs(hash(json.dumps(v)))%1000}.png", video_io.contact_sheet(vids))
