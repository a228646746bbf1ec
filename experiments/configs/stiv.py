"""The STIV model at a paper size, for `stiv-params` and AOT checks: `stiv.py:M`.

Argument: a size name (XL, XXL, M, mid, demo, small), optionally `,image` for the T2I model.
"""
from __future__ import annotations

import ml_collections

from stiv_jax import config_schema as schema


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = (arg or "XL").split(",")
  size = parts[0]
  config = ml_collections.ConfigDict()
  config.model = schema.model_config(size)
  if "image" in parts[1:]:
    config.model.num_frames = 1
    config.model.patch_t = 1
    config.model.temporal_attention = False
  return config
