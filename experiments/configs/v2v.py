"""V2V (video prediction): the first 4 latent frames are given, from the STIV-256 weights.

`v2v.py:XL`, `v2v.py:local`. Batch 1024, 100k steps (choice).
"""
from __future__ import annotations

import ml_collections

from experiments.configs import stages


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The V2V stage (conditioning.k = 4 frames; 1 of 4 in the tiny local run)."""
  c = stages.stage_config(
      "v2v", arg, file=__file__, tasks={"first_k": 1.0}, batch_size=1024, num_steps=100_000,
      data_name="video256_f20_s3", starts_from=[("stiv256", ".*", "")])
  c.conditioning.k = min(4, c.model.num_frames - 1)
  return c
