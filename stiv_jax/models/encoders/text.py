"""The project's text encoders: a tokenizer -> a frozen transformer tower (CLIP or T5), jitted.

`text.kind='clip'` is a CLIP-style causal tower with its own BPE tokenizer, or the paper's
pairing (a T5 SentencePiece tokenizer, `text.tokenizer=PATH.model`); `text.kind='t5'` is a T5
v1.1 / mT5 / UMT5 encoder with its SentencePiece tokenizer. One `encode_text(captions)` for
preprocessing and sampling alike; the empty prompt (classifier-free guidance's null text) is
computed once and cached. Pooling ('eos' | 'mean') is a pure function inside the jitted call.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stiv_jax.models.encoders import clip_text
from stiv_jax.models.encoders import identity as identity_lib
from stiv_jax.models.encoders import t5 as t5_lib
from stiv_jax.models.encoders import tokenizer as tok_lib
from stiv_jax.models.encoders.vae import run_chunked

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# kind -> loader of the tower: (path, config path or None) -> an NNX model with `width`,
# `vocab_size`, `max_positions` and `__call__(ids, mask, dtype) -> hidden [B, L, D]`.
TOWERS = {"clip": clip_text.load_clip_text_model, "t5": t5_lib.load_t5_encoder_model}


def pool_tokens(hidden: jax.Array, mask: jax.Array, pooling: str) -> jax.Array:
  """[B, L, D] states and [B, L] mask -> [B, D] float32: 'eos' = the last real token (the EOS
  with right padding), 'mean' = the mean over real tokens."""
  hidden = hidden.astype(jnp.float32)
  if pooling == "eos":
    last = jnp.maximum(mask.sum(axis=1) - 1, 0)
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
  if pooling == "mean":
    m = mask.astype(jnp.float32)[..., None]
    return (hidden * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)
  raise ValueError(f"text.pooling: unknown pooling {pooling!r}; expected 'eos' or 'mean'")


class TowerTextEncoder:
  """TextEncoder: captions -> (tokens [B, L, D] f32, mask [B, L] bool, pooled [B, D] f32)."""

  def __init__(self, model: nnx.Module, tokenizer: tok_lib.CaptionTokenizer, *, kind: str,
               pooling: str, batch_size: int, dtype: str, weights: dict | None = None,
               model_path: str = ""):
    if dtype not in _DTYPES:
      raise ValueError(f"text.dtype: {dtype!r} not supported; expected one of {list(_DTYPES)}")
    if batch_size < 1:
      raise ValueError(f"text.batch_size: must be >= 1, got {batch_size}")
    if pooling not in ("eos", "mean"):
      raise ValueError(f"text.pooling: unknown pooling {pooling!r}; expected 'eos' or 'mean'")
    if tokenizer.vocab_size > model.vocab_size:
      raise ValueError(f"text.tokenizer: the tokenizer at {tokenizer.path} has "
                       f"{tokenizer.vocab_size} tokens but the encoder at {model_path} has "
                       f"vocab_size {model.vocab_size}; use the tokenizer the encoder was "
                       "trained with")
    if model.max_positions is not None and tokenizer.max_length > model.max_positions:
      raise ValueError(f"text.max_length: {tokenizer.max_length} exceeds the encoder's "
                       f"max_position_embeddings {model.max_positions} ({model_path})")
    self.kind = kind
    self.tokenizer = tokenizer
    self.dim = int(model.width)
    self.max_length = tokenizer.max_length
    self.pooling = pooling
    self.batch_size = int(batch_size)
    self.dtype_name = dtype
    self.dtype = _DTYPES[dtype]
    self.weights = weights  # identity.weights_identity record of the files it was loaded from
    graphdef, state = nnx.split(model)
    self._state = jax.tree.map(lambda a: a.astype(self.dtype), state)
    compute = self.dtype

    def fn(s, ids, mask):
      hidden = nnx.merge(graphdef, s)(ids, mask, compute)
      return hidden.astype(jnp.float32), pool_tokens(hidden, mask, pooling)

    self._jit = jax.jit(fn)
    self._empty = None

  def identity(self) -> dict[str, Any]:
    """The latent-contract record: kind, sizes, pooling, weights' and tokenizer's identity."""
    return {"kind": self.kind, "dim": self.dim, "max_length": self.max_length,
            "pooling": self.pooling, "weights": self.weights,
            "tokenizer": self.tokenizer.identity()}

  def token_lengths(self, captions: Sequence[str]) -> list[int]:
    """Untruncated token counts with special tokens (> max_length: the caption is cut)."""
    return self.tokenizer.token_lengths(captions)

  def encode_ids(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [B, L] and mask [B, L] -> (hidden [B, L, D], pooled [B, D]), float32."""
    ids, mask = np.asarray(ids), np.asarray(mask, bool)
    if ids.ndim != 2 or ids.shape != mask.shape or ids.shape[1] != self.max_length:
      raise ValueError(f"encode_ids: expected ids and mask [B, {self.max_length}], got "
                       f"{ids.shape} and {mask.shape}")
    if ids.shape[0] == 0:
      raise ValueError("encode_ids: empty batch (no captions)")
    if not mask[:, 0].all():
      raise ValueError("encode_ids: every row needs at least one real token (mask[:, 0] must "
                       "be True; padding is on the right)")
    return run_chunked(lambda i, m: self._jit(self._state, i, m),
                       [ids.astype(np.int32), mask], self.batch_size)

  def encode_text(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (tokens [B, L, D] f32, mask [B, L] bool, pooled [B, D] f32)."""
    ids, mask = self.tokenizer(captions)
    tokens, pooled = self.encode_ids(ids, mask)
    return tokens, mask, pooled

  def empty_prompt(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The empty caption's (tokens [1, L, D], mask [1, L], pooled [1, D]); cached (CFG null)."""
    if self._empty is None:
      self._empty = self.encode_text([""])
    return tuple(a.copy() for a in self._empty)


def load_text_encoder(cfg) -> TowerTextEncoder:
  """A 'clip' or 't5' encoder from a complete `text` section (config_schema.text_config; fields
  kind, path, config, tokenizer, max_length, pad_id, pooling, batch_size, dtype). The pooling
  must be resolved (not None): base.build_text_encoder fills the kind's default."""
  kind = cfg.kind
  if kind not in TOWERS:
    raise ValueError(f"text.kind: {kind!r} has no tower; expected one of {sorted(TOWERS)}")
  if not cfg.path:
    raise ValueError(f"text.path: required for text.kind={kind!r} (transformers folder or "
                     ".safetensors)")
  config_path = cfg.config or None
  model = TOWERS[kind](cfg.path, config_path)
  tokenizer = tok_lib.load_tokenizer(cfg.tokenizer, cfg.path, kind, int(cfg.max_length),
                                     pad_id=cfg.pad_id)
  weights = identity_lib.weights_identity(cfg.path, [config_path] if config_path else [])
  return TowerTextEncoder(model, tokenizer, kind=kind, pooling=cfg.pooling,
                          batch_size=int(cfg.batch_size), dtype=cfg.dtype, weights=weights,
                          model_path=cfg.path)
