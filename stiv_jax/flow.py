"""Rectified-flow objective: noising, velocity target, t samplers and the masked loss.

Convention (STIV_SPEC.md section 2): t in [0, 1], t = 0 is noise and t = 1 is data,
x_t = t * x1 + (1 - t) * eps, and the model regresses the velocity v = x1 - eps.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

T_SAMPLERS = ("uniform", "logit_normal", "shifted")
# Per-example weight of the velocity loss over t: 'none' (the paper) | 'data' ((1 - t)^2: for a
# data-predicting network, the squared error of its clean-latent prediction, equal at every t).
LOSS_WEIGHTINGS = ("none", "data")


def validate_flow_config(cfg: Any) -> None:
  """Raises ValueError naming the field when the `flow` config section is invalid."""
  if cfg.t_sampler not in T_SAMPLERS:
    raise ValueError(f"flow.t_sampler: {cfg.t_sampler!r} unknown; expected one of {T_SAMPLERS}")
  if cfg.logit_std <= 0:
    raise ValueError(f"flow.logit_std: must be > 0, got {cfg.logit_std}")
  if cfg.shift <= 0:
    raise ValueError(f"flow.shift: must be > 0, got {cfg.shift}")
  if cfg.get("loss_weighting", "none") not in LOSS_WEIGHTINGS:
    raise ValueError(f"flow.loss_weighting: {cfg.loss_weighting!r} unknown; expected one of "
                     f"{LOSS_WEIGHTINGS}")
  if cfg.mae_weight < 0:
    raise ValueError(f"flow.mae_weight: must be >= 0, got {cfg.mae_weight}")
  if not 0.0 <= cfg.t_eps < 0.5:
    raise ValueError(f"flow.t_eps: must be in [0, 0.5), got {cfg.t_eps}")


def shift_t(t: jax.Array, shift: float) -> jax.Array:
  """Shifts t toward noise for shift > 1 (SD3's resolution shift on sigma = 1 - t)."""
  sigma = 1.0 - t
  sigma = shift * sigma / (1.0 + (shift - 1.0) * sigma)
  return 1.0 - sigma


def sample_t(key: jax.Array, batch_size: int, cfg: Any) -> jax.Array:
  """Draws [batch_size] flow times in [t_eps, 1 - t_eps] with the configured sampler."""
  if cfg.t_sampler == "uniform":
    t = jax.random.uniform(key, (batch_size,), jnp.float32)
  elif cfg.t_sampler == "logit_normal":
    z = cfg.logit_mean + cfg.logit_std * jax.random.normal(key, (batch_size,), jnp.float32)
    t = jax.nn.sigmoid(z)
  elif cfg.t_sampler == "shifted":
    t = shift_t(jax.random.uniform(key, (batch_size,), jnp.float32), cfg.shift)
  else:
    raise ValueError(f"flow.t_sampler: {cfg.t_sampler!r} unknown; expected one of {T_SAMPLERS}")
  return jnp.clip(t, cfg.t_eps, 1.0 - cfg.t_eps)


def noise_latents(x1: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
  """x_t = t x1 + (1 - t) eps, with t [B] broadcast over the remaining axes."""
  tb = t.reshape((-1,) + (1,) * (x1.ndim - 1)).astype(x1.dtype)
  return tb * x1 + (1.0 - tb) * eps


def velocity_target(x1: jax.Array, eps: jax.Array) -> jax.Array:
  """The rectified-flow velocity d x_t / d t = x1 - eps."""
  return x1 - eps


def loss_weights(keep: jax.Array, cond_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-position weights [B, T, H, W] for the kept-token loss and the dropped-token MAE term.

  keep: [B, T, H, W] float, 1 where the token was kept by MaskDiT (all 1 when unmasked).
  cond_mask: [B, T] bool, True for replaced (conditioning) frames; they never count.
  """
  frame_ok = (~cond_mask).astype(jnp.float32)[:, :, None, None]
  keep = keep.astype(jnp.float32)
  return frame_ok * keep, frame_ok * (1.0 - keep)


def _weighted_mean(sq_err: jax.Array, weight: jax.Array) -> jax.Array:
  """Per-example mean of sq_err [B, T, H, W, C] over positions with weight [B, T, H, W]."""
  num = jnp.sum(sq_err * weight[..., None], axis=(1, 2, 3, 4))
  den = jnp.sum(weight, axis=(1, 2, 3)) * sq_err.shape[-1]
  return num / jnp.maximum(den, 1.0)


def flow_loss(pred: jax.Array, target: jax.Array, keep: jax.Array, cond_mask: jax.Array,
              mae_weight: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Masked MSE: (batch-mean loss, per-example loss [B]).

  The main term averages over kept tokens of non-replaced frames; with mae_weight > 0 the
  mean squared error over dropped tokens (MaskDiT's MAE-style term) is added with that weight.
  """
  sq_err = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
  w_kept, w_dropped = loss_weights(keep, cond_mask)
  per_example = _weighted_mean(sq_err, w_kept)
  if mae_weight:
    per_example = per_example + mae_weight * _weighted_mean(sq_err, w_dropped)
  return jnp.mean(per_example), per_example


def loss_time_weight(t: jax.Array, kind: str) -> jax.Array:
  """[B] weights of the per-example velocity loss (flow.loss_weighting, see LOSS_WEIGHTINGS)."""
  if kind == "none":
    return jnp.ones_like(t)
  if kind == "data":
    return jnp.square(1.0 - t)
  raise ValueError(f"flow.loss_weighting: {kind!r} unknown; expected one of {LOSS_WEIGHTINGS}")


def t_bucket_sums(t: jax.Array, per_example: jax.Array,
                  num_buckets: int = 4) -> tuple[jax.Array, jax.Array]:
  """Loss sums and counts per equal-width t bucket of [0, 1] (quarters by default)."""
  idx = jnp.clip((t * num_buckets).astype(jnp.int32), 0, num_buckets - 1)
  onehot = jax.nn.one_hot(idx, num_buckets, dtype=jnp.float32)
  return onehot.T @ per_example.astype(jnp.float32), jnp.sum(onehot, axis=0)
