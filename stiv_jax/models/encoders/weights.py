"""Weight import from local safetensors checkpoints (no pickle) into NNX encoders.

The leaf layers here keep their parameters under PyTorch names (`weight`, `bias`) and declare
how each tensor is laid out in a PyTorch checkpoint, so the key map from checkpoint key to
parameter is explicit: `key_map(model)` lists every parameter, its source key and transform,
and `load_into` names every missing, extra or wrongly shaped tensor together with the file.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open


class WeightImportError(ValueError):
  """A checkpoint that does not fit the model (names the file and the tensors)."""


# ---------------------------------------------------------------------------------------------
# Activations by their transformers names (hidden_act / dense_act_fn).


def quick_gelu(x: jax.Array) -> jax.Array:
  """OpenAI CLIP's x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


# ---------------------------------------------------------------------------------------------
# Layout transforms: PyTorch tensor -> JAX parameter.


def identity(x: np.ndarray) -> np.ndarray:
  """Same layout in PyTorch and here (norm scales, biases, embedding tables)."""
  return x


def conv_oihw_to_hwio(x: np.ndarray) -> np.ndarray:
  """PyTorch Conv2d weight [O, I, kh, kw] -> NHWC conv kernel [kh, kw, I, O]."""
  return np.transpose(x, (2, 3, 1, 0))


def linear_out_in_to_in_out(x: np.ndarray) -> np.ndarray:
  """PyTorch Linear weight [out, in] (or a 1x1 conv [out, in, 1, 1]) -> [in, out]."""
  if x.ndim == 4 and x.shape[2:] == (1, 1):
    x = x[:, :, 0, 0]
  return np.transpose(x)


def _torch_shape_conv(shape: tuple[int, ...]) -> tuple[int, ...]:
  kh, kw, i, o = shape
  return (o, i, kh, kw)


