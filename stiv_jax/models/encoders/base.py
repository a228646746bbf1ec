"""Encoder interfaces and the factories that build them from a config section."""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class VideoAutoencoder(Protocol):
  """A frozen per-frame image autoencoder: frames in [-1, 1] <-> scaled latents."""

  spatial_factor: int
  latent_channels: int

  def encode(self, frames: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] float in [-1, 1] -> [N, H/f, W/f, C] scaled latents."""

  def decode(self, latents: np.ndarray) -> np.ndarray:
    """[N, h, w, C] scaled latents -> [N, h*f, w*f, 3] float in [-1, 1]."""


@runtime_checkable
class TextEncoder(Protocol):
  """A frozen text encoder: captions -> token embeddings, padding mask, pooled embedding."""

  dim: int
  max_length: int

  def encode_text(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (tokens [B, L, D] float32, mask [B, L] bool, pooled [B, D] float32)."""


def build_vae(cfg) -> VideoAutoencoder:
  """Builds the VAE named by `cfg.kind` ('pixel' stand-in or 'kl' from local weights)."""
  kind = cfg.get("kind", "pixel")
  if kind == "pixel":
    from stiv_jax.models.encoders.standins import PixelSpaceVAE
    return PixelSpaceVAE(spatial_factor=cfg.get("spatial_factor", 8),
                         latent_channels=cfg.get("latent_channels", 4))
  if kind == "kl":
    from stiv_jax.models.encoders import vae as vae_lib  # real AutoencoderKL (encoders issue)
    return vae_lib.load_vae(cfg)
  raise ValueError(f"vae.kind: unknown encoder kind {kind!r}; expected 'pixel' or 'kl'")


def build_text_encoder(cfg) -> TextEncoder:
  """Builds the text encoder named by `cfg.kind` ('hash' stand-in or 'clip' from local weights)."""
  kind = cfg.get("kind", "hash")
  if kind == "hash":
    from stiv_jax.models.encoders.standins import HashTextEncoder
    return HashTextEncoder(dim=cfg.get("dim", 64), max_length=cfg.get("max_length", 16))
  if kind == "clip":
    from stiv_jax.models.encoders import text as text_lib  # real CLIP + T5 tokenizer
    return text_lib.load_text_encoder(cfg)
  raise ValueError(f"text.kind: unknown encoder kind {kind!r}; expected 'hash' or 'clip'")
