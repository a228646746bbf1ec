"""Shared benchmark helpers: timing of jitted functions and the same-run matmul reference."""
from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp


def time_fn(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
  """Best wall time (s) of `fn()` over `repeats` runs after `warmup` runs; blocks on results."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return best


def matmul_flops_per_s(n: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
  """FLOP/s of a plain n x n x n matmul on the default device (the same-run reference)."""
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), dtype)
  b = jax.random.normal(kb, (n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  return 2.0 * n ** 3 / time_fn(lambda: f(a, b), repeats=repeats)
