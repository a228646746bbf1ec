"""The export format of STIV weights: sharded safetensors + index, config.json, contract.json.

An export folder (written by `stiv-export`, read by `stiv-sample --weights`, by stage init
through `init.sources`, and by anything that reads the Hugging Face sharded layout) holds
  model-00001-of-0000N.safetensors ...   the EMA weights, tensors of at most --shard-size
  model.safetensors.index.json           {"metadata": {total_size, format, naming, ...},
                                          "weight_map": {tensor name: file}}
  config.json                            the run's config (its `model` section builds the model)
  contract.json                          the encoder record of the data it was trained on
  lora.safetensors                       (optional) unmerged LoRA adapters
Naming scheme (version 1): a model variable's path joined by '.', e.g. `adaln.kernel`,
`cond.micro.0.fc1.kernel`; a scanned block stack (leading logical axis 'layers': `blocks`,
`decoder`) is unstacked into one tensor per layer with the layer index after the stack's name:
`blocks/spatial/q/kernel` [L, D, H, K] -> `blocks.0.spatial.q.kernel` ... `blocks.{L-1}...`
[D, H, K]. Layouts are the JAX ones (a Dense kernel is in_dims + out_dims, not PyTorch's
[out, in]); dtypes are the stored ones. A LoRA adapter of parameter NAME is `NAME.lora_a`
[in..., r] and `NAME.lora_b` [r, out...] (per layer for stacks, as above), with B's scale
alpha / r in the file's metadata (stiv_jax/lora.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

FORMAT = "stiv_jax.export"
NAMING_VERSION = 1
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
CONTRACT_FILE = "contract.json"
LORA_FILE = "lora.safetensors"
LAYERS_AXIS = "layers"


class ExportError(ValueError):
  """An export folder that is missing, incomplete or does not fit its config (one line)."""


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One model variable: checkpoint name ('a/b/kernel'), shape, dtype, whether it is stacked."""
  name: str
  shape: tuple[int, ...]
  dtype: Any
  stacked: bool

  def export_names(self) -> list[str]:
    """Tensor names of this variable in an export (one per layer for a stack)."""
    parts = self.name.split("/")
    if not self.stacked:
      return [".".join(parts)]
    return [".".join([parts[0], str(i)] + parts[1:]) for i in range(self.shape[0])]

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def path_name(path: tuple) -> str:
  """'a/b/kernel' from a pytree key path (a Variable's trailing 'value' dropped)."""
  parts = [str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path]
  if parts and parts[-1] == "value":
    parts = parts[:-1]
  return "/".join(parts)


def _is_variable(x: Any) -> bool:
  from flax import nnx
  return isinstance(x, nnx.Variable)


def layout(state: Any) -> list[Leaf]:
  """The variables of an (abstract) nnx State in flatten order, with their stacking."""
  from stiv_jax import sharding as shd
  out = []
  for path, v in jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_variable)[0]:
    value = v.get_value() if _is_variable(v) else v
    names = shd._leaf_logical(v) if _is_variable(v) else None
    stacked = bool(names) and names[0] == LAYERS_AXIS
    out.append(Leaf(path_name(path), tuple(value.shape), np.dtype(value.dtype), stacked))
  return out


def abstract_model_state(config: Any) -> tuple[Any, Any]:
  """(graphdef, abstract State of every model variable) of a config's `model` section."""
  from flax import nnx
  from stiv_jax.train import state as state_lib
  abstract = nnx.eval_shape(lambda: state_lib.build_model(config.model, config.get("seed", 0)))
  return nnx.split(abstract)


def plan_shards(leaves: list[Leaf], max_bytes: int) -> list[list[tuple[Leaf, int | None]]]:
  """Tensors (leaf, layer or None) per file, in order, each file at most `max_bytes` (a tensor
  larger than that gets a file of its own)."""
  files: list[list[tuple[Leaf, int | None]]] = [[]]
  size = 0
  for leaf in leaves:
    per = leaf.nbytes // leaf.shape[0] if leaf.stacked else leaf.nbytes
    for layer in (range(leaf.shape[0]) if leaf.stacked else [None]):
      if files[-1] and size + per > max_bytes:
        files.append([])
        size = 0
      files[-1].append((leaf, layer))
      size += per
  return files


