"""RoPE: relative (shift-invariant logits), 2D split, and position interpolation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stiv_jax.models import rope


def _logits(q, k):
  return jnp.einsum("bqhd,bkhd->bhqk", q, k)


def test_1d_rope_is_relative():
  kq, kk = jax.random.split(jax.random.key(0))
  q = jax.random.normal(kq, (1, 6, 2, 16))
  k = jax.random.normal(kk, (1, 6, 2, 16))
  pos = jnp.arange(6.0)[None]
  base = _logits(rope.apply_rope(q, pos, 1e4), rope.apply_rope(k, pos, 1e4))
  shifted = _logits(rope.apply_rope(q, pos + 7.5, 1e4), rope.apply_rope(k, pos + 7.5, 1e4))
  np.testing.assert_allclose(base, shifted, atol=1e-4)
  # And positions matter at all: without rotation the logits differ.
  assert not np.allclose(base, _logits(q, k), atol=1e-3)


def test_2d_rope_is_relative_in_rows_and_cols():
  kq, kk = jax.random.split(jax.random.key(1))
  q = jax.random.normal(kq, (1, 9, 2, 16))
  k = jax.random.normal(kk, (1, 9, 2, 16))
  rows = (jnp.arange(9) // 3).astype(jnp.float32)[None]
  cols = (jnp.arange(9) % 3).astype(jnp.float32)[None]
  base = _logits(rope.apply_rope_2d(q, rows, cols, 1e4), rope.apply_rope_2d(k, rows, cols, 1e4))
  moved = _logits(rope.apply_rope_2d(q, rows + 3, cols - 2, 1e4),
                  rope.apply_rope_2d(k, rows + 3, cols - 2, 1e4))
  np.testing.assert_allclose(base, moved, atol=1e-4)
  # Swapping rows and cols changes the logits: the two halves see different axes.
  swapped = _logits(rope.apply_rope_2d(q, cols, rows, 1e4), rope.apply_rope_2d(k, cols, rows, 1e4))
  assert not np.allclose(base, swapped, atol=1e-3)


def test_rope_preserves_norm():
  x = jax.random.normal(jax.random.key(2), (2, 5, 3, 8))
  y = rope.apply_rope(x, jnp.arange(5.0)[None] * 3.0, 1e4)
  np.testing.assert_allclose(jnp.linalg.norm(x, axis=-1), jnp.linalg.norm(y, axis=-1), rtol=1e-5)


def test_interpolation_maps_new_grid_onto_old_range():
  old, new = 16, 32  # e.g. 256px -> 512px latent tokens per side
  scale = rope.interpolation_scale(old, new)
  assert scale == 0.5
  positions = np.arange(new) * scale
  assert positions.min() == 0 and positions.max() < old
  # Neighbouring new positions are closer than the old spacing; the range is the same.
  np.testing.assert_allclose(np.diff(positions), old / new)
  with pytest.raises(ValueError, match="lengths"):
    rope.interpolation_scale(0, 4)
