"""SFT: supervised fine-tuning of STIV-512 on a small curated, high-quality set (still masked).

`sft.py:M`, `sft.py:local`. LR 1e-4, 20k steps, batch 256 (choices; the paper gives none).
"""
from __future__ import annotations

import ml_collections

from experiments.configs import stages


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The SFT stage."""
  return stages.stage_config(
      "sft", arg, file=__file__, resolution=512, tasks={"none": 0.5, "first": 0.5},
      batch_size=256, num_steps=20_000, lr=1e-4, data_name="curated512_f20_s3",
      starts_from=[("stiv512", ".*", "")])