def shard_file_name(i: int, n: int) -> str:
  return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def write_weights(out_dir: str, leaves: list[Leaf], fetch: Callable[[Leaf], np.ndarray],
                  max_shard_bytes: int, metadata: Mapping[str, Any] | None = None) -> dict:
  """Writes the sharded safetensors and the index; `fetch(leaf)` gives a variable's host array
  (called once per variable, in order, so at most one variable is on the host at a time).
  Returns the index."""
  from safetensors.numpy import save_file
  plan = plan_shards(leaves, max_shard_bytes)
  weight_map: dict[str, str] = {}
  total = 0
  cache: dict[str, np.ndarray] = {}
  for i, group in enumerate(plan):
    fname = shard_file_name(i, len(plan))
    tensors = {}
    for leaf, layer in group:
      if leaf.name not in cache:
        cache.clear()
        value = np.asarray(fetch(leaf))
        if value.shape != leaf.shape:
          raise ExportError(f"{leaf.name}: fetched shape {value.shape} != {leaf.shape}")
        cache[leaf.name] = value
      value = cache[leaf.name]
      name = leaf.export_names()[layer or 0]
      tensors[name] = np.ascontiguousarray(value if layer is None else value[layer])
      weight_map[name] = fname
      total += tensors[name].nbytes
    save_file(tensors, os.path.join(out_dir, fname),
              metadata={"format": "np", "naming": str(NAMING_VERSION)})
  index = {"metadata": {"total_size": total, "format": FORMAT, "naming": NAMING_VERSION,
                        **dict(metadata or {})},
           "weight_map": dict(sorted(weight_map.items()))}
  with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
    json.dump(index, f, indent=1)
  return index


def is_export(path: str) -> bool:
  """Whether `path` is an export folder (holds the index)."""
  return os.path.isfile(os.path.join(path, INDEX_FILE))


def read_index(path: str) -> dict:
  """The index of an export folder, checked for its format."""
  file = os.path.join(path, INDEX_FILE)
  if not os.path.isfile(file):
    raise ExportError(f"{path}: not an export folder (no {INDEX_FILE}; write one with "
                      "stiv-export)")
  with open(file) as f:
    index = json.load(f)
  meta = index.get("metadata", {})
  if meta.get("format") != FORMAT or int(meta.get("naming", 0)) > NAMING_VERSION:
    raise ExportError(f"{file}: format {meta.get('format')!r} naming {meta.get('naming')!r} is "
                      f"not {FORMAT!r} naming <= {NAMING_VERSION}")
  return index


def read_config(path: str):
  """(config, contract record or None) of an export folder."""
  import ml_collections
  file = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(file):
    raise ExportError(f"{path}: no {CONFIG_FILE} (the model config) beside the weights")
  with open(file) as f:
    config = ml_collections.ConfigDict(json.load(f))
  contract = None
  if os.path.isfile(os.path.join(path, CONTRACT_FILE)):
    with open(os.path.join(path, CONTRACT_FILE)) as f:
      contract = json.load(f)
  return config, contract


class _Reader:
  """Open safetensors files of an export, one handle per file, with a name -> file map."""

  def __init__(self, path: str, weight_map: Mapping[str, str]):
    from safetensors import safe_open
    self.path, self.weight_map = path, dict(weight_map)
    self._open = safe_open
    self.handles: dict[str, Any] = {}

  def slice(self, name: str):
    fname = self.weight_map.get(name)
    if fname is None:
      raise ExportError(f"{self.path}: tensor {name!r} missing from {INDEX_FILE}")
    if fname not in self.handles:
      full = os.path.join(self.path, fname)
      if not os.path.isfile(full):
        raise ExportError(f"{full}: listed in {INDEX_FILE} but missing")
      self.handles[fname] = self._open(full, framework="numpy")
    return self.handles[fname].get_slice(name)


def check_names(path: str, leaves: Iterable[Leaf], weight_map: Mapping[str, str]) -> None:
  """Every variable's tensors are in the index and nothing else is (names both sides)."""
  want = {n for leaf in leaves for n in leaf.export_names()}
  have = set(weight_map)
  missing, extra = sorted(want - have), sorted(have - want)
  if missing or extra:
    raise ExportError(f"{path}: weights do not fit its config.json model: missing "
                      f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                      f"{extra[:3]}{'...' if len(extra) > 3 else ''}")


def _read_region(reader: _Reader, leaf: Leaf, index: tuple) -> np.ndarray:
  """The region `index` (a tuple of slices over the full shape) of one variable."""
  index = tuple(index) + (slice(None),) * (len(leaf.shape) - len(index))
  names = leaf.export_names()
  if not leaf.stacked:
    sl = reader.slice(names[0])
    if tuple(sl.get_shape()) != leaf.shape:
      raise ExportError(f"{reader.path}: tensor {names[0]} has shape {tuple(sl.get_shape())}, "
                        f"the config's model needs {leaf.shape}")
    return np.asarray(sl[index] if index else sl[:], leaf.dtype)
  layers = range(leaf.shape[0])[index[0]]
  parts = []
  for i in layers:
    sl = reader.slice(names[i])
    if tuple(sl.get_shape()) != leaf.shape[1:]:
      raise ExportError(f"{reader.path}: tensor {names[i]} has shape {tuple(sl.get_shape())}, "
                        f"the config's model needs {leaf.shape[1:]}")
    parts.append(np.asarray(sl[index[1:]] if len(index) > 1 else sl[:], leaf.dtype))
  return np.stack(parts)


