"""TUP: temporal upsampling (every other latent frame given) at 512 px, 40 frames, from SFT.

`tup.py:M`, `tup.py:local`. Doubles the frame rate of a 20-frame sample; unmasked like the
model it starts from (UnmaskSFT).
"""
from __future__ import annotations

import ml_collections

from experiments.configs import stages


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The TUP stage; rope_scale_t from UnmaskSFT's 20 frames (20 / 40)."""
  return stages.stage_config(
      "tup", arg, file=__file__, resolution=512, frames=40, frame_stride=1,
      tasks={"every_other": 1.0}, batch_size=256, num_steps=50_000, lr=1e-4, mask_ratio=0.0,
      data_name="curated512_f40_s1", starts_from=[("unmask_sft", ".*", "")],
      rope_from="unmask_sft")
