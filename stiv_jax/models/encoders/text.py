"""The project's text encoder: T5 SentencePiece tokenizer -> frozen CLIP text tower, jitted.

One `encode_text(captions)` for preprocessing and sampling alike; the empty-prompt embedding
(classifier-free guidance's null text) is computed once and cached.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stiv_jax.models.encoders import clip_text
from stiv_jax.models.encoders import tokenizer as tok_lib
from stiv_jax.models.encoders import weights as W
from stiv_jax.models.encoders.vae import run_chunked

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class CLIPTextEncoder:
  """TextEncoder: captions -> (tokens [B, L, D] f32, mask [B, L] bool, pooled [B, D] f32)."""

  def __init__(self, model: clip_text.CLIPTextModel, tokenizer: tok_lib.SentencePieceTokenizer,
               *, batch_size: int = 16, dtype: str = "float32"):
    cfg = model.cfg
    if dtype not in _DTYPES:
      raise ValueError(f"text.dtype: {dtype!r} not supported; expected one of {list(_DTYPES)}")
    if batch_size < 1:
      raise ValueError(f"text.batch_size: must be >= 1, got {batch_size}")
    if tokenizer.vocab_size > cfg.vocab_size:
      raise ValueError(f"text: tokenizer {tokenizer.path} has {tokenizer.vocab_size} pieces but "
                       f"the encoder's vocab_size is {cfg.vocab_size}")
    if tokenizer.max_length > cfg.max_position_embeddings:
      raise ValueError(f"text.max_length: {tokenizer.max_length} exceeds the encoder's "
                       f"max_position_embeddings {cfg.max_position_embeddings}")
    self.tokenizer = tokenizer
    self.dim = cfg.hidden_size
    self.max_length = tokenizer.max_length
    self.batch_size = int(batch_size)
    self.dtype = _DTYPES[dtype]
    graphdef, state = nnx.split(model)
    self._state = jax.tree.map(lambda a: a.astype(self.dtype), state)
    compute = self.dtype

    def fn(s, ids, mask):
      hidden, pooled = nnx.merge(graphdef, s)(ids, mask, compute)
      return hidden.astype(jnp.float32), pooled.astype(jnp.float32)

    self._jit = jax.jit(fn)
    self._empty = None

  def encode_ids(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [B, L] and mask [B, L] -> (hidden [B, L, D], pooled [B, D]), float32."""
    ids, mask = np.asarray(ids), np.asarray(mask, bool)
    if ids.ndim != 2 or ids.shape != mask.shape or ids.shape[1] != self.max_length:
      raise ValueError(f"CLIPTextEncoder.encode_ids: expected ids and mask [B, {self.max_length}],"
                       f" got {ids.shape} and {mask.shape}")
    if not mask[:, 0].all():
      raise ValueError("CLIPTextEncoder.encode_ids: every row needs at least one real token "
                       "(mask[:, 0] must be True; padding is on the right)")
    if ids.shape[0] == 0:
      raise ValueError("CLIPTextEncoder.encode_ids: empty batch (no captions)")
    return run_chunked(lambda i, m: self._jit(self._state, i, m),
                       [ids.astype(np.int32), mask], self.batch_size)

  def encode_text(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (tokens [B, L, D] f32, mask [B, L] bool, pooled [B, D] f32 at the EOS token)."""
    ids, mask = self.tokenizer(captions)
    tokens, pooled = self.encode_ids(ids, mask)
    return tokens, mask, pooled

  def empty_prompt(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The empty caption's (tokens [1, L, D], mask [1, L], pooled [1, D]); cached (CFG null)."""
    if self._empty is None:
      self._empty = self.encode_text([""])
    return tuple(a.copy() for a in self._empty)


def load_text_encoder(cfg) -> CLIPTextEncoder:
  """Factory for `text.kind == 'clip'`: fields path (HF folder or .safetensors), config,
  tokenizer (.model), max_length, pad_id (None = the tokenizer's), batch_size, dtype."""
  path = W.cfg_get(cfg, "path")
  if not path:
    raise ValueError("text.path: required for text.kind='clip' (HF folder or .safetensors)")
  tok_path = W.cfg_get(cfg, "tokenizer")
  if not tok_path:
    raise ValueError("text.tokenizer: required for text.kind='clip' (SentencePiece .model)")
  model = clip_text.load_clip_text_model(path, W.cfg_get(cfg, "config"))
  tokenizer = tok_lib.SentencePieceTokenizer(
      tok_path, int(W.cfg_get(cfg, "max_length", 77)), pad_id=W.cfg_get(cfg, "pad_id"))
  return CLIPTextEncoder(model, tokenizer, batch_size=int(W.cfg_get(cfg, "batch_size", 16)),
                         dtype=W.cfg_get(cfg, "dtype", "float32"))
