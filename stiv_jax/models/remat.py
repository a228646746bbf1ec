"""Gradient-checkpointing policies by name (config field `model.remat`)."""
from __future__ import annotations

import enum
from typing import Callable

import jax

from stiv_jax.models.blocks import SELF_ATTN_NAME


class RematPolicy(str, enum.Enum):
  NONE = "none"                              # keep every activation
  FULL = "full"                              # recompute the whole block in the backward pass
  SAVE_SELF_ATTN = "save_self_attn"          # keep only self-attention outputs (the paper's)
  SAVE_DOTS_NO_BATCH = "save_dots_no_batch"  # keep matmul outputs without batch dims


def apply_remat(fn: Callable, policy: str) -> Callable:
  """Wraps a block function with jax.checkpoint under the named policy."""
  policy = RematPolicy(policy)
  if policy is RematPolicy.NONE:
    return fn
  if policy is RematPolicy.FULL:
    return jax.checkpoint(fn)
  if policy is RematPolicy.SAVE_SELF_ATTN:
    return jax.checkpoint(fn, policy=jax.checkpoint_policies.save_only_these_names(SELF_ATTN_NAME))
  return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
