"""T2I-256 (or T2I-512 with `512`): the image model every video stage starts from, from scratch.

`t2i.py:XL`, `t2i.py:M,512`, `t2i.py:local`. Batch 4096, 400k steps, 50% MaskDiT (paper).
"""
from __future__ import annotations

import ml_collections

from experiments.configs import stages


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The T2I stage; `512` selects 512 px (the source of STIV-512's spatial weights)."""
  res = 512 if stages.has_flag(__file__, arg, "512", ("512",)) else 256
  return stages.stage_config(
      f"t2i{res}", arg, file=__file__, allowed_flags=("512",), image=True, resolution=res,
      frames=1, frame_stride=1, tasks={"none": 1.0}, batch_size=4096, num_steps=400_000,
      data_name=f"images{res}", image_dropout=0.0)
