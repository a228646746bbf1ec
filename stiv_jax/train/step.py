"""The train step: ONE jax.jit over a pure function of (state, batch, null_text).

Inside: t, noise and per-example conditions from a key folded with the step (so a resumed run
draws the same randomness), frame replacement + MaskDiT in the model, masked flow loss, grads,
AdaFactor update, EMA, and a skip of non-finite updates (counted, params left untouched).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.core import spmd
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from stiv_jax import conditioning, flow
from stiv_jax import sharding as shd
from stiv_jax.train import optimizer as opt_lib
from stiv_jax.train.state import TrainState

NUM_T_BUCKETS = 4
# XLA options for quick compiles (tests, smoke runs): no LLVM optimisation of the CPU code.
FAST_COMPILE_OPTIONS = {"xla_backend_optimization_level": 0,
                        "xla_llvm_disable_expensive_passes": True}


def compiler_options(config: Any) -> dict | None:
  """The XLA compile options the config asks for (train.fast_compile)."""
  return dict(FAST_COMPILE_OPTIONS) if config.train.get("fast_compile", False) else None


def step_rngs(seed: int, step: jax.Array) -> dict[str, jax.Array]:
  """Named keys for one step, a pure function of (seed, step)."""
  key = jax.random.fold_in(jax.random.key(seed), step)
  k_t, k_eps, k_cond, k_mask = jax.random.split(key, 4)
  return {"t": k_t, "eps": k_eps, "cond": k_cond, "mask": k_mask}


def prepare_inputs(config: Any, batch: dict[str, jax.Array], null_text: dict[str, jax.Array],
                   rngs: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Noised latents, velocity target, t, conditions and (possibly dropped) text for one batch."""
  x1 = batch["latents"].astype(jnp.float32)
  b, num_frames = x1.shape[:2]
  t = flow.sample_t(rngs["t"], b, config.flow)
  eps = jax.random.normal(rngs["eps"], x1.shape, jnp.float32)
  conds = conditioning.sample_conditions(rngs["cond"], b, num_frames, config.conditioning)
  text, text_mask, pooled = conditioning.drop_text(
      batch["text"], batch["text_mask"], batch["pooled"], conds.text_drop, null_text)
  return {"x1": x1, "x_t": flow.noise_latents(x1, eps, t), "target": flow.velocity_target(x1, eps),
          "t": t, "cond_mask": conds.cond_mask, "text": text, "text_mask": text_mask,
          "pooled": pooled, "micro": batch["micro"].astype(jnp.float32)}


def loss_and_aux(config: Any, graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State,
                 inputs: dict[str, jax.Array], mask_key: jax.Array | None):
  """(mean loss, per-example loss) of the model with `params` on prepared inputs."""
  from stiv_jax.models.masking import keep_to_latent_mask
  model = nnx.merge(graphdef, params, rest)
  out = model(inputs["x_t"], inputs["t"], inputs["text"], inputs["text_mask"], inputs["pooled"],
              inputs["micro"], cond_mask=inputs["cond_mask"], cond_latents=inputs["x1"],
              mask_key=mask_key)
  _, num_frames, height, width, _ = inputs["x1"].shape
  keep = keep_to_latent_mask(out.keep, config.model, num_frames, height, width)
  _, per_example = flow.flow_loss(out.velocity, inputs["target"], keep, inputs["cond_mask"],
                                 config.flow.mae_weight)
  per_example = per_example * flow.loss_time_weight(
      inputs["t"], config.flow.get("loss_weighting", "none"))
  return jnp.mean(per_example), per_example


