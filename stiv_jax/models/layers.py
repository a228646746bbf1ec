"""Basic layers with logical axis names on every parameter and a configurable compute dtype."""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Shape = int | Sequence[int]


def as_tuple(shape: Shape) -> tuple[int, ...]:
  return (shape,) if isinstance(shape, int) else tuple(shape)


def param(rngs: nnx.Rngs, init: Callable, shape: tuple[int, ...], axes: tuple[str | None, ...],
          dtype=jnp.float32) -> nnx.Param:
  """An nnx.Param carrying logical axis names (`out_sharding` metadata, mapped by sharding rules)."""
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {axes} do not match parameter shape {shape}")
  return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=tuple(axes),
                   eager_sharding=False)


class Dense(nnx.Module):
  """Dense layer over several input/output dims: y = einsum(x, W) + b, W: in_shape + out_shape."""

  def __init__(self, in_shape: Shape, out_shape: Shape, axes: tuple[str | None, ...], *,
               rngs: nnx.Rngs, use_bias: bool = True, dtype=jnp.float32,
               kernel_init: Callable | None = None, param_dtype=jnp.float32):
    self.in_shape, self.out_shape = as_tuple(in_shape), as_tuple(out_shape)
    fan_in = 1
    for d in self.in_shape:
      fan_in *= d
    if kernel_init is None:
      kernel_init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                         in_axis=tuple(range(len(self.in_shape))),
                                                         out_axis=tuple(range(len(self.in_shape), len(self.in_shape) + len(self.out_shape))))
    self.kernel = param(rngs, kernel_init, self.in_shape + self.out_shape, axes, param_dtype)
    self.bias = (param(rngs, nnx.initializers.zeros, self.out_shape, axes[len(self.in_shape):],
                       param_dtype) if use_bias else None)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    n_in = len(self.in_shape)
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    y = jax.lax.dot_general(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                            (contract, ((), ())))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Parameter-free LayerNorm, computed in float32, returned in the input dtype."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class RMSNorm(nnx.Module):
  """RMSNorm with a learned scale over the last dim (QK-norm, per head)."""

  def __init__(self, dim: int, axis_name: str | None, *, rngs: nnx.Rngs, eps: float = 1e-6):
    self.scale = param(rngs, nnx.initializers.ones, (dim,), (axis_name,))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(x.dtype)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  return {"gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
          "gelu": lambda x: jax.nn.gelu(x, approximate=False),
          "silu": jax.nn.silu}[name]


def dtype_of(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]
