"""Rotary position embeddings (1D temporal, 2D spatial), pure functions, per-token positions.

Every token carries its own (t, row, col) position, so MaskDiT's dropped tokens leave the kept
ones with their true grid positions. Interpolation multiplies positions by old_len / new_len.
The cos/sin tables are computed once per forward (`rope_table`) and shared by every block.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class RopeTable(NamedTuple):
  """cos/sin of the rotation angles, [..., seq, dim // 2] each."""
  cos: jax.Array
  sin: jax.Array


def interpolation_scale(old_len: int, new_len: int) -> float:
  """Factor that maps positions of a new grid of `new_len` onto the old range [0, old_len)."""
  if old_len < 1 or new_len < 1:
    raise ValueError(f"rope interpolation: lengths must be >= 1, got old={old_len} new={new_len}")
  return old_len / new_len


def rope_table(positions: jax.Array, dim: int, theta: float) -> RopeTable:
  """positions [...] -> cos/sin [..., dim // 2] at frequencies theta^(-2i/dim)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return RopeTable(jnp.cos(angles), jnp.sin(angles))


def rotate(x: jax.Array, table: RopeTable) -> jax.Array:
  """Rotates x [..., dim] by a table broadcastable to [..., dim/2] (rotate-half convention)."""
  dim = x.shape[-1]
  cos, sin = table.cos, table.sin
  x32 = x.astype(jnp.float32)
  x1, x2 = x32[..., : dim // 2], x32[..., dim // 2:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def rotate_2d(x: jax.Array, rows: RopeTable, cols: RopeTable) -> jax.Array:
  """2D RoPE: the first half of each head's dims rotates with the row, the second with the col."""
  half = x.shape[-1] // 2
  return jnp.concatenate([rotate(x[..., :half], rows), rotate(x[..., half:], cols)], axis=-1)


def per_head(table: RopeTable) -> RopeTable:
  """[..., seq, d] tables -> [..., seq, 1, d], broadcasting over the heads axis."""
  return RopeTable(table.cos[..., None, :], table.sin[..., None, :])


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """1D RoPE of x [..., seq, heads, dim] at positions [..., seq]."""
  return rotate(x, per_head(rope_table(positions, x.shape[-1], theta)))


def apply_rope_2d(x: jax.Array, rows: jax.Array, cols: jax.Array, theta: float) -> jax.Array:
  """2D RoPE of x [..., seq, heads, dim] at row/col positions [..., seq]."""
  half = x.shape[-1] // 2
  return rotate_2d(x, per_head(rope_table(rows, half, theta)),
                   per_head(rope_table(cols, half, theta)))