def train_step(config: Any, graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
               state: TrainState, batch: dict[str, jax.Array],
               null_text: dict[str, jax.Array],
               base: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step (pure); non-finite loss/grad-norm leaves params, opt state and EMA as is.

  With `base` (LoRA, stiv_jax/lora.py) state.params holds only adapters: the model runs with
  the frozen base's kernels plus the adapters' A B, and only the adapters get gradients."""
  rngs = step_rngs(config.seed, state.step)
  inputs = prepare_inputs(config, batch, null_text, rngs)
  mask_key = rngs["mask"] if float(config.model.mask_ratio) > 0 else None

  def loss_fn(params):
    if base is not None:
      from stiv_jax import lora as lora_lib
      params = lora_lib.apply(base, params, lora_lib.scale(config.lora),
                              float(config.lora.dropout), jax.random.fold_in(rngs["mask"], 1))
    return loss_and_aux(config, graphdef, params, state.rest, inputs, mask_key)

  (loss, per_example), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # Zero non-finite grads before the update so NaNs cannot leak into the (discarded) branch.
  grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
  updates, new_opt = tx.update(grads, state.opt_state, state.params)
  new_params = optax.apply_updates(state.params, updates)
  new_ema = opt_lib.ema_update(state.ema_params, new_params,
                               opt_lib.ema_decay_at(config.optimizer, state.step))

  def pick(new, old):
    return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

  skipped = (~finite).astype(jnp.int32)
  new_state = state.replace(
      step=state.step + 1, params=pick(new_params, state.params),
      opt_state=pick(new_opt, state.opt_state), ema_params=pick(new_ema, state.ema_params),
      skipped=state.skipped + skipped, bad_streak=jnp.where(finite, 0, state.bad_streak + 1))
  bucket_sum, bucket_count = flow.t_bucket_sums(inputs["t"], per_example, NUM_T_BUCKETS)
  metrics = {
      "loss": loss, "grad_norm": grad_norm, "finite": finite,
      "lr": opt_lib.make_schedule(config.optimizer)(state.step),
      "t_bucket_loss_sum": bucket_sum, "t_bucket_count": bucket_count,
      "skipped_total": new_state.skipped, "bad_streak": new_state.bad_streak,
  }
  return new_state, metrics


BATCH_KEYS = ("latents", "text", "text_mask", "pooled", "micro")


def batch_shapes(batch_size: int, latent_shape: tuple[int, int, int, int], text_len: int,
                 text_dim: int, num_micro: int = 6) -> dict[str, tuple[tuple[int, ...], Any]]:
  """{key: (global shape, dtype)} of one batch of a bucket (latents [T, H, W, C])."""
  return {"latents": ((batch_size, *latent_shape), jnp.float32),
          "text": ((batch_size, text_len, text_dim), jnp.float32),
          "text_mask": ((batch_size, text_len), jnp.bool_),
          "pooled": ((batch_size, text_dim), jnp.float32),
          "micro": ((batch_size, num_micro), jnp.float32)}


def abstract_batch(shapes: dict[str, tuple[tuple[int, ...], Any]], mesh: Mesh,
                   rules: shd.Rules) -> tuple[dict[str, jax.ShapeDtypeStruct],
                                              dict[str, NamedSharding]]:
  """(ShapeDtypeStructs with the batch shardings, the shardings) of `batch_shapes(...)`: what
  the step is compiled for, ahead of time, per bucket."""
  shardings = {k: NamedSharding(mesh, shd.batch_spec(rules, len(s))) for k, (s, _) in
               shapes.items()}
  return ({k: jax.ShapeDtypeStruct(s, dt, sharding=shardings[k]) for k, (s, dt) in
           shapes.items()}, shardings)


def abstract_null_text(text_len: int, text_dim: int, mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """ShapeDtypeStructs of the (replicated) empty-prompt encoding the step takes."""
  rep = NamedSharding(mesh, P())
  return {"text": jax.ShapeDtypeStruct((text_len, text_dim), jnp.float32, sharding=rep),
          "text_mask": jax.ShapeDtypeStruct((text_len,), jnp.bool_, sharding=rep),
          "pooled": jax.ShapeDtypeStruct((text_dim,), jnp.float32, sharding=rep)}


def null_text_arrays(text_encoder: Any) -> dict[str, jax.Array]:
  """The empty prompt's encoding ('text' [L, D], 'text_mask' [L], 'pooled' [D])."""
  tokens, mask, pooled = text_encoder.encode_text([""])
  return {"text": jnp.asarray(tokens[0]), "text_mask": jnp.asarray(mask[0]),
          "pooled": jnp.asarray(pooled[0])}


def jit_train_step(config: Any, graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                   state_shardings: Any, batch_shardings: dict[str, NamedSharding],
                   mesh: Mesh, donate: bool = True, base_shardings: Any = None) -> Callable:
  """jax.jit of train_step with explicit in/out shardings and the state donated; with
  `base_shardings` (LoRA) the step takes the frozen base parameters as a 4th argument."""
  replicated = NamedSharding(mesh, P())
  # The model pins the decoder stack's batch dim (stiv_jax.models.stiv.constrain_batch) from these.
  logical_rules = tuple(shd.rules_from_config(config.mesh.rules).items())

  def fn(state, batch, null_text, base=None):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), spmd.logical_axis_rules(logical_rules):
      return train_step(config, graphdef, tx, state, batch, null_text, base)

  extra = () if base_shardings is None else (base_shardings,)
  return jax.jit(fn, in_shardings=(state_shardings, batch_shardings, replicated) + extra,
                 out_shardings=(state_shardings, replicated),
                 donate_argnums=(0,) if donate else ())