def _torch_shape_linear(shape: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(reversed(shape))


# ---------------------------------------------------------------------------------------------
# Leaf layers with PyTorch-named parameters (NHWC / [..., features] activations).


def _normal(rngs: nnx.Rngs, shape: Sequence[int], std: float) -> jax.Array:
  """Random-normal init drawn with numpy from the layer's key (no per-shape XLA compile; the
  frozen encoders are normally overwritten by imported weights anyway)."""
  seed = np.asarray(jax.random.key_data(rngs.params())).ravel()
  x = np.random.default_rng(seed.astype(np.uint64)).standard_normal(tuple(shape), np.float32)
  return jnp.asarray(std * x)


class Conv2d(nnx.Module):
  """2D convolution on NHWC; kernel stored HWIO under `weight` (imported from OIHW)."""

  TORCH_LAYOUT = {"weight": (conv_oihw_to_hwio, _torch_shape_conv), "bias": (identity, None)}

  def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1,
               padding: int | Sequence[tuple[int, int]] = 0, rngs: nnx.Rngs):
    self.weight = nnx.Param(_normal(rngs, (kernel, kernel, cin, cout), (cin * kernel**2)**-0.5))
    self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))
    self.stride = stride
    self.padding = ((padding, padding), (padding, padding)) if isinstance(padding, int) else (
        tuple(tuple(p) for p in padding))

  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.weight[...].astype(x.dtype)
    if w.shape[0] == 1 and w.shape[1] == 1 and self.stride == 1:
      y = jnp.einsum("nhwc,cd->nhwd", x, w[0, 0])  # 1x1 conv as a matmul.
    else:
      y = jax.lax.conv_general_dilated(
          x, w, window_strides=(self.stride, self.stride), padding=self.padding,
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + self.bias[...].astype(x.dtype)


class Linear(nnx.Module):
  """Dense layer; kernel stored [in, out] under `weight` (imported from PyTorch [out, in])."""

  TORCH_LAYOUT = {"weight": (linear_out_in_to_in_out, _torch_shape_linear),
                  "bias": (identity, None)}

  def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
    self.weight = nnx.Param(_normal(rngs, (din, dout), din**-0.5))
    self.bias = nnx.Param(jnp.zeros((dout,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return x @ self.weight[...].astype(x.dtype) + self.bias[...].astype(x.dtype)


class LinearNoBias(nnx.Module):
  """Dense layer without a bias (T5); kernel stored [in, out] under `weight`."""

  TORCH_LAYOUT = {"weight": (linear_out_in_to_in_out, _torch_shape_linear)}

  def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
    self.weight = nnx.Param(_normal(rngs, (din, dout), din**-0.5))

  def __call__(self, x: jax.Array) -> jax.Array:
    return x @ self.weight[...].astype(x.dtype)


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int,
               eps: float) -> jax.Array:
  """GroupNorm over (H, W, C/groups) of NHWC `x`; statistics in float32."""
  n, h, w, c = x.shape
  xg = x.astype(jnp.float32).reshape(n, h * w, groups, c // groups)
  mean = xg.mean(axis=(1, 3), keepdims=True)
  var = jnp.square(xg - mean).mean(axis=(1, 3), keepdims=True)
  xg = (xg - mean) * jax.lax.rsqrt(var + eps)
  y = xg.reshape(n, h, w, c) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
  return y.astype(x.dtype)


class GroupNorm(nnx.Module):
  """GroupNorm with affine `weight`/`bias` as in torch.nn.GroupNorm."""

  TORCH_LAYOUT = {"weight": (identity, None), "bias": (identity, None)}

  def __init__(self, channels: int, groups: int, eps: float):
    if channels % groups:
      raise ValueError(f"GroupNorm: {channels} channels not divisible by {groups} groups")
    self.weight = nnx.Param(jnp.ones((channels,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
    self.groups = groups
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    return group_norm(x, self.weight[...], self.bias[...], self.groups, self.eps)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
  """LayerNorm over the last axis; statistics in float32."""
  xf = x.astype(jnp.float32)
  mean = xf.mean(axis=-1, keepdims=True)
  var = jnp.square(xf - mean).mean(axis=-1, keepdims=True)
  y = (xf - mean) * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32) + bias.astype(
      jnp.float32)
  return y.astype(x.dtype)


class LayerNorm(nnx.Module):
  """LayerNorm with affine `weight`/`bias` as in torch.nn.LayerNorm."""

  TORCH_LAYOUT = {"weight": (identity, None), "bias": (identity, None)}

  def __init__(self, dim: int, eps: float):
    self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    return layer_norm(x, self.weight[...], self.bias[...], self.eps)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """Root-mean-square norm over the last axis (no mean, no bias; T5); statistics in float32."""
  xf = x.astype(jnp.float32)
  y = xf * jax.lax.rsqrt(jnp.square(xf).mean(axis=-1, keepdims=True) + eps)
  return (y * scale.astype(jnp.float32)).astype(x.dtype)


class RMSNorm(nnx.Module):
  """Scale-only RMS norm with `weight`, as transformers' T5LayerNorm."""

  TORCH_LAYOUT = {"weight": (identity, None)}

  def __init__(self, dim: int, eps: float):
    self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    return rms_norm(x, self.weight[...], self.eps)


class Embedding(nnx.Module):
  """Lookup table stored [num, dim] under `weight`, as torch.nn.Embedding."""

  TORCH_LAYOUT = {"weight": (identity, None)}

  def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs):
    self.weight = nnx.Param(_normal(rngs, (num, dim), 0.02))

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.weight[...], ids, axis=0)


# ---------------------------------------------------------------------------------------------
# Key maps and loading.


def _key_of(path: Iterable[Any]) -> str:
  return ".".join(str(p) for p in path)


def key_map(model: nnx.Module, prefix: str = "") -> dict[str, tuple[nnx.Param, Callable, Any]]:
  """Checkpoint key -> (parameter, PyTorch->JAX transform, JAX->PyTorch shape fn) for `model`.

  Every parameter of `model` must live in a leaf layer that declares TORCH_LAYOUT; the key is
  `prefix` + the attribute path joined with dots (so `down_blocks.0.resnets.1.conv1.weight`).
  """
  out: dict[str, tuple[nnx.Param, Callable, Any]] = {}
  covered = set()
  for path, node in nnx.iter_graph(model):
    layout = getattr(type(node), "TORCH_LAYOUT", None)
    if layout is None or not isinstance(node, nnx.Module):
      continue
    for name, (transform, shape_fn) in layout.items():
      param = getattr(node, name)
      out[prefix + _key_of((*path, name))] = (param, transform, shape_fn)
      covered.add(id(param))
  for path, node in nnx.iter_graph(model):
    if isinstance(node, nnx.Param) and id(node) not in covered:
      raise TypeError(f"key_map: parameter {_key_of(path)} is not in a TORCH_LAYOUT leaf layer")
  return out


# JAX parameter -> PyTorch tensor: the inverse of each import transform above.
_TO_TORCH = {
    identity: identity,
    conv_oihw_to_hwio: lambda x: np.transpose(x, (3, 2, 0, 1)),
    linear_out_in_to_in_out: np.transpose,
}


def torch_state_dict(model: nnx.Module, prefix: str = "") -> dict[str, np.ndarray]:
  """The checkpoint tensors of `model` in PyTorch layout under their checkpoint keys (the
  inverse of `load_into`): what a diffusers / transformers folder holds for it."""
  out = {}
  for k, (param, transform, _) in key_map(model, prefix).items():
    if transform not in _TO_TORCH:
      raise TypeError(f"torch_state_dict: no inverse layout for {k} ({transform.__name__})")
    out[k] = np.ascontiguousarray(_TO_TORCH[transform](np.asarray(param[...], np.float32)))
  return out


def _load_file(f: str) -> dict[str, np.ndarray]:
  """All tensors of one safetensors file as numpy; bfloat16 (no numpy dtype) widened to f32."""
  out = {}
  with safe_open(f, framework="flax") as reader:  # flax reader: handles bfloat16.
    for k in reader.keys():
      x = reader.get_tensor(k)
      out[k] = np.asarray(x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x)
  return out


def read_safetensors(files: Sequence[str]) -> dict[str, np.ndarray]:
  """Reads tensors from one or more .safetensors files (numpy, no pickle); names a bad file."""
  tensors: dict[str, np.ndarray] = {}
  for f in files:
    if not os.path.isfile(f):
      raise WeightImportError(f"weights file not found: {f}")
    try:
      part = _load_file(f)
    except Exception as e:  # safetensors raises several types for a corrupt header.
      raise WeightImportError(f"{f}: cannot read as safetensors ({type(e).__name__}: {e})") from e
    dup = set(part) & set(tensors)
    if dup:
      raise WeightImportError(f"{f}: tensors also present in another shard: {sorted(dup)[:5]}")
    tensors.update(part)
  return tensors


def load_into(model: nnx.Module, tensors: Mapping[str, np.ndarray], *, source: str,
              prefix: str = "", ignore_prefixes: Sequence[str] = (),
              renames: Mapping[str, str] | None = None) -> None:
  """Copies checkpoint `tensors` into `model`'s parameters via `key_map`; all-or-nothing.

  `renames` maps legacy key fragments to current ones (applied to checkpoint keys, e.g. the
  deprecated diffusers attention names); keys starting with an entry of `ignore_prefixes` are
  allowed extras (e.g. the vision tower of a full CLIP checkpoint). Raises WeightImportError
  naming `source` and every missing, extra or wrongly shaped tensor.
  """
  renamed: dict[str, np.ndarray] = {}
  original_name: dict[str, str] = {}
  for k, v in tensors.items():
    new_k = k
    for old, new in (renames or {}).items():
      new_k = new_k.replace(old, new)
    renamed[new_k] = v
    original_name[new_k] = k
  kmap = key_map(model, prefix)
  missing = sorted(k for k in kmap if k not in renamed)
  extra = sorted(k for k in renamed if k not in kmap
                 and not any(original_name[k].startswith(p) for p in ignore_prefixes))
  bad_shape, bad_dtype, converted = [], [], {}
  for k, (param, transform, shape_fn) in kmap.items():
    if k not in renamed:
      continue
    src = renamed[k]
    if not np.issubdtype(src.dtype, np.floating) and src.dtype.name != "bfloat16":
      bad_dtype.append(f"{original_name[k]} dtype {src.dtype}")
      continue
    value = transform(np.asarray(src, np.float32))
    if value.shape != param[...].shape:
      want = shape_fn(param[...].shape) if shape_fn else param[...].shape
      bad_shape.append(f"{original_name[k]}: checkpoint {tuple(src.shape)}, "
                       f"model expects {tuple(want)}")
      continue
    converted[k] = value
  problems = []
  if missing:
    problems.append(f"missing tensors ({len(missing)}): {', '.join(missing[:20])}"
                    + (" ..." if len(missing) > 20 else ""))
  if extra:
    problems.append(f"unexpected tensors ({len(extra)}): {', '.join(extra[:20])}"
                    + (" ..." if len(extra) > 20 else ""))
  if bad_shape:
    problems.append("wrong shape: " + "; ".join(bad_shape))
  if bad_dtype:
    problems.append("non-float tensors: " + "; ".join(bad_dtype))
  if problems:
    raise WeightImportError(f"{source}: checkpoint does not match the model config: "
                            + " | ".join(problems))
  for k, (param, _, _) in kmap.items():
    param[...] = jnp.asarray(converted[k], param[...].dtype)


# ---------------------------------------------------------------------------------------------
# Checkpoint folders (diffusers / HF layout).


def read_json(path: str) -> dict:
  """Reads a JSON config, naming the file on failure."""
  if not os.path.isfile(path):
    raise WeightImportError(f"config file not found: {path}")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise WeightImportError(f"{path}: invalid JSON ({e})") from e


def resolve_checkpoint(path: str, weight_names: Sequence[str],
                       config_path: str | None = None) -> tuple[dict, str, list[str], str]:
  """-> (config dict, config file, weight files, weights description) for a folder or a single
  .safetensors file.

  A folder must hold `config.json` and one of `weight_names` (or its `.index.json` shards);
  a file needs `config_path` or a `config.json` beside it.
  """
  if not path:
    raise WeightImportError("checkpoint path is empty: set the encoder's `path` field")
  if os.path.isdir(path):
    cfg_file = config_path or os.path.join(path, "config.json")
    for name in weight_names:
      f = os.path.join(path, name)
      if os.path.isfile(f):
        return read_json(cfg_file), cfg_file, [f], f
      index = f + ".index.json"
      if os.path.isfile(index):
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
          raise WeightImportError(f"{index}: no 'weight_map' object")
        files = [os.path.join(path, s) for s in sorted(set(weight_map.values()))]
        return read_json(cfg_file), cfg_file, files, index
    raise WeightImportError(f"{path}: no weights file; expected one of {list(weight_names)} "
                            "(or a sharded '.index.json'); .bin/.ckpt (pickle) are not read")
  if os.path.isfile(path):
    if not path.endswith(".safetensors"):
      raise WeightImportError(f"{path}: only .safetensors weights are supported (no pickle)")
    cfg_file = config_path or os.path.join(os.path.dirname(path), "config.json")
    return read_json(cfg_file), cfg_file, [path], path
  raise WeightImportError(f"checkpoint not found: {path}")


def cfg_get(cfg: Any, name: str, default: Any = None) -> Any:
  """Reads a field from a ConfigDict, dict or attribute object, with a default."""
  if cfg is None:
    return default
  if hasattr(cfg, "get"):
    return cfg.get(name, default)
  return getattr(cfg, name, default)
