"""MaskDiT tube masking: keep a fixed number of spatial positions per sample, same in every frame.

Pure functions: sample the kept positions, gather kept tokens, restore the full grid with a mask
token, and turn the keep mask into a per-latent-element loss weight.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_keep_indices(key: jax.Array, batch: int, num_spatial: int, num_keep: int) -> jax.Array:
  """Random kept spatial positions per sample, sorted (row-major order): [B, num_keep] int32."""
  noise = jax.random.uniform(key, (batch, num_spatial))
  idx = jnp.argsort(noise, axis=-1)[:, :num_keep]
  return jnp.sort(idx, axis=-1).astype(jnp.int32)


def gather_tokens(x: jax.Array, keep_idx: jax.Array) -> jax.Array:
  """x [B, T, S, D], keep_idx [B, K] -> [B, T, K, D] (the same positions in every frame)."""
  return jnp.take_along_axis(x, keep_idx[:, None, :, None], axis=2)


def restore_tokens(kept: jax.Array, keep_idx: jax.Array, num_spatial: int,
                   mask_token: jax.Array) -> jax.Array:
  """kept [B, T, K, D] -> [B, T, S, D] with the mask token in every dropped position."""
  b, t, _, d = kept.shape
  full = jnp.broadcast_to(mask_token.astype(kept.dtype), (b, t, num_spatial, d))
  bi = jnp.arange(b)[:, None]
  return full.at[bi, :, keep_idx].set(jnp.moveaxis(kept, 2, 1))


def keep_mask_from_indices(keep_idx: jax.Array, num_spatial: int) -> jax.Array:
  """[B, K] indices -> [B, S] bool keep mask."""
  b = keep_idx.shape[0]
  return jnp.zeros((b, num_spatial), bool).at[jnp.arange(b)[:, None], keep_idx].set(True)


def grid_positions(idx: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
  """Row-major spatial index -> (row, col)."""
  return idx // width, idx % width


def keep_to_latent_mask(keep: jax.Array, cfg, num_frames: int, height: int,
                        width: int) -> jax.Array:
  """[B, Hp*Wp] spatial keep mask -> [B, T, H, W] float weights (1 = kept, counts in the loss)."""
  ps = cfg.patch_s
  b = keep.shape[0]
  m = keep.reshape(b, height // ps, width // ps).astype(jnp.float32)
  m = jnp.repeat(jnp.repeat(m, ps, axis=1), ps, axis=2)
  return jnp.broadcast_to(m[:, None], (b, num_frames, height, width))
