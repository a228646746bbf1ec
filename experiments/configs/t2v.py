"""T2V-256: text-to-video from the T2I-256 EMA weights (temporal attention starts fresh).

`t2v.py:XL`, `t2v.py:XL,local`. 20 frames at stride 3, batch 1024, 400k steps, 50% MaskDiT.
"""
from __future__ import annotations

import ml_collections

from experiments.configs import stages


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The T2V-256 stage; the 2D patch kernel is inflated along time (model.patch_inflation)."""
  return stages.stage_config(
      "t2v256", arg, file=__file__, tasks={"none": 1.0}, batch_size=1024, num_steps=400_000,
      data_name="video256_f20_s3", starts_from=[("t2i256", ".*", "")],
      allow_missing=stages.TEMPORAL_REGEX, image_dropout=0.0)
