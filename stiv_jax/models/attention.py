"""Attention: one kernel entry point, and the spatial/temporal/cross attention modules.

`attend` is the only place a kernel is chosen (model.attention_impl): 'xla' / 'cudnn' / jax's
own choice go through `jax.nn.dot_product_attention` (cuDNN flash attention on a GPU), 'splash'
through the TPU Pallas splash-attention kernel (stiv_jax/models/splash.py; interpreted off TPU),
'auto' is splash on a TPU and jax's choice elsewhere. Every attention has QK-norm.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from stiv_jax.models import layers, splash
from stiv_jax.models.partitioning import LogicalSpec

# Logical layouts of q [B', S, N, H] and k / v [B', L, N, H] for each attention of a block.
SPATIAL = (("batch", "frames"), None, "heads", None)       # B' = B * Tp
TEMPORAL = (("batch", "positions"), None, "heads", None)   # B' = B * K
CROSS_Q = ("batch", "positions", "heads", None)            # S = K * Tp, positions major
CROSS_KV = ("batch", None, "heads", None)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None,
           implementation: str = "xla", q_axes: LogicalSpec | None = None,
           kv_axes: LogicalSpec | None = None) -> jax.Array:
  """q [B, S, N, H], k/v [B, L, N, H] -> [B, S, N, H]; mask broadcastable to [B, N, S, L]
  (True = attend; the splash kernel takes key padding masks [B, 1, 1, L] only). q_axes /
  kv_axes name the dims' logical axes: the splash kernel runs per device on those shards."""
  if implementation == "splash" or (implementation == "auto" and splash.on_tpu()):
    key_mask = None
    if mask is not None:
      if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2] != 1:
        raise ValueError(f"attend: the splash kernel takes a key padding mask [B, 1, 1, L], "
                         f"got mask shape {mask.shape}")
      key_mask = jnp.broadcast_to(mask[:, 0, 0, :], (k.shape[0], k.shape[1]))
    return splash.attention(q, k, v, key_mask, q_axes=q_axes, kv_axes=kv_axes)
  impl = None if implementation == "auto" else implementation
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)


class Attention(nnx.Module):
  """Multi-head attention with QK-norm; queries from x, keys/values from x or a context."""

  def __init__(self, hidden: int, heads: int, *, kv_dim: int | None = None,
               kv_axis: str = "embed", qk_norm: bool = True, rngs: nnx.Rngs,
               dtype=jnp.float32, eps: float = 1e-6, implementation: str = "xla"):
    head_dim = hidden // heads
    kv_dim = kv_dim or hidden
    self.heads, self.head_dim, self.implementation = heads, head_dim, implementation
    self.q = layers.Dense(hidden, (heads, head_dim), ("embed", "heads", "kv"), rngs=rngs,
                          dtype=dtype)
    self.k = layers.Dense(kv_dim, (heads, head_dim), (kv_axis, "heads", "kv"), rngs=rngs,
                          dtype=dtype)
    self.v = layers.Dense(kv_dim, (heads, head_dim), (kv_axis, "heads", "kv"), rngs=rngs,
                          dtype=dtype)
    self.o = layers.Dense((heads, head_dim), hidden, ("heads", "kv", "embed"), rngs=rngs,
                          dtype=dtype)
    self.q_norm = layers.RMSNorm(head_dim, "kv", rngs=rngs, eps=eps) if qk_norm else None
    self.k_norm = layers.RMSNorm(head_dim, "kv", rngs=rngs, eps=eps) if qk_norm else None

  def project(self, x: jax.Array, context: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    q, k, v = self.q(x), self.k(context), self.v(context)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    return q, k, v

  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               mask: jax.Array | None = None, rope_fn=None, q_axes: LogicalSpec | None = None,
               kv_axes: LogicalSpec | None = None) -> jax.Array:
    """x [B, S, D]; context [B, L, Dk] (None: self-attention); rope_fn rotates q and k;
    q_axes / kv_axes: logical layouts of q and k/v (see `attend`)."""
    q, k, v = self.project(x, x if context is None else context)
    if rope_fn is not None:
      q, k = rope_fn(q), rope_fn(k)
    out = attend(q, k, v, mask=mask, implementation=self.implementation, q_axes=q_axes,
                 kv_axes=kv_axes if kv_axes is not None else q_axes)
    return self.o(out)


def text_mask_for_attention(text_mask: jax.Array) -> jax.Array:
  """[B, L] key padding mask -> [B, 1, 1, L]; a row with no real token attends everywhere."""
  text_mask = text_mask.astype(bool)
  text_mask = text_mask | ~jnp.any(text_mask, axis=-1, keepdims=True)
  return text_mask[:, None, None, :]
