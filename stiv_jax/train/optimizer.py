"""AdaFactor (the paper's settings) or AdamW, LR schedules, global-norm clipping, parameter EMA.

AdaFactor's second-moment decay follows big_vision / Zhai et al. 2021: the Adafactor power
schedule 1 - (step + 1)^-decay_pow capped at `beta2` (0.999, the paper's value), so early steps
are not divided by a near-zero moment and late steps keep adapting. Momentum is beta1 = 0.9.

Which parameters get a factored second moment (`optimizer.factor_rule`):
  logical  over the parameter's logical axes, as T5X's factor rules do: the input side (`embed`,
           `text_embed`, `cond`) is the row, the output side (`mlp`, `heads`, `kv`, `adaln`,
           `patch`) the column, `layers` and unnamed axes are kept in both moments (one set of
           statistics per stacked block). An attention kernel [layers, embed, heads, kv] is
           factored into embed vs heads*kv, although kv = 64 is below min_dim_size_to_factor.
           Both moments keep the parameter's rank (reduced axes have size 1), so they take the
           parameter's sharding with those axes unsharded (stiv_jax.sharding.derived_specs).
  shape    optax.scale_by_factored_rms: the two largest axes, each >= min_dim_size_to_factor
           (attention kernels stay unfactored); rank-reduced moments.
  none     the full second moment for every parameter.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from stiv_jax import sharding as shd

SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adafactor", "adamw")
FACTOR_RULES = ("logical", "shape", "none")
# Logical axis -> its side of a factored second moment (T5X's FactorDim ROW / COLUMN); axes not
# listed (layers, unnamed) are batch axes, kept in both moments.
ROW_AXES = ("embed", "text_embed", "cond")
COLUMN_AXES = ("mlp", "heads", "kv", "qkv", "adaln", "patch")


def validate_optimizer_config(cfg: Any) -> None:
  """Raises ValueError naming the field when the `optimizer` section is invalid."""
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name: {cfg.name!r} unsupported; expected one of {OPTIMIZERS}")
  if cfg.get("factor_rule", "logical") not in FACTOR_RULES:
    raise ValueError(f"optimizer.factor_rule: {cfg.factor_rule!r} unknown; expected one of "
                     f"{FACTOR_RULES}")
  if cfg.get("adam_eps", 1e-8) <= 0:
    raise ValueError(f"optimizer.adam_eps: must be > 0, got {cfg.adam_eps}")
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


class FactoredRmsState(NamedTuple):
  """Second-moment statistics per parameter; each leaf has the parameter's rank.

  Factored parameters keep v_row (column axes reduced to size 1) and v_col (row axes reduced);
  the others keep v (the full moment). Unused slots hold a size-1 placeholder.
  """
  count: jax.Array
  v_row: Any
  v_col: Any
  v: Any


def _names_and_value(leaf: Any) -> tuple[tuple | None, Any]:
  """(logical axis names or None, the array) of an nnx Variable or a plain array leaf."""
  if isinstance(leaf, nnx.Variable):
    return shd._leaf_logical(leaf), leaf.get_value()
  return None, leaf


def factor_axes(shape: tuple[int, ...], names: tuple | None, rule: str,
                min_dim: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
  """(row axes, column axes) of a factored second moment, or None (keep it whole).

  `logical`: rows/columns by the axis names (module docstring), factored when each side's
  joined size is >= min_dim; a parameter with no row or no column axis (e.g. [cond, embed])
  falls back to the shape rule over its non-`layers` axes. `shape` (or no names): the two
  largest axes, each >= min_dim, as optax does.
  """
  if rule == "none" or len(shape) < 2:
    return None
  candidates = tuple(range(len(shape)))
  if rule == "logical" and names is not None and len(names) == len(shape):
    rows = tuple(i for i, n in enumerate(names) if n in ROW_AXES)
    cols = tuple(i for i, n in enumerate(names) if n in COLUMN_AXES)
    if rows and cols:
      if min(math.prod(shape[i] for i in rows), math.prod(shape[i] for i in cols)) < min_dim:
        return None
      return rows, cols
    candidates = tuple(i for i, n in enumerate(names) if n != "layers")
  if len(candidates) < 2:
    return None
  order = sorted(candidates, key=lambda i: (shape[i], i))
  if shape[order[-2]] < min_dim:
    return None
  return (order[-1],), (order[-2],)


def scale_by_logical_factored_rms(decay_rate: float, min_dim_size_to_factor: int,
                                  epsilon: float, decay_rate_fn, rule: str = "logical"
                                  ) -> optax.GradientTransformation:
  """Adafactor's second-moment scaling with factored axes from `factor_axes`.

  Same math as optax.scale_by_factored_rms: v_row / v_col are decayed means of g^2 + eps over
  the column / row axes, and the update is g * (v_row / mean(v_row))^-1/2 * v_col^-1/2.
  """
  is_var = lambda x: isinstance(x, nnx.Variable)

  def value(x):
    return x.get_value() if is_var(x) else x

  def wrap(ref, x):
    """Like the parameter leaf: a Variable (same metadata; what optax's states hold) or array."""
    return ref.replace(x) if is_var(ref) else x

  def placeholder(x):
    return jnp.zeros((1,) * x.ndim, x.dtype)

  def plan(leaf):
    names, x = _names_and_value(leaf)
    return factor_axes(tuple(x.shape), names, rule, min_dim_size_to_factor), x

  def init_fn(params):
    leaves, treedef = jax.tree.flatten(params, is_leaf=is_var)
    out = []
    for leaf in leaves:
      axes, x = plan(leaf)
      if axes is None:
        moments = (placeholder(x), placeholder(x), jnp.zeros_like(x))
      else:
        rows, cols = axes
        moments = (jnp.zeros_like(jnp.mean(x, axis=cols, keepdims=True)),
                   jnp.zeros_like(jnp.mean(x, axis=rows, keepdims=True)), placeholder(x))
      out.append(tuple(wrap(leaf, m) for m in moments))
    return FactoredRmsState(jnp.zeros([], jnp.int32),
                            *(treedef.unflatten([o[i] for o in out]) for i in range(3)))

  def update_fn(grads, state, params=None):
    del params
    decay = decay_rate_fn(state.count, decay_rate)
    leaves, treedef = jax.tree.flatten(grads, is_leaf=is_var)
    stats = [treedef.flatten_up_to(t) for t in (state.v_row, state.v_col, state.v)]
    updates, new = [], []
    for leaf, v_row, v_col, v in zip(leaves, *stats):
      axes, g = plan(leaf)
      v_row, v_col, v = value(v_row), value(v_col), value(v)
      g2 = jnp.square(g.astype(jnp.float32)) + epsilon
      if axes is None:
        v = (decay * v + (1.0 - decay) * g2).astype(v.dtype)
        scale = jax.lax.rsqrt(v.astype(jnp.float32))
      else:
        rows, cols = axes
        v_row = (decay * v_row + (1.0 - decay) * jnp.mean(g2, axis=cols, keepdims=True)
                 ).astype(v_row.dtype)
        v_col = (decay * v_col + (1.0 - decay) * jnp.mean(g2, axis=rows, keepdims=True)
                 ).astype(v_col.dtype)
        row_mean = jnp.mean(v_row, axis=rows, keepdims=True)
        scale = jax.lax.rsqrt(v_row / row_mean) * jax.lax.rsqrt(v_col)
      updates.append(wrap(leaf, (g * scale).astype(g.dtype)))
      new.append(tuple(wrap(leaf, m) for m in (v_row, v_col, v)))
    return treedef.unflatten(updates), FactoredRmsState(
        optax.safe_int32_increment(state.count),
        *(treedef.unflatten([o[i] for o in new]) for i in range(3)))

  return optax.GradientTransformation(init_fn, update_fn)


def _second_moment(cfg: Any) -> optax.GradientTransformation:
  """AdaFactor's second-moment scaling under `optimizer.factor_rule`."""
  rule = cfg.get("factor_rule", "logical")
  if rule == "shape":
    return optax.scale_by_factored_rms(
        factored=True, decay_rate=cfg.decay_pow,
        min_dim_size_to_factor=cfg.min_dim_size_to_factor, epsilon=cfg.eps,
        decay_rate_fn=_capped_decay(cfg.beta2))
  return scale_by_logical_factored_rms(cfg.decay_pow, cfg.min_dim_size_to_factor, cfg.eps,
                                       _capped_decay(cfg.beta2), rule)


def make_optimizer(cfg: Any) -> optax.GradientTransformation:
  """The optax chain for `optimizer.name`.

  adafactor: clip global norm -> factored RMS -> update clip -> lr -> momentum (-> wd), optax.
  adafactor's order with the capped beta2 schedule and an explicit global clip.
  adamw: clip global norm -> AdamW (beta1, beta2, adam_eps, decoupled weight_decay), lr
  schedule; the baseline of the paper's memory ablation (two full f32 moments).
  """
  validate_optimizer_config(cfg)
  schedule = make_schedule(cfg)
  parts = []
  if cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  if cfg.name == "adamw":
    parts.append(optax.adamw(schedule, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay))
    return optax.chain(*parts)
  parts.append(_second_moment(cfg))
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
