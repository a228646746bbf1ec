"""Long video, interpolation mode: first and last latent frames given, the model fills the gap.

`long_interp.py:XL`, `long_interp.py:local`. Data at the base stride 3, so one clip spans the
gap between two stride-20 keyframes (20 frames x 3 ~ 60 source frames).
"""
from __future__ import annotations

import ml_collections

from experiments.configs import stages


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The interpolation stage."""
  return stages.stage_config(
      "long_interp", arg, file=__file__, tasks={"first_last": 1.0}, batch_size=1024,
      num_steps=100_000, data_name="video256_f20_s3", starts_from=[("stiv256", ".*", "")])
