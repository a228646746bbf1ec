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
  """Pixel-space stand-in VAE: average-pool frames; decode by nearest upsampling.

  Latents are (pooled RGB - shift_factor) * scaling_factor (1 and 0 by default), like a real
  VAE's scaled latents, so the latent contract treats both kinds alike.
  """

  def __init__(self, spatial_factor: int = 8, latent_channels: int = 4,
               scaling_factor: float = 1.0, shift_factor: float = 0.0):
    if latent_channels < 3:
      raise ValueError(f"vae.latent_channels: PixelSpaceVAE needs >= 3, got {latent_channels}")
    if spatial_factor < 1:
      raise ValueError(f"vae.spatial_factor: must be >= 1, got {spatial_factor}")
    if not scaling_factor or scaling_factor <= 0:
      raise ValueError(f"vae.scaling_factor: must be > 0, got {scaling_factor}")
    self.spatial_factor = int(spatial_factor)
    self.latent_channels = int(latent_channels)
    self.scaling_factor = float(scaling_factor)
    self.shift_factor = float(shift_factor)

  def identity(self) -> dict:
    """The latent-contract record of this VAE."""
    return {"kind": "pixel", "spatial_factor": self.spatial_factor,
            "latent_channels": self.latent_channels, "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor}

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
    out[..., :3] = (pooled - self.shift_factor) * self.scaling_factor
    return out

  def decode(self, latents: np.ndarray) -> np.ndarray:
    latents = np.asarray(latents, np.float32)
    f = self.spatial_factor
    rgb = np.clip(latents[..., :3] / self.scaling_factor + self.shift_factor, -1.0, 1.0)
    return np.repeat(np.repeat(rgb, f, axis=1), f, axis=2)


class HashTextEncoder:
  """Deterministic hashed word embeddings: <bos> words <eos>; pooled = the mean of the real
  tokens by default ('eos' takes the <eos> token, which a real causal encoder would pool).
  """

  def __init__(self, dim: int = 64, max_length: int = 16, pooling: str = "mean"):
    if dim < 1 or max_length < 2:
      raise ValueError(f"text: hash encoder needs dim >= 1 and max_length >= 2, got {dim}, "
                       f"{max_length}")
    if pooling not in ("mean", "eos"):
      raise ValueError(f"text.pooling: unknown pooling {pooling!r}; expected 'eos' or 'mean'")
    self.dim = int(dim)
    self.max_length = int(max_length)
    self.pooling = pooling

  def identity(self) -> dict:
    """The latent-contract record of this text encoder (no weights, no tokenizer)."""
    return {"kind": "hash", "dim": self.dim, "max_length": self.max_length,
            "pooling": self.pooling, "weights": None, "tokenizer": None}

  @staticmethod
  def _words(caption: str) -> list[str]:
    return ["<bos>"] + caption.lower().split() + ["<eos>"]

  def token_lengths(self, captions: Sequence[str]) -> list[int]:
    """Untruncated token counts with <bos> and <eos>."""
    return [len(self._words(c)) for c in captions]

  def _word_vector(self, word: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

  def encode_text(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b, L = len(captions), self.max_length
    tokens = np.zeros((b, L, self.dim), np.float32)
    mask = np.zeros((b, L), bool)
    pooled = np.zeros((b, self.dim), np.float32)
    for i, caption in enumerate(captions):
      words = self._words(caption)
      words = words[: L - 1] + ["<eos>"] if len(words) > L else words
      for j, word in enumerate(words):
        # Position mixed in weakly so word order matters, as in a real causal encoder.
        tokens[i, j] = self._word_vector(word) + 0.1 * self._word_vector(f"<pos{j}>")
      mask[i, : len(words)] = True
      pooled[i] = (tokens[i, : len(words)].mean(axis=0) if self.pooling == "mean"
                   else tokens[i, len(words) - 1])
    return tokens, mask, pooled
