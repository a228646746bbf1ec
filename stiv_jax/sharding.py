"""Device mesh (data, fsdp, context, tensor) from the config, logical-axis rules, and
state/batch shardings.

Parameters carry logical axis names (WORKSPACE.md); the `mesh.rules` config section maps each
name to mesh axes. A dimension whose size a mapped axis does not divide is replicated (and the
rule table says so in `describe_shardings`), so tiny test models still compile on any mesh.
Activations use the same rules ('batch', and 'frames' / 'positions' for the two layouts of
context parallelism, stiv_jax/models/partitioning.py); `validate_model_mesh` checks that a
model's token grid divides the context axis before anything compiles.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
from flax import nnx
from flax.core import spmd
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# 'context' sits next to 'tensor' (the innermost, nearest devices): its all-to-alls move a whole
# block's activations twice per block.
MESH_AXES = ("data", "fsdp", "context", "tensor")
LOGICAL_AXES = ("batch", "embed", "mlp", "heads", "kv", "qkv", "adaln", "patch", "text_embed",
                "cond", "layers", "frames", "positions")
Rules = Mapping[str, tuple[str, ...]]


def default_rules() -> ml_collections.ConfigDict:
  """Default logical -> mesh rules: FSDP over embed, tensor over heads/mlp, batch over data+fsdp,
  token frames (spatial-attention layout) and spatial positions (temporal-attention layout) of
  the activations over context.

  Values are comma-separated mesh axes ('' = replicated) so they can be overridden from the
  command line (--config.mesh.rules.embed=fsdp,tensor).
  """
  return ml_collections.ConfigDict({
      "batch": "data,fsdp", "embed": "fsdp", "mlp": "tensor", "heads": "tensor", "kv": "",
      "qkv": "", "adaln": "tensor", "patch": "", "text_embed": "", "cond": "", "layers": "",
      "frames": "context", "positions": "context",
  })


PARTITIONERS = ("gspmd", "shardy")


def mesh_config(data: int = -1, fsdp: int = 1, tensor: int = 1,
                context: int = 1) -> ml_collections.ConfigDict:
  """The `mesh` config section: axis sizes (-1 = all remaining devices), rules, partitioner.

  context > 1 splits each clip over that many devices (context parallelism: frames for the
  spatial attention, spatial positions for the temporal attention); its devices share one batch
  shard. partitioner 'gspmd' is the default (GSPMD and Shardy pass the same mesh tests once the
  modulation vectors are pinned, see experiments/repro/shardy_miscompile.py).
  """
  return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "context": context,
                                    "tensor": tensor, "rules": default_rules(),
                                    "partitioner": "gspmd"})


def set_partitioner(cfg: Any) -> None:
  """Selects the SPMD partitioner named by mesh.partitioner (before anything is lowered)."""
  name = cfg.get("partitioner", "gspmd")
  if name not in PARTITIONERS:
    raise ValueError(f"mesh.partitioner: {name!r} unknown; expected one of {PARTITIONERS}")
  jax.config.update("jax_use_shardy_partitioner", name == "shardy")


def mesh_shape(cfg: Any, num_devices: int) -> tuple[int, ...]:
  """Resolves the sizes of MESH_AXES (an axis the config lacks is 1, so configs written before
  the context axis still load); at most one may be -1 and takes the rest."""
  sizes = [int(cfg.get(a, 1)) for a in MESH_AXES]
  free = [i for i, s in enumerate(sizes) if s == -1]
  for a, s in zip(MESH_AXES, sizes):
    if s == 0 or s < -1:
      raise ValueError(f"mesh.{a}: must be a positive size or -1, got {s}")
  if len(free) > 1:
    raise ValueError(f"mesh: only one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  fixed = math.prod(s for s in sizes if s != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh: {num_devices} devices not divisible by the fixed axes "
                       f"{dict(zip(MESH_AXES, sizes))}")
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh: shape {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
                     f"devices, have {num_devices}")
  return tuple(sizes)  # type: ignore[return-value]


def make_mesh(cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the MESH_AXES mesh with Auto axis types over `devices` (default all)."""
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def validate_model_mesh(model_cfg: Any, mesh_sizes: Mapping[str, int],
                        rules: Rules | None = None) -> None:
  """Fails before any compile when the model's default bucket cannot be split over the context
  axis: its token frames (num_frames / patch_t) and its spatial positions (all of them, and the
  MaskDiT-kept ones) must divide mesh.context, and the 'frames' / 'positions' rules must map to
  it. (Another bucket whose grid does not divide runs that axis replicated, still correct.)"""
  context = int(mesh_sizes.get("context", 1))
  if context == 1:
    return
  if rules is not None:
    for name in ("frames", "positions"):
      if "context" not in rules.get(name, ()):
        raise ValueError(f"mesh.rules.{name}={','.join(rules.get(name, ()))!r}: must include "
                         f"'context' when mesh.context={context}")
  frames = max(int(model_cfg.num_frames), int(model_cfg.patch_t)) // int(model_cfg.patch_t)
  if frames % context:
    raise ValueError(f"mesh.context={context} does not divide the {frames} token frames of "
                     f"model.num_frames={model_cfg.num_frames} (patch_t={model_cfg.patch_t})")
  ps = int(model_cfg.patch_s)
  spatial = (int(model_cfg.latent_height) // ps) * (int(model_cfg.latent_width) // ps)
  kept = max(1, int(round(spatial * (1.0 - float(model_cfg.mask_ratio)))))
  for what, n in (("spatial positions", spatial), ("MaskDiT-kept positions", kept)):
    if n % context:
      raise ValueError(f"mesh.context={context} does not divide the {n} {what} of the "
                       f"{model_cfg.latent_height}x{model_cfg.latent_width} latent "
                       f"(patch_s={ps}, mask_ratio={model_cfg.mask_ratio})")


def under_rules(fn: Callable, mesh: Mesh, rules: Rules) -> Callable:
  """fn traced with `rules` as flax's logical-axis rules and `mesh`'s abstract mesh active: what
  the model's activation constraints (stiv_jax/models/partitioning.py) read."""
  items = tuple(rules.items())

  def wrapped(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), spmd.logical_axis_rules(items):
      return fn(*args, **kwargs)

  return wrapped


def rules_from_config(cfg: Any) -> dict[str, tuple[str, ...]]:
  """Parses `mesh.rules` into {logical name: tuple of mesh axes} and checks the names."""
  rules = {}
  for name, value in dict(cfg).items():
    if name == "partitioner":
      continue
    if name not in LOGICAL_AXES:
      raise ValueError(f"mesh.rules.{name}: unknown logical axis; expected one of {LOGICAL_AXES}")
    axes = tuple(a.strip() for a in str(value or "").split(",") if a.strip())
    for a in axes:
      if a not in MESH_AXES:
        raise ValueError(f"mesh.rules.{name}: mesh axis {a!r} unknown; expected {MESH_AXES}")
    rules[name] = axes
  return rules


def logical_to_mesh(logical: Sequence[str | tuple[str, ...] | None] | None, shape: Sequence[int],
                    mesh: Mesh | jax.sharding.AbstractMesh, rules: Rules) -> P:
  """Maps a logical spec to a mesh PartitionSpec; replicates dims the axes do not divide.

  A dim may name several logical axes (a merged dim, e.g. ('batch', 'frames') for B*Tp, major
  first); mesh axes the mesh lacks are skipped, each mesh axis is used at most once."""
  if not logical:
    return P()
  if len(logical) != len(shape):
    raise ValueError(f"logical axes {tuple(logical)} do not match shape {tuple(shape)}")
  used: set[str] = set()
  out = []
  for name, size in zip(logical, shape):
    names = (name,) if isinstance(name, str) else tuple(name or ())
    axes = tuple(dict.fromkeys(a for n in names for a in rules.get(n, ())
                               if a not in used and a in mesh.shape))
    n = math.prod(mesh.shape[a] for a in axes) if axes else 1
    if not axes or size % n:
      out.append(None)
      continue
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else axes)
  return P(*out)


