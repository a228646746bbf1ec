"""Inception-v3 in JAX as used for FID (the pytorch-fid / TF 2015-12-05 graph variant).

Parameter names follow torchvision / pytorch-fid (`Conv2d_1a_3x3.conv.weight`,
`Mixed_7c.branch_pool.bn.running_mean`, ...), so the FID Inception weights converted to
.safetensors load as they are. FID variants kept: average pools that do not count padding, and
a max pool in the last block's pool branch. Features: the 2048-d pool3 activations.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from stiv_jax.eval import netlib

INPUT_SIZE = 299


def _c(p, name, x, cout, k, s=1, pad=(0, 0)):
  k = (k, k) if isinstance(k, int) else k
  padding = ((pad[0], pad[0]), (pad[1], pad[1]))
  return netlib.conv_bn_relu(p, name, x, x.shape[-1], cout, k, (s, s), padding)


def _avg3(x):
  return netlib.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _block_a(p, n, x, pool_features):
  b1 = _c(p, f"{n}.branch1x1", x, 64, 1)
  b5 = _c(p, f"{n}.branch5x5_2", _c(p, f"{n}.branch5x5_1", x, 48, 1), 64, 5, pad=(2, 2))
  b3 = _c(p, f"{n}.branch3x3dbl_1", x, 64, 1)
  b3 = _c(p, f"{n}.branch3x3dbl_2", b3, 96, 3, pad=(1, 1))
  b3 = _c(p, f"{n}.branch3x3dbl_3", b3, 96, 3, pad=(1, 1))
  bp = _c(p, f"{n}.branch_pool", _avg3(x), pool_features, 1)
  return jnp.concatenate([b1, b5, b3, bp], -1)


def _block_b(p, n, x):
  b3 = _c(p, f"{n}.branch3x3", x, 384, 3, s=2)
  bd = _c(p, f"{n}.branch3x3dbl_1", x, 64, 1)
  bd = _c(p, f"{n}.branch3x3dbl_2", bd, 96, 3, pad=(1, 1))
  bd = _c(p, f"{n}.branch3x3dbl_3", bd, 96, 3, s=2)
  return jnp.concatenate([b3, bd, netlib.max_pool(x, (3, 3), (2, 2))], -1)


def _block_c(p, n, x, c7):
  b1 = _c(p, f"{n}.branch1x1", x, 192, 1)
  b7 = _c(p, f"{n}.branch7x7_1", x, c7, 1)
  b7 = _c(p, f"{n}.branch7x7_2", b7, c7, (1, 7), pad=(0, 3))
  b7 = _c(p, f"{n}.branch7x7_3", b7, 192, (7, 1), pad=(3, 0))
  bd = _c(p, f"{n}.branch7x7dbl_1", x, c7, 1)
  bd = _c(p, f"{n}.branch7x7dbl_2", bd, c7, (7, 1), pad=(3, 0))
  bd = _c(p, f"{n}.branch7x7dbl_3", bd, c7, (1, 7), pad=(0, 3))
  bd = _c(p, f"{n}.branch7x7dbl_4", bd, c7, (7, 1), pad=(3, 0))
  bd = _c(p, f"{n}.branch7x7dbl_5", bd, 192, (1, 7), pad=(0, 3))
  bp = _c(p, f"{n}.branch_pool", _avg3(x), 192, 1)
  return jnp.concatenate([b1, b7, bd, bp], -1)


def _block_d(p, n, x):
  b3 = _c(p, f"{n}.branch3x3_2", _c(p, f"{n}.branch3x3_1", x, 192, 1), 320, 3, s=2)
  b7 = _c(p, f"{n}.branch7x7x3_1", x, 192, 1)
  b7 = _c(p, f"{n}.branch7x7x3_2", b7, 192, (1, 7), pad=(0, 3))
  b7 = _c(p, f"{n}.branch7x7x3_3", b7, 192, (7, 1), pad=(3, 0))
  b7 = _c(p, f"{n}.branch7x7x3_4", b7, 192, 3, s=2)
  return jnp.concatenate([b3, b7, netlib.max_pool(x, (3, 3), (2, 2))], -1)


def _block_e(p, n, x, max_pool_branch):
  b1 = _c(p, f"{n}.branch1x1", x, 320, 1)
  b3 = _c(p, f"{n}.branch3x3_1", x, 384, 1)
  b3 = jnp.concatenate([_c(p, f"{n}.branch3x3_2a", b3, 384, (1, 3), pad=(0, 1)),
                        _c(p, f"{n}.branch3x3_2b", b3, 384, (3, 1), pad=(1, 0))], -1)
  bd = _c(p, f"{n}.branch3x3dbl_1", x, 448, 1)
  bd = _c(p, f"{n}.branch3x3dbl_2", bd, 384, 3, pad=(1, 1))
  bd = jnp.concatenate([_c(p, f"{n}.branch3x3dbl_3a", bd, 384, (1, 3), pad=(0, 1)),
                        _c(p, f"{n}.branch3x3dbl_3b", bd, 384, (3, 1), pad=(1, 0))], -1)
  pooled = (netlib.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1))) if max_pool_branch
            else _avg3(x))
  bp = _c(p, f"{n}.branch_pool", pooled, 192, 1)
  return jnp.concatenate([b1, b3, bd, bp], -1)


def forward(p: netlib.ParamSource, images: jax.Array) -> dict[str, jax.Array]:
  """images [N, H, W, 3] in [-1, 1] -> {'pool': [N, 2048]}."""
  x = _c(p, "Conv2d_1a_3x3", images, 32, 3, s=2)
  x = _c(p, "Conv2d_2a_3x3", x, 32, 3)
  x = _c(p, "Conv2d_2b_3x3", x, 64, 3, pad=(1, 1))
  x = netlib.max_pool(x, (3, 3), (2, 2))
  x = _c(p, "Conv2d_3b_1x1", x, 80, 1)
  x = _c(p, "Conv2d_4a_3x3", x, 192, 3)
  x = netlib.max_pool(x, (3, 3), (2, 2))
  x = _block_a(p, "Mixed_5b", x, 32)
  x = _block_a(p, "Mixed_5c", x, 64)
  x = _block_a(p, "Mixed_5d", x, 64)
  x = _block_b(p, "Mixed_6a", x)
  for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
    x = _block_c(p, name, x, c7)
  x = _block_d(p, "Mixed_7a", x)
  x = _block_e(p, "Mixed_7b", x, max_pool_branch=False)
  x = _block_e(p, "Mixed_7c", x, max_pool_branch=True)
  return {"pool": x.mean(axis=(1, 2))}


def init_params(seed: int = 0) -> dict[str, np.ndarray]:
  """Random parameters with the real names and shapes (tests; the weights' schema)."""
  p = netlib.ParamSource(None, seed)
  jax.eval_shape(lambda v: forward(p, v), jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32))
  return p.created


def preprocess(images_uint8: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
  """uint8 images [N, H, W, 3] -> float [-1, 1] at size x size (bilinear)."""
  v = jnp.asarray(images_uint8, jnp.float32) / 127.5 - 1.0
  return np.asarray(jax.image.resize(v, (v.shape[0], size, size, 3), "bilinear"))


def apply(params: Mapping[str, jax.Array], images: jax.Array) -> dict[str, jax.Array]:
  """Pure forward with a parameter dict (jit-friendly)."""
  return forward(netlib.ParamSource(params), images)
