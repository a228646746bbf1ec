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

  def token_lengths(self, captions: Sequence[str]) -> list[int]:
    """Untruncated token counts with special tokens (> max_length: the caption is cut)."""

  def identity(self) -> dict:
    """The latent-contract record (JSON-able; stored in the shard manifest)."""


def vae_section(cfg) -> "ml_collections.ConfigDict":
  """A complete `vae` section from a partial one (config_schema.complete_section)."""
  from stiv_jax import config_schema
  return config_schema.complete_section("vae", cfg)


def build_vae(cfg) -> VideoAutoencoder:
  """Builds the VAE of a `vae` section: the 'pixel' stand-in or 'kl' from local weights; sizes
  the section sets (spatial_factor, latent_channels) must equal the built VAE's."""
  cfg = vae_section(cfg)
  if cfg.kind == "pixel":
    from stiv_jax.models.encoders.standins import PixelSpaceVAE
    given = {k: cfg[k] for k in ("spatial_factor", "latent_channels", "scaling_factor",
                                 "shift_factor") if cfg[k] is not None}
    vae = PixelSpaceVAE(**given)
  else:
    from stiv_jax.models.encoders import vae as vae_lib
    vae = vae_lib.load_vae(cfg)
  for field in ("spatial_factor", "latent_channels"):
    if cfg[field] is not None and int(getattr(vae, field)) != int(cfg[field]):
      raise ValueError(f"vae.{field}: the config says {cfg[field]} but the VAE at "
                       f"{cfg.path!r} has {getattr(vae, field)}; set --config.vae.{field}="
                       f"{getattr(vae, field)}")
  return vae


def text_section(cfg) -> "ml_collections.ConfigDict":
  """A complete `text` section from a partial one (config_schema.complete_section)."""
  from stiv_jax import config_schema
  return config_schema.complete_section("text", cfg)


def build_text_encoder(cfg) -> TextEncoder:
  """Builds the text encoder of a `text` section: the 'hash' stand-in, or 'clip' / 't5' from
  local weights; the built encoder's width must equal `text.dim`."""
  from stiv_jax import config_schema
  cfg = text_section(cfg)
  if cfg.pooling is None:
    cfg.pooling = config_schema.TEXT_DEFAULT_POOLING[cfg.kind]
  if cfg.pooling not in config_schema.TEXT_POOLING:
    raise ValueError(f"text.pooling: unknown pooling {cfg.pooling!r}; expected one of "
                     f"{list(config_schema.TEXT_POOLING)} or None (the kind's default)")
  if cfg.kind == "hash":
    from stiv_jax.models.encoders.standins import HashTextEncoder
    return HashTextEncoder(dim=int(cfg.dim), max_length=int(cfg.max_length),
                           pooling=cfg.pooling)
  from stiv_jax.models.encoders import text as text_lib
  encoder = text_lib.load_text_encoder(cfg)
  if encoder.dim != int(cfg.dim):
    raise ValueError(f"text.dim: the config says {cfg.dim} but the encoder at {cfg.path} has "
                     f"width {encoder.dim}; set --config.text.dim={encoder.dim} and "
                     f"--config.model.text_dim={encoder.dim}")
  return encoder
