"""The STIV block (spatial, temporal, cross attention, FFN; sandwich norm) and the final layer.

Modulation (model.adaln): 'shared' is PixArt-alpha's adaLN-single, one projection of the
condition vector gives [B, 6, D] (shift/scale/gate for attention and FFN) and each block adds its
own learned table; 'per_block' is DiT's adaLN, each block its own SiLU + Linear of the condition.

Context parallelism: the block takes and returns its tokens in the FRAMES layout [B, Tp, K, D]
(frames split over the 'context' mesh axis) and runs temporal attention, cross-attention and the
FFN in the POSITIONS layout [B, K, Tp, D] (spatial positions split), so each block moves its
activations with one all-to-all each way (stiv_jax/models/partitioning.py); without a context
axis the constraints only pin the batch.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from stiv_jax.models import attention, layers, rope
from stiv_jax.models.partitioning import (FRAMES, MODULATION, constrain, to_frames,
                                          to_positions)

SELF_ATTN_NAME = "self_attn"  # remat name of spatial/temporal attention outputs


class Positions(NamedTuple):
  """Per-token RoPE tables, computed once per forward: rows/cols [B, K, head_dim/4] of the kept
  spatial tokens, time [Tp, head_dim/2]."""
  rows: rope.RopeTable
  cols: rope.RopeTable
  time: rope.RopeTable


def rope_positions(rows: jax.Array, cols: jax.Array, time: jax.Array, head_dim: int,
                   theta: float) -> Positions:
  """Positions (already scaled for interpolation) -> the shared cos/sin tables."""
  return Positions(rope.rope_table(rows, head_dim // 2, theta),
                   rope.rope_table(cols, head_dim // 2, theta),
                   rope.rope_table(time, head_dim, theta))


class STIVBlock(nnx.Module):
  """Spatial attn (2D RoPE, modulated, gated) -> temporal attn (1D RoPE, not causal, unmodulated)
  -> cross attn to text -> FFN (modulated, gated); QK-norm everywhere, sandwich norm around each."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dtype = layers.dtype_of(cfg.dtype)
    d, heads = cfg.hidden, cfg.heads
    common = dict(qk_norm=cfg.qk_norm, rngs=rngs, dtype=dtype, eps=cfg.norm_eps,
                  implementation=cfg.attention_impl)
    self.per_block_adaln = cfg.get("adaln", "shared") == "per_block"
    self.eps, self.sandwich = cfg.norm_eps, cfg.sandwich_norm
    self.dtype = dtype
    self.spatial = attention.Attention(d, heads, **common)
    self.temporal = attention.Attention(d, heads, **common) if cfg.temporal_attention else None
    self.cross = (attention.Attention(d, heads, kv_dim=cfg.text_dim, kv_axis="text_embed",
                                      **common) if cfg.cross_attention else None)
    mlp = int(d * cfg.mlp_ratio)
    self.fc1 = layers.Dense(d, mlp, ("embed", "mlp"), rngs=rngs, dtype=dtype)
    self.fc2 = layers.Dense(mlp, d, ("mlp", "embed"), rngs=rngs, dtype=dtype)
    self.act = layers.activation(cfg.mlp_activation)
    if self.per_block_adaln:  # DiT: SiLU + Linear of the condition vector, in every block
      self.adaln = layers.Dense(d, (6, d), ("embed", None, "adaln"), rngs=rngs,
                                kernel_init=nnx.initializers.normal(0.02))
    else:  # table added to the shared adaLN output (PixArt's scale_shift_table)
      self.table = layers.param(rngs, nnx.initializers.normal(d ** -0.5), (6, d),
                                (None, "embed"))

  def _residual(self, x, y, gate=None):
    if self.sandwich:
      y = layers.layer_norm(y, self.eps)
    return x + (y if gate is None else gate * y)

  def modulation(self, cond: jax.Array) -> jax.Array:
    """[B, 6, D] shift/scale/gate: cond is the shared adaLN output [B, 6, D] ('shared') or the
    condition vector [B, D] ('per_block')."""
    if self.per_block_adaln:
      return constrain(self.adaln(jax.nn.silu(cond)), MODULATION)
    return cond + self.table[...][None]

  def __call__(self, x: jax.Array, cond: jax.Array, text: jax.Array, text_mask: jax.Array,
               pos: Positions) -> jax.Array:
    """x [B, Tp, K, D] (FRAMES layout); cond: see `modulation`; text [B, L, Dt];
    text_mask [B, 1, 1, L]."""
    x = constrain(x, FRAMES)
    b, tp, k, d = x.shape
    m = self.modulation(cond).astype(self.dtype)[:, :, None, None, :]  # [B, 6, 1, 1, D]
    shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = (m[:, i] for i in range(6))

    # 1. Spatial self-attention: time folded into batch; 2D RoPE per token; modulated, gated.
    h = layers.layer_norm(x, self.eps) * (1 + scale_a) + shift_a
    rows = rope.RopeTable(*(a[:, None, :, None, :] for a in pos.rows))  # [B, 1, K, 1, d/4]
    cols = rope.RopeTable(*(a[:, None, :, None, :] for a in pos.cols))

    def spatial_rope(q):  # q [B*Tp, K, N, hd]: rotate in the [B, Tp, K, N, hd] layout
      q5 = q.reshape(b, tp, k, *q.shape[2:])
      return rope.rotate_2d(q5, rows, cols).reshape(q.shape)

    h = self.spatial(h.reshape(b * tp, k, d), rope_fn=spatial_rope,
                     q_axes=attention.SPATIAL).reshape(b, tp, k, d)
    x = self._residual(x, checkpoint_name(h, SELF_ATTN_NAME), gate_a)

    # To the POSITIONS layout [B, K, Tp, D] for the rest of the block (an all-to-all over the
    # context axis; a local transpose without one).
    x = to_positions(x)

    # 2. Temporal self-attention: space folded into batch; 1D RoPE; bidirectional; no modulation.
    if self.temporal is not None and tp > 1:
      h = layers.layer_norm(x, self.eps).reshape(b * k, tp, d)
      h = self.temporal(h, rope_fn=lambda q: rope.rotate(q, rope.per_head(pos.time)),
                        q_axes=attention.TEMPORAL)
      x = self._residual(x, checkpoint_name(h.reshape(b, k, tp, d), SELF_ATTN_NAME))

    # 3. Cross-attention to the text token sequence (key padding mask honoured); queries in
    # (position, frame) order, each attends on its own.
    if self.cross is not None:
      h = layers.layer_norm(x, self.eps).reshape(b, k * tp, d)
      h = self.cross(h, context=text, mask=text_mask, q_axes=attention.CROSS_Q,
                     kv_axes=attention.CROSS_KV).reshape(b, k, tp, d)
      x = self._residual(x, h)

    # 4. FFN: modulated, gated.
    h = layers.layer_norm(x, self.eps) * (1 + scale_f) + shift_f
    h = self.fc2(self.act(self.fc1(h)))
    x = self._residual(x, h, gate_f).astype(x.dtype)
    return to_frames(x)


class FinalLayer(nnx.Module):
  """Modulated LayerNorm and a zero-initialised Linear to the patch volume."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    d = cfg.hidden
    out = cfg.patch_t * cfg.patch_s * cfg.patch_s * cfg.latent_channels
    self.eps = cfg.norm_eps
    self.table = layers.param(rngs, nnx.initializers.normal(d ** -0.5), (2, d), (None, "embed"))
    self.linear = layers.Dense(d, out, ("embed", "patch"), rngs=rngs,
                               kernel_init=nnx.initializers.zeros)

  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    """x [B, Tp, S, D], c [B, D] -> [B, Tp, S, patch volume] in float32."""
    m = (self.table[...][None] + c[:, None]).astype(jnp.float32)[:, :, None, None, :]
    shift, scale = m[:, 0], m[:, 1]
    h = layers.layer_norm(x.astype(jnp.float32), self.eps) * (1 + scale) + shift
    return self.linear(h)
