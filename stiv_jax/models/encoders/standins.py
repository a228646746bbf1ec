"""Stand-in encoders for tests and the CPU demo. NOT learned models; named as such.

PixelSpaceVAE: a pixel-space "identity" latent (average-pool by the spatial factor, RGB copied
into the first channels, the rest zero); HashTextEncoder: a deterministic embedding of each
word from a hash of its text, so captions that share words share embeddings.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np


class PixelSpaceVAE:
  """Pixel-space stand-in VAE: average-pool frames; decode by nearest upsampling."""

  def __init__(self, spatial_factor: int = 8, latent_channels: int = 4):
    if latent_channels < 3:
      raise ValueError(f"vae.latent_channels: PixelSpaceVAE needs >= 3, got {latent_channels}")
    self.spatial_factor = int(spatial_factor)
    self.latent_channels = int(latent_channels)

  def encode(self, frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames, np.float32)
    if frames.ndim != 4 or frames.shape[-1] != 3:
      raise ValueError(f"PixelSpaceVAE.encode: expected frames [N, H, W, 3], got {frames.shape}")
    n, h, w, _ = frames.shape
    f = self.spatial_factor
    if h % f or w % f:
      raise ValueError(f"PixelSpaceVAE.encode: frame size {h}x{w} not divisible by {f}")
    pooled = frames.reshape(n, h // f, f, w // f, f, 3).mean(axis=(2, 4))
    out = np.zeros((n, h // f, w // f, self.latent_channels), np.float32)
    out[..., :3] = pooled
    return out

  def decode(self, latents: np.ndarray) -> np.ndarray:
    latents = np.asarray(latents, np.float32)
    f = self.spatial_factor
    rgb = np.clip(latents[..., :3], -1.0, 1.0)
    return np.repeat(np.repeat(rgb, f, axis=1), f, axis=2)


class HashTextEncoder:
  """Deterministic hashed word embeddings; pooled = mean of the real tokens.

  (A real causal encoder pools its last token; here that token is a constant <eos>.)
  """

  def __init__(self, dim: int = 64, max_length: int = 16):
    self.dim = int(dim)
    self.max_length = int(max_length)

  def _word_vector(self, word: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

  def encode_text(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b, L = len(captions), self.max_length
    tokens = np.zeros((b, L, self.dim), np.float32)
    mask = np.zeros((b, L), bool)
    pooled = np.zeros((b, self.dim), np.float32)
    for i, caption in enumerate(captions):
      words = (["<bos>"] + caption.lower().split())[: L - 1] + ["<eos>"]
      for j, word in enumerate(words):
        # Position mixed in weakly so word order matters, as in a real causal encoder.
        tokens[i, j] = self._word_vector(word) + 0.1 * self._word_vector(f"<pos{j}>")
      mask[i, : len(words)] = True
      pooled[i] = tokens[i, : len(words)].mean(axis=0)
    return tokens, mask, pooled
