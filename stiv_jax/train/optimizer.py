"""AdaFactor (the paper's settings), LR schedules, global-norm clipping and the parameter EMA.

AdaFactor's second-moment decay follows big_vision / Zhai et al. 2021: the Adafactor power
schedule 1 - (step + 1)^-decay_pow capped at `beta2` (0.999, the paper's value), so early steps
are not divided by a near-zero moment and late steps keep adapting. Momentum is beta1 = 0.9.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "cosine")


def validate_optimizer_config(cfg: Any) -> None:
  """Raises ValueError naming the field when the `optimizer` section is invalid."""
  if cfg.name != "adafactor":
    raise ValueError(f"optimizer.name: {cfg.name!r} unsupported; expected 'adafactor'")
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule: {cfg.schedule!r} unknown; expected one of {SCHEDULES}")
  if cfg.lr <= 0:
    raise ValueError(f"optimizer.lr: must be > 0, got {cfg.lr}")
  if cfg.warmup_steps < 0:
    raise ValueError(f"optimizer.warmup_steps: must be >= 0, got {cfg.warmup_steps}")
  if cfg.schedule == "cosine" and cfg.decay_steps <= cfg.warmup_steps:
    raise ValueError(f"optimizer.decay_steps: must exceed warmup_steps={cfg.warmup_steps} for "
                     f"the cosine schedule, got {cfg.decay_steps}")
  for field in ("beta1", "beta2", "ema_decay"):
    if not 0.0 <= cfg[field] < 1.0:
      raise ValueError(f"optimizer.{field}: must be in [0, 1), got {cfg[field]}")
  if cfg.clip_norm < 0:
    raise ValueError(f"optimizer.clip_norm: must be >= 0 (0 = off), got {cfg.clip_norm}")
  if cfg.weight_decay < 0:
    raise ValueError(f"optimizer.weight_decay: must be >= 0, got {cfg.weight_decay}")


def make_schedule(cfg: Any) -> optax.Schedule:
  """Linear warmup from 0 to lr, then constant (default) or cosine decay to lr * min_lr_ratio."""
  warm = int(cfg.warmup_steps)
  if cfg.schedule == "constant":
    after = optax.constant_schedule(cfg.lr)
  elif cfg.schedule == "cosine":
    after = optax.cosine_decay_schedule(cfg.lr, int(cfg.decay_steps) - warm, alpha=cfg.min_lr_ratio)
  else:
    raise ValueError(f"optimizer.schedule: {cfg.schedule!r} unknown; expected one of {SCHEDULES}")
  if warm == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warm), after], [warm])


def _capped_decay(beta2: float):
  """Adafactor's decay schedule capped at beta2 (optax decay_rate_fn signature)."""
  def fn(step, decay_pow):
    t = jnp.asarray(step + 1, jnp.float32)
    return jnp.minimum(1.0 - t ** (-decay_pow), beta2)
  return fn


def make_optimizer(cfg: Any) -> optax.GradientTransformation:
  """The optax chain: clip global norm -> factored RMS -> update clip -> lr -> momentum (-> wd).

  Mirrors optax.adafactor's order with the capped beta2 schedule and an explicit global clip.
  """
  schedule = make_schedule(cfg)
  parts = []
  if cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  parts.append(optax.scale_by_factored_rms(
      factored=True, decay_rate=cfg.decay_pow, min_dim_size_to_factor=cfg.min_dim_size_to_factor,
      epsilon=cfg.eps, decay_rate_fn=_capped_decay(cfg.beta2)))
  if cfg.update_clip > 0:
    parts.append(optax.clip_by_block_rms(cfg.update_clip))
  parts.append(optax.scale_by_learning_rate(schedule))
  if cfg.multiply_by_parameter_scale:
    parts.append(optax.scale_by_param_block_rms())
  if cfg.beta1 > 0:
    parts.append(optax.ema(cfg.beta1, debias=False))
  if cfg.weight_decay > 0:
    parts.append(optax.add_decayed_weights(-cfg.weight_decay * cfg.lr))
  return optax.chain(*parts)


def ema_decay_at(cfg: Any, step: jax.Array) -> jax.Array:
  """EMA decay at `step`: the configured decay, warmed up as min(d, (1+s)/(10+s)) if asked."""
  d = jnp.asarray(cfg.ema_decay, jnp.float32)
  if cfg.ema_warmup:
    s = jnp.asarray(step, jnp.float32)
    d = jnp.minimum(d, (1.0 + s) / (10.0 + s))
  return d


def ema_update(ema: Any, params: Any, decay: jax.Array) -> Any:
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
  return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema, params)