def _leaf_logical(x: Any) -> tuple | None:
  """Logical axis names of an nnx Variable (its `out_sharding` metadata), or None."""
  meta = x.get_metadata() if hasattr(x, "get_metadata") else {}
  names = meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")
  return tuple(names) if names else None


def _is_variable(x: Any) -> bool:
  return isinstance(x, nnx.Variable)


def param_specs(params: Any, mesh: Mesh, rules: Rules) -> Any:
  """Tree of mesh PartitionSpecs, one per array leaf of an nnx State of Variables."""
  def spec(v):
    return logical_to_mesh(_leaf_logical(v), v.get_value().shape, mesh, rules)
  specs = jax.tree.map(spec, params, is_leaf=_is_variable)
  # Re-wrap so the spec tree has exactly the leaf structure of `params` (Variables -> value).
  return jax.tree.unflatten(jax.tree.structure(params),
                            jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)))


def _path_key(path: tuple) -> tuple:
  return tuple(str(p) for p in path)


def derived_specs(tree: Any, params: Any, pspecs: Any) -> Any:
  """Specs for a tree whose leaves mirror parameters (optimizer states, EMA).

  A leaf whose path ends with a parameter's path gets that parameter's spec when the shapes
  are equal. A leaf of the parameter's rank whose dims are the parameter's or 1 (the factored
  moments of stiv_jax.train.optimizer, reduced axes kept as size 1) gets the parameter's spec
  with the size-1 axes unsharded. optax's rank-reduced factored moments (`v_row`/`v_col`, one
  axis removed) get the spec without that axis; anything else is replicated.
  """
  pflat = jax.tree_util.tree_flatten_with_path(params)[0]
  sflat = jax.tree.leaves(pspecs, is_leaf=lambda x: isinstance(x, P))
  index = {_path_key(p): (np.shape(x), s) for (p, x), s in zip(pflat, sflat)}

  def one(path, leaf):
    key = _path_key(path)
    shape = tuple(np.shape(leaf))
    for i in range(len(key)):
      hit = index.get(key[i:])
      if hit is None:
        continue
      pshape, spec = hit
      if shape == pshape:
        return spec
      full = tuple(spec) + (None,) * (len(pshape) - len(spec))
      if len(shape) == len(pshape) and all(d in (p, 1) for d, p in zip(shape, pshape)):
        return P(*(s if d == p else None for s, d, p in zip(full, shape, pshape)))
      names = [str(p) for p in path[:i]]
      if len(shape) == len(pshape) - 1 and any("v_row" in n or "v_col" in n for n in names):
        removed = _factored_removed_axis(pshape, row="v_row" in "".join(names))
        if removed is not None and tuple(np.delete(pshape, removed)) == shape:
          return P(*(full[:removed] + full[removed + 1:]))
      return P()
    return P()
  return jax.tree_util.tree_map_with_path(one, tree)


