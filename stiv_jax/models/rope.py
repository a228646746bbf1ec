"""Rotary position embeddings (1D temporal, 2D spatial), pure functions, per-token positions.

Every token carries its own (t, row, col) position, so MaskDiT's dropped tokens leave the kept
ones with their true grid positions. Interpolation multiplies positions by old_len / new_len.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def interpolation_scale(old_len: int, new_len: int) -> float:
  """Factor that maps positions of a new grid of `new_len` onto the old range [0, old_len)."""
  if old_len < 1 or new_len < 1:
    raise ValueError(f"rope interpolation: lengths must be >= 1, got old={old_len} new={new_len}")
  return old_len / new_len


def rope_angles(positions: jax.Array, dim: int, theta: float) -> jax.Array:
  """positions [...] -> angles [..., dim // 2] with frequencies theta^(-2i/dim)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  return positions.astype(jnp.float32)[..., None] * inv_freq


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotates x [..., seq, heads, dim] by positions [..., seq] (rotate-half convention)."""
  dim = x.shape[-1]
  angles = rope_angles(positions, dim, theta)[..., None, :]  # [..., seq, 1, dim/2]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x32 = x.astype(jnp.float32)
  x1, x2 = x32[..., : dim // 2], x32[..., dim // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def apply_rope_2d(x: jax.Array, rows: jax.Array, cols: jax.Array, theta: float) -> jax.Array:
  """2D RoPE: the first half of each head's dims rotates with the row, the second with the col."""
  half = x.shape[-1] // 2
  return jnp.concatenate([apply_rope(x[..., :half], rows, theta),
                          apply_rope(x[..., half:], cols, theta)], axis=-1)
