"""STIV-512: spatial weights from T2I-512, temporal weights from STIV/T2V-256, T2V + TI2V at 512 px.

`stiv512.py:XL`, `stiv512.py:local`. The spatial RoPE needs no interpolation (T2I-512 was
trained at 512 px) and the temporal one none either (same 20 frames); batch 256 (choice).
"""
from __future__ import annotations

import ml_collections

from experiments.configs import stages


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The STIV-512 stage (two init sources split by the temporal-attention regex)."""
  return stages.stage_config(
      "stiv512", arg, file=__file__, resolution=512, tasks={"none": 0.5, "first": 0.5},
      batch_size=256, num_steps=200_000, data_name="video512_f20_s3",
      starts_from=[("t2i512", ".*", stages.TEMPORAL_REGEX),
                   ("stiv256", stages.TEMPORAL_REGEX, "")])
