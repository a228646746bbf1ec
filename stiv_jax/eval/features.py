"""FVD / FID: feature extraction with user-supplied local weights, then the Fréchet distance."""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from stiv_jax.eval import frechet, i3d, inception, netlib

NETS = {"i3d": i3d, "inception": inception}


@functools.lru_cache(maxsize=None)
def _jitted_apply(kind: str):
  """One jitted forward per network kind (all outputs), shared by every FeatureNet."""
  return jax.jit(NETS[kind].apply)


@functools.lru_cache(maxsize=None)
def _schema(kind: str) -> dict[str, tuple[int, ...]]:
  """Parameter names and shapes a network expects."""
  return {k: v.shape for k, v in NETS[kind].init_params(0).items()}


@dataclasses.dataclass
class FeatureNet:
  """A jitted feature network ('i3d' for FVD, 'inception' for FID) over uint8 pixels."""

  kind: str
  params: Mapping[str, np.ndarray]
  feature: str = "pool"        # i3d: 'logits' (400, as in the FVD paper) or 'pool' (1024)
  batch_size: int = 8
  size: int | None = None      # input resolution (None: the net's native 224 / 299)

  def __post_init__(self):
    if self.kind not in NETS:
      raise ValueError(f"feature net: unknown kind {self.kind!r}; expected one of {sorted(NETS)}")
    if self.kind == "inception" and self.feature != "pool":
      raise ValueError(f"feature net: inception has only the 'pool' feature, got {self.feature!r}")
    if self.feature not in ("pool", "logits"):
      raise ValueError(f"feature net: unknown feature {self.feature!r}; expected pool or logits")
    expected = _schema(self.kind)
    for name, shape in expected.items():  # validate the whole file before any compile
      if name not in self.params:
        raise KeyError(f"{self.kind} weights: missing parameter {name!r} (shape {shape})")
      if tuple(self.params[name].shape) != shape:
        raise ValueError(f"{self.kind} weights: {name!r} has shape "
                         f"{tuple(self.params[name].shape)}, expected {shape}")
    self._params = {k: jnp.asarray(self.params[k]) for k in expected}

  @classmethod
  def from_safetensors(cls, kind: str, path: str, **kwargs) -> "FeatureNet":
    """Loads user-supplied weights from a local .safetensors file (PyTorch names)."""
    return cls(kind, netlib.load_safetensors(path), **kwargs)

  @classmethod
  def random(cls, kind: str, seed: int = 0, **kwargs) -> "FeatureNet":
    """Random weights: for shape tests only, NOT a meaningful metric."""
    return cls(kind, NETS[kind].init_params(seed), **kwargs)

  def __call__(self, videos: np.ndarray) -> np.ndarray:
    """uint8 videos [N, T, H, W, 3] -> features [N, D] (i3d) or [N * T, D] (inception)."""
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[-1] != 3:
      raise ValueError(f"feature net: expected uint8 videos [N, T, H, W, 3], got {videos.shape}")
    net = NETS[self.kind]
    size = self.size or net.INPUT_SIZE
    items = videos if self.kind == "i3d" else videos.reshape((-1,) + videos.shape[2:])
    out = []
    for lo in range(0, items.shape[0], self.batch_size):
      x = net.preprocess(items[lo:lo + self.batch_size], size)
      out.append(np.asarray(_jitted_apply(self.kind)(self._params, jnp.asarray(x))[self.feature]))
    return np.concatenate(out).astype(np.float64)


def fvd(net: FeatureNet, real: np.ndarray, fake: np.ndarray) -> float:
  """Fréchet video distance between uint8 video sets [N, T, H, W, 3] under an I3D net."""
  return frechet.frechet_distance_from_features(net(real), net(fake))


def fid(net: FeatureNet, real: np.ndarray, fake: np.ndarray) -> float:
  """Fréchet Inception distance over all frames of uint8 video sets under an Inception net."""
  return frechet.frechet_distance_from_features(net(real), net(fake))
