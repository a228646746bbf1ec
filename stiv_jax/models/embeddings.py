"""Patch embedding ("cubify"), its 2D -> 3D inflation, and the shared condition vector."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stiv_jax.micro import MICRO_CONDITIONS
from stiv_jax.models import layers



def sinusoidal_embedding(x: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """x [B] -> [B, dim]: cos/sin features at geometrically spaced frequencies (DiT style)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = x.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def sincos_positions(tp: int, hp: int, wp: int, dim: int, scale_t: float = 1.0,
                     scale_s: float = 1.0) -> jax.Array:
  """[Tp, Hp*Wp, dim] fixed sin-cos embedding of each token's absolute (frame, row, column):
  a quarter of the features for the frame, the rest split between row and column (DiT's
  2D table plus time). Positions are scaled like RoPE's, so interpolation stays consistent."""
  dt = (dim // 4) // 2 * 2
  ds = (dim - dt) // 2 // 2 * 2
  dims = (dt, ds, dim - dt - ds)
  if min(dims) < 2 or dims[2] % 2:
    raise ValueError(f"sincos_positions: hidden={dim} cannot split into even frame/row/column "
                     f"parts {dims}")
  t = jnp.arange(tp, dtype=jnp.float32) * scale_t
  r = jnp.arange(hp, dtype=jnp.float32) * scale_s
  c = jnp.arange(wp, dtype=jnp.float32) * scale_s
  et = sinusoidal_embedding(t, dims[0], 100.0)                     # [Tp, dt]
  er = sinusoidal_embedding(r, dims[1], 100.0)                     # [Hp, ds]
  ec = sinusoidal_embedding(c, dims[2], 100.0)                     # [Wp, dc]
  spatial = jnp.concatenate([jnp.repeat(er, wp, axis=0), jnp.tile(ec, (hp, 1))], axis=-1)
  return jnp.concatenate([jnp.broadcast_to(et[:, None], (tp, hp * wp, dims[0])),
                          jnp.broadcast_to(spatial[None], (tp, hp * wp, dims[1] + dims[2]))],
                         axis=-1)


def patchify(x: jax.Array, pt: int, ps: int) -> jax.Array:
  """[B, T, H, W, C] -> [B, T/pt, (H/ps)*(W/ps), pt*ps*ps*C] (row-major spatial tokens)."""
  b, t, h, w, c = x.shape
  x = x.reshape(b, t // pt, pt, h // ps, ps, w // ps, ps, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, t // pt, (h // ps) * (w // ps), pt * ps * ps * c)


def unpatchify(x: jax.Array, pt: int, ps: int, hp: int, wp: int, c: int) -> jax.Array:
  """Inverse of patchify: [B, Tp, Hp*Wp, pt*ps*ps*C] -> [B, Tp*pt, Hp*ps, Wp*ps, C]."""
  b, tp = x.shape[:2]
  x = x.reshape(b, tp, hp, wp, pt, ps, ps, c)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, tp * pt, hp * ps, wp * ps, c)


def inflate_patch_kernel(kernel_2d: np.ndarray | jax.Array, patch_t: int,
                         mode: str = "mean") -> jax.Array:
  """Image patch kernel [1, ps, ps, C, D] (or [ps, ps, C, D]) -> video kernel [pt, ps, ps, C, D].

  'mean': copied to every frame and divided by pt, so a static video embeds like the image;
  'center': the centre frame holds the kernel, the others are zero.
  """
  k = jnp.asarray(kernel_2d)
  if k.ndim == 5:
    if k.shape[0] != 1:
      raise ValueError(f"inflate_patch_kernel: expected a 2D kernel (temporal size 1), got {k.shape}")
    k = k[0]
  if k.ndim != 4:
    raise ValueError(f"inflate_patch_kernel: expected [ps, ps, C, D], got shape {k.shape}")
  if mode == "mean":
    return jnp.broadcast_to(k[None] / patch_t, (patch_t,) + k.shape)
  if mode == "center":
    return jnp.zeros((patch_t,) + k.shape, k.dtype).at[patch_t // 2].set(k)
  raise ValueError(f"inflate_patch_kernel: unknown mode {mode!r}; expected 'mean' or 'center'")


class PatchEmbed(nnx.Module):
  """3D patch embedding: a [pt, ps, ps, C, D] kernel applied to non-overlapping cubes."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32):
    pt, ps, c, d = cfg.patch_t, cfg.patch_s, cfg.latent_channels, cfg.hidden
    self.pt, self.ps, self.dtype = pt, ps, dtype
    init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                in_axis=(0, 1, 2, 3), out_axis=4)
    self.kernel = layers.param(rngs, init, (pt, ps, ps, c, d), (None, None, None, None, "embed"))
    self.bias = layers.param(rngs, nnx.initializers.zeros, (d,), ("embed",))

  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, T, H, W, C] -> tokens [B, T/pt, S, D]."""
    cubes = patchify(x, self.pt, self.ps)
    w = self.kernel[...].reshape(-1, self.kernel.shape[-1])
    return (cubes.astype(self.dtype) @ w.astype(self.dtype)) + self.bias[...].astype(self.dtype)


class MLPEmbedder(nnx.Module):
  """Sinusoidal features -> Linear -> SiLU -> Linear (DiT's timestep embedder)."""

  def __init__(self, freq_dim: int, hidden: int, *, rngs: nnx.Rngs, max_period: float = 10000.0):
    init = nnx.initializers.normal(0.02)
    self.fc1 = layers.Dense(freq_dim, hidden, ("cond", "embed"), rngs=rngs, kernel_init=init)
    self.fc2 = layers.Dense(hidden, hidden, ("mlp", "embed"), rngs=rngs, kernel_init=init)
    self.freq_dim, self.max_period = freq_dim, max_period

  def __call__(self, x: jax.Array) -> jax.Array:
    h = sinusoidal_embedding(x, self.freq_dim, self.max_period)
    return self.fc2(jax.nn.silu(self.fc1(h)))


class ConditionEmbedder(nnx.Module):
  """Condition vector c = LN(time) + sum_i LN(micro_i) + LN(proj(pooled text)); LNs param-free."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.eps = cfg.norm_eps
    self.time = MLPEmbedder(cfg.freq_dim, cfg.hidden, rngs=rngs)
    self.micro = (nnx.List([MLPEmbedder(cfg.freq_dim, cfg.hidden, rngs=rngs)
                            for _ in MICRO_CONDITIONS]) if cfg.micro_conditions else None)
    self.text = layers.Dense(cfg.text_dim, cfg.hidden, ("text_embed", "embed"), rngs=rngs,
                             kernel_init=nnx.initializers.normal(0.02))

  def __call__(self, t: jax.Array, micro: jax.Array, pooled: jax.Array) -> jax.Array:
    """t [B] in [0, 1], micro [B, 6], pooled [B, text_dim] -> c [B, hidden] (float32)."""
    c = layers.layer_norm(self.time(t * 1000.0), self.eps)
    if self.micro is not None:
      if micro.shape[-1] != len(MICRO_CONDITIONS):
        raise ValueError(f"micro: expected [B, {len(MICRO_CONDITIONS)}] columns "
                         f"{MICRO_CONDITIONS}, got shape {micro.shape}")
      for i, embed in enumerate(self.micro):
        c = c + layers.layer_norm(embed(micro[:, i]), self.eps)
    c = c + layers.layer_norm(self.text(pooled.astype(jnp.float32)), self.eps)
    return c
