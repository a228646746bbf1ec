"""The CPU demo (`make demo`): the small STIV on the synthetic corpus, T2V + TI2V, a few minutes.

Argument (comma-separated, optional): `runlocal` (a few steps, frequent checkpoints),
`masked0` (mask ratio 0), `tiny` (the unit-test model: 'small' size, latents [4, 8, 8, 4], text
dim 16, 32x32 px with the pixel VAE factor 4). The schema of every section (and its defaults)
is stiv_jax/config_schema.py; `stiv-train --help` lists every field.
"""
from __future__ import annotations

import ml_collections

from stiv_jax import config_schema as schema


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo config: 64x64 px, 16 frames, pixel VAE factor 4 -> latents [16, 16, 16, 4]."""
  args = set(filter(None, (arg or "").split(",")))
  unknown = args - {"runlocal", "masked0", "tiny"}
  if unknown:
    raise ValueError(f"demo.py: unknown config argument(s) {sorted(unknown)}")
  c = schema.train_config()
  c.model, c.vae, c.text = schema.cpu_preset("demo")
  c.data.path = "workdir/demo_data/prep/shards"  # make demo: stiv-prep run --output=workdir/demo_data/prep
  c.data.batch_size = 8
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 20
  c.optimizer.ema_decay = 0.999
  c.optimizer.ema_warmup = True
  c.optimizer.min_dim_size_to_factor = 64
  c.train.num_steps = 300
  c.checkpoint.every_steps = 100
  c.checkpoint.keep_last = 2
  c.checkpoint.keep_every = 200
  c.metrics.every_steps = 10
  if "tiny" in args:
    c.model, c.vae, c.text = schema.cpu_preset("tiny")
    c.optimizer.min_dim_size_to_factor = 16
    c.train.fast_compile = True
  if "masked0" in args:
    c.model.mask_ratio = 0.0
  if "runlocal" in args:
    c.train.num_steps = 6
    c.checkpoint.every_steps = 2
    c.metrics.every_steps = 2
  return c