def load_numpy(path: str) -> dict[str, np.ndarray]:
  """{checkpoint name: host array} of an export's weights (stage init: init.sources)."""
  index = read_index(path)
  if has_lora(path):
    raise ExportError(f"{path}: holds unmerged LoRA adapters ({LORA_FILE}); export the run "
                      "with stiv-export --merge to start a stage from it")
  config, _ = read_config(path)
  _, state = abstract_model_state(config)
  leaves = layout(state)
  check_names(path, leaves, index["weight_map"])
  reader = _Reader(path, index["weight_map"])
  return {leaf.name: _read_region(reader, leaf, (slice(None),) * len(leaf.shape))
          for leaf in leaves}


def load_sharded(path: str, mesh: Any, rules: Any, config: Any = None) -> tuple[Any, Any, Any]:
  """(config, graphdef, State of every model variable) from an export, each array built in its
  logical-axis sharding on `mesh`; every device reads only its own slices of the files."""
  from flax import nnx
  from stiv_jax import sharding as shd
  index = read_index(path)
  if config is None:
    config, _ = read_config(path)
  graphdef, state = abstract_model_state(config)
  leaves = layout(state)
  check_names(path, leaves, index["weight_map"])
  reader = _Reader(path, index["weight_map"])
  spec_of = variable_specs(graphdef, state, mesh, rules)
  arrays = []
  for leaf in leaves:
    sharding = jax.sharding.NamedSharding(mesh, spec_of[leaf.name])
    arrays.append(jax.make_array_from_callback(
        leaf.shape, sharding, lambda idx, leaf=leaf: _read_region(reader, leaf, idx)))
  values = jax.tree.unflatten(jax.tree.structure(state), arrays)
  return config, graphdef, values


def variable_specs(graphdef: Any, state: Any, mesh: Any, rules: Any) -> dict[str, Any]:
  """{checkpoint name: PartitionSpec} of every model variable: parameters by their logical
  axes, other variables as the parameters they mirror (else replicated)."""
  from flax import nnx
  from stiv_jax import sharding as shd
  _, params, rest = nnx.split(nnx.merge(graphdef, state), nnx.Param, ...)
  pspecs = shd.param_specs(params, mesh, rules)
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
  out = {}
  for tree in (pspecs, shd.derived_specs(rest, params, pspecs)):
    out.update({path_name(p): s for p, s in
                jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_spec)[0]})
  return out


# ----------------------------------------------------------------------------- LoRA adapters


def lora_leaves(targets: Iterable[Any], rank: int) -> list[tuple[Leaf, Leaf]]:
  """(A, B) pseudo-variables of each adapted kernel: names NAME/lora_a, NAME/lora_b."""
  return [(Leaf(f"{t.name}/lora_a", t.a_shape(rank), np.dtype("float32"), t.stacked),
           Leaf(f"{t.name}/lora_b", t.b_shape(rank), np.dtype("float32"), t.stacked))
          for t in targets]


def write_lora(out_dir: str, targets: Iterable[Any], adapters: Mapping[str, Any], rank: int,
               alpha: float) -> str:
  """Writes lora.safetensors (adapters per layer, naming as the weights) with rank / alpha in
  its metadata; `adapters` is stiv_jax.lora's nested tree. Returns the file path."""
  from safetensors.numpy import save_file
  from stiv_jax import lora as lora_lib
  flat = lora_lib.flat_adapters(adapters)
  tensors = {}
  for (la, lb), t in zip(lora_leaves(targets, rank), targets):
    for leaf, value in ((la, flat[t.name]["a"]), (lb, flat[t.name]["b"])):
      value = np.asarray(jax.device_get(value))
      for i, name in enumerate(leaf.export_names()):
        tensors[name] = np.ascontiguousarray(value[i] if leaf.stacked else value)
  path = os.path.join(out_dir, LORA_FILE)
  save_file(tensors, path, metadata={"format": "np", "naming": str(NAMING_VERSION),
                                     "rank": str(rank), "alpha": repr(float(alpha))})
  return path


def has_lora(path: str) -> bool:
  return os.path.isfile(os.path.join(path, LORA_FILE))


def load_lora(path: str, config: Any, mesh: Any, rules: Any) -> Any:
  """The adapters of an export (nested tree, placed in their shardings on `mesh`); the
  targets come from its config's `lora` section, checked against the file's rank."""
  from safetensors import safe_open
  from stiv_jax import lora as lora_lib
  full = os.path.join(path, LORA_FILE)
  rank = int(config.lora.rank)
  with safe_open(full, framework="numpy") as f:
    meta = f.metadata() or {}
    if int(meta.get("rank", rank)) != rank:
      raise ExportError(f"{full}: adapters of rank {meta.get('rank')}, config.json says "
                        f"lora.rank={rank}")
    base = lora_lib.abstract_base(config, mesh, rules)
    reader_map = {n: LORA_FILE for n in f.keys()}
  reader = _Reader(path, reader_map)
  flat = {}
  for (la, lb), t in zip(lora_leaves(base.targets, rank), base.targets):
    flat[t.name] = {"a": _read_region(reader, la, ()), "b": _read_region(reader, lb, ())}
  adapters = lora_lib.nest(flat)
  specs = lora_lib.adapter_specs(base.targets, base.param_specs)
  return lora_lib.place(adapters, specs, mesh)
