"""The STIV Diffusion Transformer (Flax NNX): one model for T2I, T2V, TI2V and friends.

Frame replacement puts clean condition latents into the noisy input; MaskDiT drops spatial tokens
(tube masking) before the main blocks, and a mask token plus two decoder blocks restore the grid.
Blocks are stacked (vmap-initialised) and run with `jax.lax.scan`, so compile time does not grow
with depth; each block runs under the configured remat policy.
"""
from __future__ import annotations

from typing import NamedTuple

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from flax.core import spmd
from jax.sharding import PartitionSpec as P

from stiv_jax.models import attention, blocks, embeddings, layers, masking
from stiv_jax.models.config import validate_model_config
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


def constrain_batch(x: jax.Array) -> jax.Array:
  """Pins an activation's batch dim to the mesh axes of the logical 'batch' axis.

  Active only while flax's logical-axis rules and an abstract mesh are set (the train step sets
  both while tracing). Used on the input of the MaskDiT decoder stack: without it XLA's sharding
  propagation does not carry the batch sharding into that second scan, which then runs with
  its batch replicated (XL, 16-way FSDP, 4 clips/chip: 38.6 -> 7.3 GiB per device, see
  WORKSPACE.md). Pinning the main stack's carry too made XLA miscompile a (2, 2, 2) mesh.
  """
  axes = tuple(dict(spmd.get_logical_axis_rules()).get("batch") or ())
  mesh = jax.sharding.get_abstract_mesh()
  if not axes or mesh.empty or x.shape[0] % math.prod(mesh.shape[a] for a in axes):
    return x
  return jax.lax.with_sharding_constraint(x, P(axes, *([None] * (x.ndim - 1))))


class STIV(nnx.Module):
  """The STIV DiT. See WORKSPACE.md ("Model") for the call contract."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    validate_model_config(cfg)
    self.cfg = ml_collections.FrozenConfigDict(cfg)
    d = cfg.hidden
    self.dtype = layers.dtype_of(cfg.dtype)
    self.patch = embeddings.PatchEmbed(cfg, rngs=rngs, dtype=self.dtype)
    self.cond = embeddings.ConditionEmbedder(cfg, rngs=rngs)
    # Shared adaLN (adaLN-single): SiLU + Linear, condition vector -> [B, 6, D].
    self.adaln = layers.Dense(d, (6, d), ("embed", None, "adaln"), rngs=rngs,
                              kernel_init=nnx.initializers.normal(0.02))
    self.blocks = _stacked_blocks(cfg, cfg.depth, rngs)
    self.mask_token = layers.param(rngs, nnx.initializers.normal(0.02), (d,), ("embed",))
    self.decoder = (_stacked_blocks(cfg, cfg.mask_decoder_depth, rngs)
                    if cfg.mask_decoder_depth > 0 else None)
    self.final = blocks.FinalLayer(cfg, rngs=rngs)

  def _run_stack(self, stack: blocks.STIVBlock, x: jax.Array, mod: jax.Array, text: jax.Array,
                 text_mask: jax.Array, pos: blocks.Positions) -> jax.Array:
    """Runs stacked blocks over x: a lax.scan (or an unrolled loop) under the remat policy."""
    graphdef, params = nnx.split(stack)

    def body(h, p):
      return nnx.merge(graphdef, p)(h, mod, text, text_mask, pos), None

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

    c = self.cond(t, micro, pooled)                          # [B, D]
    mod = self.adaln(jax.nn.silu(c))                         # [B, 6, D]

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
    h = self._run_stack(self.blocks, tokens, mod, text, text_mask4, positions(keep_idx))
    if masked:
      h = masking.restore_tokens(h, keep_idx, num_spatial, self.mask_token[...])
    if self.decoder is not None:
      h = self._run_stack(self.decoder, constrain_batch(h), mod, text, text_mask4,
                          positions(all_idx))

    out = self.final(h, c)                                   # [B, Tp, S, patch volume]
    velocity = embeddings.unpatchify(out, pt, ps, hp, wp, channels)
    if image_mode:
      velocity = velocity.mean(axis=1, keepdims=True)
    keep = (masking.keep_mask_from_indices(keep_idx, num_spatial) if masked
            else jnp.ones((b, num_spatial), bool))
    return STIVOutput(velocity.astype(jnp.float32), keep)
