"""LoRA: low-rank adapters on Dense kernels, trained with the base model frozen.

Functional: the adapters are their own pytree, nested like the parameters they adapt
({'blocks': {'spatial': {'q': {'kernel': {'a': A, 'b': B}}}}}), and the effective kernel
W + (alpha / r) A B is formed inside the jitted forward (`apply`), so the train step stays a
pure function of a TrainState whose `params` / `opt_state` / `ema_params` hold only adapters;
the base weights are a separate, frozen argument (loaded from `init.sources`). A Dense kernel
is in_dims + out_dims (a scanned stack adds a leading 'layers' axis): A is [L?, *in, r]
(uniform +-1/sqrt(fan_in), as PEFT), B is [L?, r, *out] (zeros), so training starts at the
base model. `lora.dropout` drops input features of A (one mask per step and target, shared by
the batch: a named simplification of per-token dropout on the adapter path, which the merged
formulation cannot express).

Config section `lora` (stiv_jax/config_schema.py): rank (0 = off), alpha, dropout, targets
(a regex searched in parameter names such as 'blocks/spatial/q/kernel'; empty = off). The
adapters are the only trained parameters, so `optimizer.min_dim_size_to_factor <= rank` makes
AdaFactor factor their second moments (in-side vs rank): then the optimizer state is about
one adapter-sized momentum (`stiv-bench lora`).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

LAYERS_AXIS = "layers"


def enabled(cfg: Any) -> bool:
  """Whether a `lora` section turns adapters on (rank > 0 and a target regex)."""
  return cfg is not None and int(cfg.get("rank", 0)) > 0 and bool(cfg.get("targets", ""))


def validate_lora_config(cfg: Any) -> None:
  """Raises ValueError naming the field when the `lora` section is invalid."""
  if int(cfg.rank) < 0:
    raise ValueError(f"lora.rank: must be >= 0 (0 = off), got {cfg.rank}")
  if not math.isfinite(float(cfg.alpha)) or float(cfg.alpha) <= 0:
    raise ValueError(f"lora.alpha: must be a finite number > 0, got {cfg.alpha}")
  if not 0.0 <= float(cfg.dropout) < 1.0:
    raise ValueError(f"lora.dropout: must be in [0, 1), got {cfg.dropout}")
  try:
    re.compile(cfg.targets)
  except re.error as e:
    raise ValueError(f"lora.targets: not a regex ({e}): {cfg.targets!r}") from e


def scale(cfg: Any) -> float:
  """alpha / rank: the factor of A B in the effective kernel."""
  return float(cfg.alpha) / int(cfg.rank)


@dataclasses.dataclass(frozen=True)
class Target:
  """An adapted Dense kernel: its name, full shape, input rank, whether it is a stack."""
  name: str                   # 'blocks/spatial/q/kernel'
  shape: tuple[int, ...]      # the kernel's shape (leading layers axis for a stack)
  num_in: int                 # input dims of the Dense (after the layers axis)
  stacked: bool

  @property
  def lead(self) -> tuple[int, ...]:
    return self.shape[:1] if self.stacked else ()

  @property
  def in_shape(self) -> tuple[int, ...]:
    s = 1 if self.stacked else 0
    return self.shape[s:s + self.num_in]

  @property
  def out_shape(self) -> tuple[int, ...]:
    return self.shape[(1 if self.stacked else 0) + self.num_in:]

  def a_shape(self, rank: int) -> tuple[int, ...]:
    return self.lead + self.in_shape + (rank,)

  def b_shape(self, rank: int) -> tuple[int, ...]:
    return self.lead + (rank,) + self.out_shape


def _name(path: tuple) -> str:
  return "/".join(str(p) for p in path)


def find_targets(model: nnx.Module, cfg: Any) -> list[Target]:
  """The Dense kernels of a (possibly abstract) model whose names match `lora.targets`;
  an error names parameters the regex matches that are not Dense kernels, or no match."""
  from stiv_jax import sharding as shd
  from stiv_jax.models.layers import Dense
  pattern = re.compile(cfg.targets)
  targets, dense_kernels = [], set()
  for path, node in nnx.iter_graph(model):
    if isinstance(node, Dense):
      name = _name(path) + "/kernel"
      dense_kernels.add(name)
      if pattern.search(name):
        logical = shd._leaf_logical(node.kernel) or ()
        targets.append(Target(name, tuple(node.kernel.get_value().shape), len(node.in_shape),
                              bool(logical) and logical[0] == LAYERS_AXIS))
  _, params = nnx.split(model, nnx.Param)
  others = sorted(n for n in (_name(_keys(p)) for p, _ in
                              jax.tree_util.tree_flatten_with_path(params)[0])
                  if pattern.search(n) and n not in dense_kernels)
  if others:
    raise ValueError(f"lora.targets={cfg.targets!r} matches parameters that are not Dense "
                     f"kernels: {others[:4]}; narrow the regex (e.g. end it with 'kernel$')")
  if not targets:
    raise ValueError(f"lora.targets={cfg.targets!r} matches no Dense kernel; names look like "
                     f"{sorted(dense_kernels)[:3]}")
  return sorted(targets, key=lambda t: t.name)


def _keys(path: tuple) -> tuple:
  parts = tuple(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p))) for p in path)
  return parts[:-1] if parts and parts[-1] == "value" else parts


def nest(flat: Mapping[str, Any]) -> dict:
  """{'a/b/c': x} -> {'a': {'b': {'c': x}}}."""
  out: dict = {}
  for name, value in flat.items():
    node = out
    *head, last = name.split("/")
    for k in head:
      node = node.setdefault(k, {})
    node[last] = value
  return out


def flat_adapters(adapters: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """{'blocks/spatial/q/kernel': {'a': A, 'b': B}} of a nested adapters tree."""
  out = {}

  def walk(node, prefix):
    if set(node) == {"a", "b"} and not isinstance(node["a"], Mapping):
      out["/".join(prefix)] = node
      return
    for k, v in node.items():
      walk(v, prefix + [k])
  walk(adapters, [])
  return out


def init_adapters(targets: list[Target], rank: int, key: jax.Array) -> dict:
  """Fresh adapters: A uniform in +-1/sqrt(fan_in), B zeros (the adapted model starts at the
  base). One key per target, folded from `key` by its index in name order."""
  flat = {}
  for i, t in enumerate(targets):
    bound = 1.0 / math.sqrt(math.prod(t.in_shape))
    a = jax.random.uniform(jax.random.fold_in(key, i), t.a_shape(rank), jnp.float32,
                           -bound, bound)
    flat[t.name] = {"a": a, "b": jnp.zeros(t.b_shape(rank), jnp.float32)}
  return nest(flat)


def delta(a: jax.Array, b: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
  """A B reshaped to the kernel: [L?, *in, r] x [L?, r, *out] -> kernel_shape (a stack's
  layers axis is the leading axis of both, detected from the ranks)."""
  stacked = a.ndim + b.ndim - 2 == len(kernel_shape) + 1
  lead = 1 if stacked else 0
  r = a.shape[-1]
  a2 = a.reshape(a.shape[:lead] + (-1, r))
  b2 = b.reshape(b.shape[:lead] + (r, -1))
  d = jnp.einsum("...ir,...ro->...io", a2.astype(jnp.float32), b2.astype(jnp.float32))
  return d.reshape(kernel_shape)


def apply(params: Any, adapters: Mapping[str, Any], scale_: float, dropout: float = 0.0,
          key: jax.Array | None = None) -> Any:
  """params (an nnx State or nested dict) with every adapted kernel replaced by
  W + scale * A B (pure; jit it). With `dropout` and a `key`, input features of A are dropped
  (a mask per target, rescaled by 1 / (1 - dropout))."""
  flat_ad = flat_adapters(adapters)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  missing = set(flat_ad) - {_name(_keys(p)) for p, _ in leaves}
  if missing:
    raise ValueError(f"lora: adapters for parameters the model lacks: {sorted(missing)[:4]}")
  out = []
  for i, (path, w) in enumerate(leaves):
    ad = flat_ad.get(_name(_keys(path)))
    if ad is not None:
      a = ad["a"]
      if dropout > 0 and key is not None:
        keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - dropout,
                                    a.shape[:-1] + (1,))
        a = jnp.where(keep, a / (1.0 - dropout), 0.0)
      w = (w.astype(jnp.float32) + scale_ * delta(a, ad["b"], tuple(w.shape))).astype(w.dtype)
    out.append(w)
  return jax.tree_util.tree_unflatten(treedef, out)


def adapter_specs(targets: list[Target], param_specs: Mapping[str, P]) -> dict:
  """PartitionSpecs of the adapters: A takes its kernel's spec on (layers, in dims), B on
  (layers, out dims); the rank axis is replicated."""
  flat = {}
  for t in targets:
    spec = tuple(param_specs.get(t.name, P())) + (None,) * len(t.shape)
    spec = spec[:len(t.shape)]
    lead, n_in = len(t.lead), t.num_in
    a = spec[:lead] + spec[lead:lead + n_in] + (None,)
    b = spec[:lead] + (None,) + spec[lead + n_in:]
    flat[t.name] = {"a": P(*a), "b": P(*b)}
  return nest(flat)


def named_param_specs(params: Any, mesh: Any, rules: Any) -> dict[str, P]:
  """{'a/b/kernel': PartitionSpec} of an nnx State of parameters under the logical rules."""
  from stiv_jax import sharding as shd
  specs = shd.param_specs(params, mesh, rules)
  flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]
  return {_name(_keys(p)): s for p, s in flat}


def num_adapter_params(adapters: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(adapters)))


def make_apply_fn(graphdef: nnx.GraphDef, scale_: float):
  """A sampling ApplyFn over {'base': model state, 'adapters': adapters} (unmerged LoRA):
  the effective kernels are formed inside the jitted step."""
  from stiv_jax import sampling
  base_apply = sampling.model_apply_fn(graphdef)

  def fn(p, x, t, cond):
    return base_apply(apply(p["base"], p["adapters"], scale_), x, t, cond)

  return fn


def place(tree: Any, specs: Any, mesh: Any) -> Any:
  """device_put of a pytree onto `mesh` with a matching tree of PartitionSpecs."""
  return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, specs,
                      is_leaf=lambda x: isinstance(x, P))


# ----------------------------------------------------------------------------- training


LORA_SEED_SALT = 0x10A  # folded into config.seed for the adapters' init key


@dataclasses.dataclass
class Base:
  """The frozen base of a LoRA run: graph, parameters (placed), other variables, targets."""
  graphdef: nnx.GraphDef
  params: Any
  rest: Any
  param_shardings: Any
  targets: list[Target]
  param_specs: dict[str, P]
  report: Any = None


def _abstract_split(config: Any):
  from stiv_jax.train import state as state_lib
  make_model = lambda: state_lib.build_model(config.model, config.seed)  # noqa: E731
  abstract = nnx.eval_shape(make_model)
  return make_model, abstract, nnx.split(abstract, nnx.Param, ...)


def check_config(config: Any) -> None:
  """A LoRA run adapts the weights its init.sources hold: without sources it is an error."""
  validate_lora_config(config.lora)
  if enabled(config.lora) and not config.init.sources:
    raise ValueError("lora: the frozen base weights come from init.sources, which is empty; "
                     "set --config.init.sources to the workdir or export folder to adapt")


def fresh_base(config: Any, mesh: Any, rules: Any, compiler_options: dict | None = None) -> Base:
  """The model's fresh init (config.seed) as a base, each array in its sharding on `mesh`
  (benchmarks; a run loads its base with `load_base`)."""
  from stiv_jax import sharding as shd
  validate_lora_config(config.lora)
  make_model, abstract, (graphdef, params, rest) = _abstract_split(config)
  pspecs = shd.param_specs(params, mesh, rules)
  psh = shd.named(mesh, pspecs)
  rsh = shd.named(mesh, shd.derived_specs(rest, params, pspecs))
  init = lambda: nnx.split(make_model(), nnx.Param, ...)[1:]  # noqa: E731
  fresh, rest = jax.jit(init, out_shardings=(psh, rsh)).lower().compile(compiler_options)()
  return Base(graphdef, fresh, rest, psh, find_targets(abstract, config.lora),
              named_param_specs(params, mesh, rules))


def load_base(config: Any, mesh: Any, rules: Any, compiler_options: dict | None = None) -> Base:
  """The base parameters: the model's fresh init with what init.sources hold loaded over it
  (stiv_jax/train/stages.py), each array in its sharding on `mesh`."""
  from stiv_jax import sharding as shd
  from stiv_jax.train import stages
  check_config(config)
  _, abstract, (graphdef, params, rest) = _abstract_split(config)
  psh = shd.named(mesh, shd.param_specs(params, mesh, rules))
  loaded, report = stages.params_from_sources(config, params, psh)
  if report.missing or jax.tree.leaves(rest):  # fresh init only when the sources lack some
    base = fresh_base(config, mesh, rules, compiler_options)
    base.params = jax.tree.map(
        lambda got, new: new if isinstance(got, jax.ShapeDtypeStruct) else got, loaded,
        base.params)
    base.report = report
    return base
  return Base(graphdef, loaded, rest, psh, find_targets(abstract, config.lora),
              named_param_specs(params, mesh, rules), report)


def abstract_base(config: Any, mesh: Any, rules: Any) -> Base:
  """Base without weights (shapes, shardings, targets): to build restore targets."""
  from stiv_jax import sharding as shd
  _, abstract, (graphdef, params, rest) = _abstract_split(config)
  psh = shd.named(mesh, shd.param_specs(params, mesh, rules))
  return Base(graphdef, params, rest, psh, find_targets(abstract, config.lora),
              named_param_specs(params, mesh, rules))


def _init_state(base: Base, tx: Any, config: Any):
  from stiv_jax.train.state import TrainState

  def init(rest):
    key = jax.random.fold_in(jax.random.key(int(config.seed)), LORA_SEED_SALT)
    adapters = init_adapters(base.targets, int(config.lora.rank), key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=adapters, rest=rest,
                      opt_state=tx.init(adapters), ema_params=jax.tree.map(jnp.copy, adapters),
                      skipped=jnp.zeros((), jnp.int32), bad_streak=jnp.zeros((), jnp.int32))
  return init


def state_shardings(base: Base, tx: Any, config: Any, mesh: Any) -> tuple[Any, Any]:
  """(abstract LoRA TrainState, its NamedSharding tree): adapters, their optimizer state and
  EMA in the shardings of the kernels they adapt; nothing of the base."""
  from stiv_jax import sharding as shd
  from stiv_jax.train.state import TrainState
  abstract = jax.eval_shape(_init_state(base, tx, config), base.rest)
  aspecs = adapter_specs(base.targets, base.param_specs)
  rest_specs = jax.tree.map(lambda _: P(), abstract.rest)
  specs = TrainState(step=P(), params=aspecs, rest=rest_specs,
                     opt_state=shd.derived_specs(abstract.opt_state, abstract.params, aspecs),
                     ema_params=aspecs, skipped=P(), bad_streak=P())
  return abstract, shd.named(mesh, specs)


def create_train_state(base: Base, tx: Any, config: Any, mesh: Any,
                       compiler_options: dict | None = None) -> tuple[Any, Any]:
  """(fresh LoRA TrainState placed in its shardings, the sharding tree)."""
  _, shardings = state_shardings(base, tx, config, mesh)
  state = jax.jit(_init_state(base, tx, config), out_shardings=shardings).lower(
      base.rest).compile(compiler_options)(base.rest)
  return state, shardings


def abstract_train_state(base: Base, tx: Any, config: Any, mesh: Any) -> tuple[Any, Any]:
  """(ShapeDtypeStructs with shardings, shardings): the restore target of a LoRA checkpoint."""
  abstract, shardings = state_shardings(base, tx, config, mesh)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  return target, shardings


def eval_train_state(config: Any, tx: Any) -> Any:
  """Shapes of the LoRA TrainState a config builds (no mesh): for resume compatibility checks."""
  _, abstract, (graphdef, params, rest) = _abstract_split(config)
  base = Base(graphdef, params, rest, None, find_targets(abstract, config.lora), {})
  return jax.eval_shape(_init_state(base, tx, config), rest)
