"""The micro-conditions (STIV_SPEC.md section 1): names and order of the model's `micro` columns.

One home for the shard schema (stored per record), the model (one embedder each) and the
sampler (defaults from what training saw, stiv_jax/data/contract.py).
"""
from __future__ import annotations

MICRO_CONDITIONS = ("orig_height", "orig_width", "crop_top", "crop_left", "stride", "num_frames")
