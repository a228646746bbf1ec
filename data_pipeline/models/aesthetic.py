"""LAION-style aesthetic score: an MLP on L2-normalised CLIP image embeddings.

The improved-aesthetic-predictor layout: linear layers `layers.{i}.weight/bias` (dropout
between them at training time, no activations), applied to the normalised `image_embeds` of
a CLIP vision tower with projection (stiv_jax/models/encoders/clip_vision.py). The MLP's
sizes come from its weight file (.safetensors, or a torch `.pth` read without torch).
Clip score = mean over the sampled frames.
"""
from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from stiv_jax.models.encoders import clip_vision
from stiv_jax.models.encoders import weights as W


def read_mlp(path: str) -> list[tuple[np.ndarray, np.ndarray]]:
  """[(weight [in, out], bias [out])] of the linear layers in `path`, in layer order."""
  if not os.path.isfile(path):
    raise ValueError(f"features.aesthetic_mlp_path: {path!r} is not a file")
  if path.endswith(".safetensors"):
    tensors = W.read_safetensors([path])
  else:
    from data_pipeline.models import torch_pickle
    tensors = torch_pickle.load_state_dict(path)
  found = {}
  for key, value in tensors.items():
    m = re.fullmatch(r"(?:.*\.)?(\d+)\.(weight|bias)", key)
    if m:
      found.setdefault(int(m.group(1)), {})[m.group(2)] = np.asarray(value, np.float32)
  if not found:
    raise ValueError(f"{path}: no linear layers ('layers.N.weight') found")
  layers = []
  for i in sorted(found):
    if "weight" not in found[i] or found[i]["weight"].ndim != 2:
      raise ValueError(f"{path}: layer {i} has no 2D weight")
    w = found[i]["weight"].T
    b = found[i].get("bias", np.zeros((w.shape[1],), np.float32))
    if layers and layers[-1][0].shape[1] != w.shape[0]:
      raise ValueError(f"{path}: layer {i} takes {w.shape[0]} inputs, the previous layer gives "
                       f"{layers[-1][0].shape[1]}")
    layers.append((w, b))
  if layers[-1][0].shape[1] != 1:
    raise ValueError(f"{path}: the last layer gives {layers[-1][0].shape[1]} outputs, not 1")
  return layers


def mlp_score(embeds: jax.Array, layers) -> jax.Array:
  """Pure core: MLP of L2-normalised embeddings [N, D] -> scores [N]."""
  x = embeds / jnp.maximum(jnp.linalg.norm(embeds, axis=-1, keepdims=True), 1e-12)
  for w, b in layers:
    x = x @ w + b
  return x[:, 0]


class LaionAesthetic:
  """RGB uint8 frames [N, H, W, 3] -> mean aesthetic score (CLIP tower + MLP, one jit)."""

  name = "laion_mlp"

  def __init__(self, clip_path: str, mlp_path: str):
    if not clip_path or not os.path.isdir(clip_path):
      raise ValueError(f"features.aesthetic_clip_path: {clip_path!r} is not a local "
                       "CLIPVisionModelWithProjection folder")
    tower = clip_vision.load_clip_vision_model(clip_path)
    if tower.visual_projection is None:
      raise ValueError(f"{clip_path}: the CLIP checkpoint has no visual_projection; the "
                       "aesthetic MLP reads image embeddings (CLIPVisionModelWithProjection)")
    layers = read_mlp(mlp_path)
    if layers[0][0].shape[0] != tower.cfg.projection_dim:
      raise ValueError(f"{mlp_path}: the MLP takes {layers[0][0].shape[0]}-d embeddings, the "
                       f"CLIP tower gives {tower.cfg.projection_dim}")
    self.image_size = tower.cfg.image_size
    layers = [(jnp.asarray(w), jnp.asarray(b)) for w, b in layers]
    from flax import nnx
    graphdef, state = nnx.split(tower)

    @jax.jit
    def score(state, pixels):
      _, embeds = nnx.merge(graphdef, state)(pixels)
      return mlp_score(embeds, layers)

    self._score, self._state = score, state

  def scores(self, frames_rgb: np.ndarray) -> np.ndarray:
    """Per-frame scores."""
    pixels = clip_vision.preprocess(frames_rgb, self.image_size)
    return np.asarray(self._score(self._state, jnp.asarray(pixels)))

  def __call__(self, frames_rgb: np.ndarray) -> float:
    return float(np.mean(self.scores(frames_rgb)))
