"""Shared pieces of the FVD / FID feature networks: a parameter source and conv-BN-ReLU units.

Networks are pure functions of a flat {name: array} dict whose names and layouts follow the
PyTorch state dicts the weights are usually published in (kernels OIHW / OIDHW, BatchNorm
weight/bias/running_mean/running_var), so local `.safetensors` files load without renaming.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


class ParamSource:
  """Serves parameters by name: checks shapes (apply) or creates random ones (init)."""

  def __init__(self, params: Mapping[str, jax.Array] | None = None, seed: int = 0):
    self.params = params
    self.created: dict[str, np.ndarray] = {}
    self._rng = np.random.default_rng(seed)

  def get(self, name: str, shape: Sequence[int], kind: str = "weight") -> jax.Array:
    shape = tuple(int(s) for s in shape)
    if self.params is None:
      self.created[name] = self._random(shape, kind)
      return jnp.asarray(self.created[name])
    if name not in self.params:
      raise KeyError(f"feature network: missing parameter {name!r} (expected shape {shape})")
    value = self.params[name]
    if tuple(value.shape) != shape:
      raise ValueError(f"feature network: parameter {name!r} has shape {tuple(value.shape)}, "
                       f"expected {shape}")
    return value

  def _random(self, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Random parameters that keep activations O(1) through a deep net (tests only)."""
    if kind == "weight":  # conv kernel [O, I, *k]: He-normal
      fan_in = int(np.prod(shape[1:]))
      return (self._rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    if kind == "scale":
      return self._rng.uniform(0.8, 1.2, shape).astype(np.float32)
    if kind == "var":
      return self._rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return (0.05 * self._rng.standard_normal(shape)).astype(np.float32)


def conv_bn_relu(p: ParamSource, name: str, x: jax.Array, cin: int, cout: int,
                 kernel: Sequence[int], stride: Sequence[int] | int = 1,
                 padding: str | Sequence[tuple[int, int]] = "SAME", conv: str = "conv",
                 eps: float = 1e-3) -> jax.Array:
  """Conv (no bias) + inference BatchNorm + ReLU on channels-last x (2D or 3D by len(kernel))."""
  nd = len(kernel)
  stride = (stride,) * nd if isinstance(stride, int) else tuple(stride)
  w = p.get(f"{name}.{conv}.weight", (cout, cin) + tuple(kernel))
  spatial = "DHW"[-nd:] if nd <= 3 else None
  dn = ("N" + spatial + "C", "OI" + spatial, "N" + spatial + "C")
  y = lax.conv_general_dilated(x, w.astype(x.dtype), stride, padding, dimension_numbers=dn)
  gamma = p.get(f"{name}.bn.weight", (cout,), "scale")
  beta = p.get(f"{name}.bn.bias", (cout,), "bias")
  mean = p.get(f"{name}.bn.running_mean", (cout,), "bias")
  var = p.get(f"{name}.bn.running_var", (cout,), "var")
  y = (y - mean) * (gamma * lax.rsqrt(var + eps)) + beta
  return jax.nn.relu(y)


def max_pool(x: jax.Array, window: Sequence[int], stride: Sequence[int],
             padding: str | Sequence[tuple[int, int]] = "VALID") -> jax.Array:
  """Max pooling over the spatial axes of channels-last x."""
  dims = (1,) + tuple(window) + (1,)
  strides = (1,) + tuple(stride) + (1,)
  pad = padding if isinstance(padding, str) else ((0, 0),) + tuple(padding) + ((0, 0),)
  return lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, pad)


def avg_pool(x: jax.Array, window: Sequence[int], stride: Sequence[int],
             padding: Sequence[tuple[int, int]] | str = "VALID",
             count_include_pad: bool = True) -> jax.Array:
  """Average pooling; with count_include_pad=False padded positions are not counted."""
  dims = (1,) + tuple(window) + (1,)
  strides = (1,) + tuple(stride) + (1,)
  pad = padding if isinstance(padding, str) else ((0, 0),) + tuple(padding) + ((0, 0),)
  total = lax.reduce_window(x, 0.0, lax.add, dims, strides, pad)
  if count_include_pad:
    return total / float(np.prod(window))
  ones = jnp.ones((1,) + x.shape[1:-1] + (1,), x.dtype)
  count = lax.reduce_window(ones, 0.0, lax.add, dims, strides, pad)
  return total / count


def load_safetensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of a local .safetensors file as float32 numpy arrays."""
  import os
  from safetensors.numpy import load_file
  if not os.path.exists(path):
    raise FileNotFoundError(f"feature network weights: no such file {path}")
  return {k: np.asarray(v, np.float32) for k, v in load_file(path).items()}


def save_safetensors(path: str, params: Mapping[str, np.ndarray]) -> None:
  """Writes a parameter dict as .safetensors (tests; exporting converted weights)."""
  from safetensors.numpy import save_file
  save_file({k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in params.items()}, path)
