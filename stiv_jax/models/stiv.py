"""The STIV Diffusion Transformer (Flax NNX): one model for T2I, T2V, TI2V and friends.

Frame replacement puts clean condition latents into the noisy input; MaskDiT drops spatial tokens
(tube masking) before the main blocks, and a mask token plus two decoder blocks restore the grid.
Blocks are stacked (vmap-initialised) and run with `jax.lax.scan`, so compile time does not grow
with depth; each block runs under the configured remat policy. Activations are pinned to their
logical layouts at the block boundaries (stiv_jax/models/partitioning.py): batch over the batch
axes, token frames over the context axis.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from stiv_jax.models import attention, blocks, embeddings, layers, masking
from stiv_jax.models.config import validate_model_config
from stiv_jax.models.partitioning import CONDITION, FRAMES, MODULATION, constrain
from stiv_jax.models.remat import apply_remat


class STIVOutput(NamedTuple):
  velocity: jax.Array  # [B, T, H, W, C] float32
  keep: jax.Array      # [B, Hp*Wp] bool: spatial tokens the main blocks saw


def _stacked_blocks(cfg, n: int, rngs: nnx.Rngs) -> blocks.STIVBlock:
  """`n` STIV blocks with parameters stacked on a leading 'layers' axis."""

  @nnx.split_rngs(splits=n)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def make(r: nnx.Rngs) -> blocks.STIVBlock:
    return blocks.STIVBlock(cfg, rngs=r)

  return make(rngs)


def data_to_velocity(x1_hat: jax.Array, x_t: jax.Array, t: jax.Array,
                     min_gap: float) -> jax.Array:
  """The flow velocity of a clean-data prediction: (x1_hat - x_t) / max(1 - t, min_gap)."""
  gap = jnp.maximum(1.0 - t.astype(jnp.float32), min_gap)
  return (x1_hat.astype(jnp.float32) - x_t.astype(jnp.float32)) / gap[:, None, None, None, None]


class STIV(nnx.Module):
  """The STIV DiT. See WORKSPACE.md ("Model") for the call contract."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    validate_model_config(cfg)
    self.cfg = ml_collections.FrozenConfigDict(cfg)
    d = cfg.hidden
    self.dtype = layers.dtype_of(cfg.dtype)
    self.patch = embeddings.PatchEmbed(cfg, rngs=rngs, dtype=self.dtype)
    self.cond = embeddings.ConditionEmbedder(cfg, rngs=rngs)
    # Shared adaLN (adaLN-single): SiLU + Linear, condition vector -> [B, 6, D]. With
    # model.adaln='per_block' every block holds its own (blocks.STIVBlock.modulation).
    self.adaln = (layers.Dense(d, (6, d), ("embed", None, "adaln"), rngs=rngs,
                               kernel_init=nnx.initializers.normal(0.02))
                  if cfg.get("adaln", "shared") == "shared" else None)
    self.blocks = _stacked_blocks(cfg, cfg.depth, rngs)
    self.mask_token = layers.param(rngs, nnx.initializers.normal(0.02), (d,), ("embed",))
    self.decoder = (_stacked_blocks(cfg, cfg.mask_decoder_depth, rngs)
                    if cfg.mask_decoder_depth > 0 else None)
    self.final = blocks.FinalLayer(cfg, rngs=rngs)

  def _run_stack(self, stack: blocks.STIVBlock, x: jax.Array, cond: jax.Array, text: jax.Array,
                 text_mask: jax.Array, pos: blocks.Positions) -> jax.Array:
    """Runs stacked blocks over x (FRAMES layout in and out): a lax.scan (or an unrolled loop)
    under the remat policy."""
    graphdef, params = nnx.split(stack)
    x = constrain(x, FRAMES)

    def body(h, p):
      return nnx.merge(graphdef, p)(h, cond, text, text_mask, pos), None

    body = apply_remat(body, self.cfg.remat)
    if self.cfg.scan_blocks:
      x, _ = jax.lax.scan(body, x, params)
      return x
    n = jax.tree.leaves(params)[0].shape[0]
    for i in range(n):
      x, _ = body(x, jax.tree.map(lambda a, i=i: a[i], params))
    return x

  def __call__(self, x: jax.Array, t: jax.Array, text: jax.Array, text_mask: jax.Array,
               pooled: jax.Array, micro: jax.Array, cond_mask: jax.Array | None = None,
               cond_latents: jax.Array | None = None,
               mask_key: jax.Array | None = None) -> STIVOutput:
    cfg = self.cfg
    if x.ndim != 5:
      raise ValueError(f"x: expected a latent video [B, T, H, W, C], got shape {x.shape}")
    b, num_frames, height, width, channels = x.shape
    pt, ps = cfg.patch_t, cfg.patch_s
    if channels != cfg.latent_channels:
      raise ValueError(f"x: {channels} latent channels, model.latent_channels={cfg.latent_channels}")
    if height % ps or width % ps:
      raise ValueError(f"x: latent size {height}x{width} not divisible by model.patch_s={ps}")

    # Frame replacement: conditioning frames hold their clean latents before patchify.
    if cond_mask is not None:
      if cond_latents is None or cond_latents.shape != x.shape:
        raise ValueError(f"cond_latents: expected shape {x.shape} with cond_mask, got "
                         f"{None if cond_latents is None else cond_latents.shape}")
      x = jnp.where(cond_mask[:, :, None, None, None], cond_latents.astype(x.dtype), x)

    # An image through a video model is a static clip of patch_t frames, averaged back after.
    image_mode = num_frames == 1 and pt > 1
    if image_mode:
      x = jnp.repeat(x, pt, axis=1)
    elif num_frames % pt:
      raise ValueError(f"x: {num_frames} frames not divisible by model.patch_t={pt}")
    tokens = self.patch(x)                                   # [B, Tp, S, D]
    tp, hp, wp = tokens.shape[1], height // ps, width // ps
    num_spatial = hp * wp
    if cfg.get("abs_pos_embed", "none") == "sincos":  # absolute positions (RoPE is relative only)
      tokens = tokens + embeddings.sincos_positions(
          tp, hp, wp, cfg.hidden, cfg.rope_scale_t, cfg.rope_scale_s).astype(tokens.dtype)[None]

    c = constrain(self.cond(t, micro, pooled), CONDITION)    # [B, D]
    # What each block modulates with: the shared adaLN output [B, 6, D], or c itself.
    cond = (constrain(self.adaln(jax.nn.silu(c)), MODULATION) if self.adaln is not None
            else c)

    masked = mask_key is not None and float(cfg.mask_ratio) > 0
    all_idx = jnp.broadcast_to(jnp.arange(num_spatial, dtype=jnp.int32), (b, num_spatial))
    if masked:
      num_keep = max(1, int(round(num_spatial * (1.0 - float(cfg.mask_ratio)))))
      keep_idx = masking.sample_keep_indices(mask_key, b, num_spatial, num_keep)
      tokens = masking.gather_tokens(tokens, keep_idx)
    else:
      keep_idx = all_idx

    time_pos = jnp.arange(tp, dtype=jnp.float32) * cfg.rope_scale_t

    head_dim = cfg.hidden // cfg.heads

    def positions(idx):
      rows, cols = masking.grid_positions(idx, wp)
      return blocks.rope_positions(rows.astype(jnp.float32) * cfg.rope_scale_s,
                                   cols.astype(jnp.float32) * cfg.rope_scale_s, time_pos,
                                   head_dim, cfg.rope_theta)

    text_mask4 = attention.text_mask_for_attention(text_mask)
    text = text.astype(self.dtype)
    h = self._run_stack(self.blocks, tokens, cond, text, text_mask4, positions(keep_idx))
    if masked:
      h = masking.restore_tokens(h, keep_idx, num_spatial, self.mask_token[...])
    if self.decoder is not None:
      # Pinned, or XLA's propagation leaves this second scan's batch replicated (WORKSPACE.md).
      h = self._run_stack(self.decoder, h, cond, text, text_mask4, positions(all_idx))

    out = self.final(h, c)                                   # [B, Tp, S, patch volume]
    velocity = embeddings.unpatchify(out, pt, ps, hp, wp, channels)
    if cfg.get("prediction", "velocity") == "data":
      velocity = data_to_velocity(velocity, x, t, float(cfg.prediction_min_gap))
    if image_mode:
      velocity = velocity.mean(axis=1, keepdims=True)
    keep = (masking.keep_mask_from_indices(keep_idx, num_spatial) if masked
            else jnp.ones((b, num_spatial), bool))
    return STIVOutput(velocity.astype(jnp.float32), keep)
