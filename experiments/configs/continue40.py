"""40-frame continuation at 512 px from STIV-512, temporal RoPE interpolated (20 -> 40 frames).

`continue40.py:XL`, `continue40.py:local`. Batch 256 (one clip per v5e chip), 100k steps (choices; the paper gives none).
"""
from __future__ import annotations

import ml_collections

from experiments.configs import stages


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The 40-frame stage; init.rope_from_config sets rope_scale_t = 20 / 40 from STIV-512."""
  c = stages.stage_config(
      "continue40", arg, file=__file__, resolution=512, frames=40,
      tasks={"none": 0.5, "first": 0.5}, batch_size=256, num_steps=100_000,
      data_name="video512_f40_s3", starts_from=[("stiv512", ".*", "")], rope_from="stiv512")
  # 40 frames at 512 px, XL on v5e-256, one clip per chip, the paper's save_self_attn remat:
  # 9.95 GiB per chip from the TPU compiler (9.09 GiB activations; the fake-CPU plan had said
  # 17.7, hence full remat before). With --config.mesh.context=4 (batch 64): 3.35 GiB
  # (WORKSPACE.md, "Context parallelism").
  return c