def _factored_removed_axis(shape: tuple[int, ...], row: bool) -> int | None:
  """The axis optax's factored RMS reduces for v_row (largest dim) or v_col (second largest)."""
  if len(shape) < 2:
    return None
  order = np.argsort(shape)
  d1, d0 = int(order[-2]), int(order[-1])
  return d0 if row else d1


def named(mesh: Mesh, specs: Any) -> Any:
  """Tree of PartitionSpecs -> tree of NamedShardings on `mesh`."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def batch_spec(rules: Rules, ndim: int) -> P:
  """PartitionSpec of a batch array: the leading axis over the `batch` rule's mesh axes."""
  axes = rules.get("batch", ())
  lead = None if not axes else (axes[0] if len(axes) == 1 else tuple(axes))
  return P(lead, *([None] * (ndim - 1)))


def batch_shardings(batch: Mapping[str, Any], mesh: Mesh, rules: Rules) -> dict[str, NamedSharding]:
  """NamedSharding per batch entry (dict of arrays or ShapeDtypeStructs)."""
  return {k: NamedSharding(mesh, batch_spec(rules, np.ndim(v) if not hasattr(v, "shape")
                                            else len(v.shape))) for k, v in batch.items()}


def batch_divisor(mesh: Mesh, rules: Rules) -> int:
  """How many ways the global batch is split (its size must be a multiple of this)."""
  return math.prod(mesh.shape[a] for a in rules.get("batch", ()))


def shard_batch(local: Mapping[str, np.ndarray], mesh: Mesh, rules: Rules) -> dict[str, jax.Array]:
  """Global jax Arrays from this process's slice of the batch (multi-host safe)."""
  shardings = batch_shardings(local, mesh, rules)
  return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v))
          for k, v in local.items()}


def describe_shardings(params: Any, pspecs: Any) -> str:
  """One line per parameter: path, shape, logical axes and mesh spec (for the run log)."""
  lines = []
  pflat = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_variable)[0]
  sflat = jax.tree.leaves(pspecs, is_leaf=lambda x: isinstance(x, P))
  for (path, v), s in zip(pflat, sflat):
    name = "/".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path)
    shape = tuple(v.get_value().shape) if _is_variable(v) else tuple(np.shape(v))
    lines.append(f"{name:60s} {str(shape):22s} {str(_leaf_logical(v)):28s} {s}")
  return "\n".join(lines)
