"""STIV-256: joint T2V + TI2V (first frame replaced) from the T2V-256 weights.

`stiv256.py:XL`, `stiv256.py:local`. Batch 1024, 400k steps, 50% MaskDiT; text dropout 10%,
image-condition dropout 8% (JIT-CFG).
"""
from __future__ import annotations

import ml_collections

from experiments.configs import stages


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The STIV-256 stage."""
  return stages.stage_config(
      "stiv256", arg, file=__file__, tasks={"none": 0.5, "first": 0.5}, batch_size=1024,
      num_steps=400_000, data_name="video256_f20_s3", starts_from=[("t2v256", ".*", "")])
