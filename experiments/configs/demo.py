"""The CPU demo (`make demo`): the small STIV on the synthetic corpus, T2V + TI2V, minutes.

The recipe is stiv_jax.config_schema.demo_train_config (shared with `stiv-bench demo-quality`);
its argument (comma-separated, optional): `runlocal` (a few steps, frequent checkpoints),
`masked0` (mask ratio 0; the recipe is unmasked), `tiny` (the unit-test model: 'small' size,
latents [4, 8, 8, 4], text dim 16, 32x32 px with the pixel VAE factor 4). The schema of every
section (and its defaults) is stiv_jax/config_schema.py; `stiv-train --help` lists every field.
"""
from __future__ import annotations

import ml_collections

from stiv_jax import config_schema as schema


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo config: 64x64 px, 8 latent frames (stride 6), pixel VAE factor 4 -> latents
  [8, 16, 16, 4]."""
  try:
    return schema.demo_train_config(arg)
  except ValueError as e:
    raise ValueError(f"demo.py: {e}") from None
