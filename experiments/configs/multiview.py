"""Multi-view: frame 0 is the input view, the other frames are novel views; empty text always.

`multiview.py:XL`, `multiview.py:local`. Data: orbit renders of objects, one view per frame.
"""
from __future__ import annotations

import ml_collections

from experiments.configs import stages


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The multi-view stage (task 'multiview' forces the empty prompt; no image dropout)."""
  return stages.stage_config(
      "multiview", arg, file=__file__, frame_stride=1, tasks={"multiview": 1.0},
      batch_size=512, num_steps=50_000, lr=1e-4, image_dropout=0.0,
      data_name="multiview256_v20", starts_from=[("stiv256", ".*", "")])
