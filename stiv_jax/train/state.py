"""The train state (params, optimizer state, EMA, counters), built directly in its shardings.

The model is split once into a static graphdef and array states; the state holds only arrays so
it can be jitted, donated and checkpointed as a plain pytree.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, PartitionSpec as P

from stiv_jax import sharding as shd


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree of arrays."""
  step: jax.Array          # int32 scalar: optimizer steps taken (skipped ones included)
  params: nnx.State        # nnx.Param variables
  rest: nnx.State          # other model variables (kept to merge the graph back)
  opt_state: optax.OptState
  ema_params: nnx.State    # EMA of params (used to sample)
  skipped: jax.Array       # int32: non-finite updates skipped so far
  bad_streak: jax.Array    # int32: non-finite updates in a row


def build_model(model_cfg: Any, seed: int) -> nnx.Module:
  """Instantiates STIV with parameter seed `seed` (imported here: the model is optional)."""
  from stiv_jax.models.stiv import STIV
  return STIV(model_cfg, rngs=nnx.Rngs(params=seed))


def init_from_model(model: nnx.Module, tx: optax.GradientTransformation) -> TrainState:
  """A fresh state (step 0) from a built model; EMA starts equal to the parameters."""
  _, params, rest = nnx.split(model, nnx.Param, ...)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                    opt_state=tx.init(params),
                    ema_params=jax.tree.map(jnp.copy, params),
                    skipped=jnp.zeros((), jnp.int32), bad_streak=jnp.zeros((), jnp.int32))


def state_specs(abstract: TrainState, mesh: Mesh, rules: shd.Rules) -> TrainState:
  """Mesh PartitionSpecs for every leaf of a (abstract) train state, from the logical rules."""
  pspecs = shd.param_specs(abstract.params, mesh, rules)
  return TrainState(
      step=P(), params=pspecs, rest=shd.derived_specs(abstract.rest, abstract.params, pspecs),
      opt_state=shd.derived_specs(abstract.opt_state, abstract.params, pspecs),
      ema_params=pspecs, skipped=P(), bad_streak=P())


def create_train_state(make_model: Callable[[], nnx.Module], tx: optax.GradientTransformation,
                       mesh: Mesh, rules: shd.Rules, compiler_options: dict | None = None
                       ) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """(graphdef, state placed in its shardings, the NamedSharding tree) without a host copy."""
  abstract_model = nnx.eval_shape(make_model)
  graphdef = nnx.graphdef(abstract_model)

  def init():
    return init_from_model(make_model(), tx)

  abstract = jax.eval_shape(init)
  shardings = shd.named(mesh, state_specs(abstract, mesh, rules))
  state = jax.jit(init, out_shardings=shardings).lower().compile(compiler_options)()
  return graphdef, state, shardings


def abstract_train_state(make_model: Callable[[], nnx.Module], tx: optax.GradientTransformation,
                         mesh: Mesh, rules: shd.Rules) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """(graphdef, ShapeDtypeStructs with shardings, shardings): the restore target of a checkpoint."""
  graphdef = nnx.graphdef(nnx.eval_shape(make_model))
  abstract = jax.eval_shape(lambda: init_from_model(make_model(), tx))
  shardings = shd.named(mesh, state_specs(abstract, mesh, rules))
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  return graphdef, target, shardings


def ema_model(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
  """The model with EMA parameters (for sampling and evaluation)."""
  return nnx.merge(graphdef, state.ema_params, state.rest)
