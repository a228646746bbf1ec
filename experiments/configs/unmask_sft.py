"""UnmaskSFT: SFT with MaskDiT off (mask ratio 0) at a lower LR, from the SFT weights.

`unmask_sft.py:M`, `unmask_sft.py:local`. The paper's best VBench model (STIV-M-512 UnmaskSFT).
"""
from __future__ import annotations

import ml_collections

from experiments.configs import stages


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The unmasked fine-tune; the mask token and 2 decoder blocks still exist but see all tokens."""
  return stages.stage_config(
      "unmask_sft", arg, file=__file__, resolution=512, tasks={"none": 0.5, "first": 0.5},
      batch_size=256, num_steps=10_000, lr=5e-5, mask_ratio=0.0,
      data_name="curated512_f20_s3", starts_from=[("sft", ".*", "")])
