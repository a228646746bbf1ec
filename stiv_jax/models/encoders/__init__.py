"""Frozen encoders: per-frame VAE and text encoder (plus stand-ins for tests and the demo)."""
from stiv_jax.models.encoders.base import TextEncoder, VideoAutoencoder, build_text_encoder, build_vae

__all__ = ["TextEncoder", "VideoAutoencoder", "build_text_encoder", "build_vae"]
