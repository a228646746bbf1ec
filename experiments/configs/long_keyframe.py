"""Long video, keyframe mode: T2V + TI2V on frames sampled at stride 20 (one keyframe per gap).

`long_keyframe.py:XL`, `long_keyframe.py:local`. The interpolation model (long_interp.py)
then fills each gap between consecutive keyframes.
"""
from __future__ import annotations

import ml_collections

from experiments.configs import stages


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The keyframe stage: same tasks as STIV, data prepared at frame stride 20."""
  return stages.stage_config(
      "long_keyframe", arg, file=__file__, frame_stride=20, tasks={"none": 0.5, "first": 0.5},
      batch_size=1024, num_steps=100_000, data_name="video256_f20_s20",
      starts_from=[("stiv256", ".*", "")])
