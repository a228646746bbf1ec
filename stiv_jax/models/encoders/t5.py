"""T5 v1.1 / mT5 / UMT5 encoder stack (transformers' `T5EncoderModel` layout) in Flax NNX.

Pre-norm transformer without biases: token embedding (`shared`), L x (RMS norm, bidirectional
attention with a bucketed relative-position bias and unscaled logits, RMS norm, gated-GELU or
ReLU FFN), final RMS norm. T5 v1.1 / mT5 learn one bias table in layer 0 that every layer
reuses; UMT5 learns one per layer. Attribute names follow transformers, so parameter paths are
the checkpoint keys; a full encoder-decoder checkpoint loads with its decoder ignored.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stiv_jax.models.encoders import weights as W

WEIGHT_FILES = ("model.safetensors",)
MODEL_TYPES = ("t5", "mt5", "umt5")
# Tensors of a T5ForConditionalGeneration / UMT5Model checkpoint that the encoder ignores.
IGNORED_KEYS = ("decoder.", "lm_head.")
TIED_EMBEDDING_KEY = "encoder.embed_tokens.weight"  # a tied copy of shared.weight (old saves)


@dataclasses.dataclass(frozen=True)
class T5EncoderConfig:
  """Sizes of a T5 encoder (the fields of a transformers T5Config / UMT5Config that matter)."""

  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 1024
  num_layers: int = 8
  num_heads: int = 6
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  act: str = "gelu_new"        # FFN activation (transformers' dense_act_fn)
  gated: bool = True           # wi_0 / wi_1 (v1.1, UMT5) or a single wi (original T5)
  bias_per_layer: bool = False  # UMT5: every layer has its own relative-position table

  @classmethod
  def from_hf(cls, config: dict, source: str) -> "T5EncoderConfig":
    """Validates a transformers T5 / mT5 / UMT5 config.json; names `source` and the bad field."""
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
      raise W.WeightImportError(f"{source}: model_type {model_type!r} is not supported; "
                                f"expected one of {list(MODEL_TYPES)}")
    proj = str(config.get("feed_forward_proj", "relu"))
    parts = proj.split("-")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
      raise W.WeightImportError(f"{source}: feed_forward_proj={proj!r} is not supported; "
                                "expected 'ACT' or 'gated-ACT'")
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]  # transformers' own special case
    if act not in W.ACTIVATIONS:
      raise W.WeightImportError(f"{source}: feed_forward_proj={proj!r}: activation {act!r} is "
                                f"not supported; expected one of {sorted(W.ACTIVATIONS)}")
    missing = [k for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
               if k not in config]
    if missing:
      raise W.WeightImportError(f"{source}: missing fields {missing}")
    fields = {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config}
    out = cls(**fields, act=act, gated=len(parts) == 2, bias_per_layer=model_type == "umt5")
    if out.relative_attention_num_buckets < 4 or out.relative_attention_max_distance < 2:
      raise W.WeightImportError(
          f"{source}: relative_attention_num_buckets={out.relative_attention_num_buckets} / "
          f"relative_attention_max_distance={out.relative_attention_max_distance} too small")
    return out


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """[L, L] int32 bucket of (key - query) for bidirectional attention (Mesh TensorFlow's rule).

  Half the buckets per sign; of those, half hold exact distances and half log-spaced ones up
  to max_distance. float32 arithmetic as in the reference, so the boundaries agree exactly.
  """
  rel = np.arange(length)[None, :] - np.arange(length)[:, None]
  half = num_buckets // 2
  out = (rel > 0).astype(np.int64) * half
  dist = np.abs(rel)
  max_exact = half // 2
  scaled = (np.log(np.maximum(dist, 1).astype(np.float32) / np.float32(max_exact))
            / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact))
  large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
  return (out + np.where(dist < max_exact, dist, large)).astype(np.int32)


def position_bias(table: jax.Array, buckets: np.ndarray) -> jax.Array:
  """Bias table [num_buckets, H] and buckets [L, L] -> [H, L, L] float32."""
  return jnp.transpose(jnp.take(table.astype(jnp.float32), buckets, axis=0), (2, 0, 1))


def t5_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array,
                 key_mask: jax.Array) -> jax.Array:
  """[B, L, H, Dh] attention with T5's unscaled logits plus bias [H, L, L]; softmax in f32."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) + bias[None]
  logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class T5Attention(nnx.Module):
  """Self-attention q/k/v/o without biases; optionally owns a relative-position bias table."""

  def __init__(self, cfg: T5EncoderConfig, has_bias: bool, *, rngs: nnx.Rngs):
    inner = cfg.num_heads * cfg.d_kv
    self.heads, self.d_kv = cfg.num_heads, cfg.d_kv
    self.q = W.LinearNoBias(cfg.d_model, inner, rngs=rngs)
    self.k = W.LinearNoBias(cfg.d_model, inner, rngs=rngs)
    self.v = W.LinearNoBias(cfg.d_model, inner, rngs=rngs)
    self.o = W.LinearNoBias(inner, cfg.d_model, rngs=rngs)
    if has_bias:
      self.relative_attention_bias = W.Embedding(cfg.relative_attention_num_buckets,
                                                 cfg.num_heads, rngs=rngs)

  def __call__(self, x: jax.Array, bias: jax.Array, key_mask: jax.Array) -> jax.Array:
    b, L, _ = x.shape
    split = lambda t: t.reshape(b, L, self.heads, self.d_kv)
    o = t5_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), bias, key_mask)
    return self.o(o.reshape(b, L, self.heads * self.d_kv))


class T5LayerSelfAttention(nnx.Module):
  """x + attention(norm(x))."""

  def __init__(self, cfg: T5EncoderConfig, has_bias: bool, *, rngs: nnx.Rngs):
    self.SelfAttention = T5Attention(cfg, has_bias, rngs=rngs)
    self.layer_norm = W.RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

  def __call__(self, x: jax.Array, bias: jax.Array, key_mask: jax.Array) -> jax.Array:
    return x + self.SelfAttention(self.layer_norm(x), bias, key_mask)


class T5DenseReluDense(nnx.Module):
  """The FFN: wo(act(wi_0 x) * wi_1 x) when gated, else wo(act(wi x)); no biases."""

  def __init__(self, cfg: T5EncoderConfig, *, rngs: nnx.Rngs):
    self.act, self.gated = cfg.act, cfg.gated
    if cfg.gated:
      self.wi_0 = W.LinearNoBias(cfg.d_model, cfg.d_ff, rngs=rngs)
      self.wi_1 = W.LinearNoBias(cfg.d_model, cfg.d_ff, rngs=rngs)
    else:
      self.wi = W.LinearNoBias(cfg.d_model, cfg.d_ff, rngs=rngs)
    self.wo = W.LinearNoBias(cfg.d_ff, cfg.d_model, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    act = W.ACTIVATIONS[self.act]
    h = act(self.wi_0(x)) * self.wi_1(x) if self.gated else act(self.wi(x))
    return self.wo(h)


class T5LayerFF(nnx.Module):
  """x + FFN(norm(x))."""

  def __init__(self, cfg: T5EncoderConfig, *, rngs: nnx.Rngs):
    self.DenseReluDense = T5DenseReluDense(cfg, rngs=rngs)
    self.layer_norm = W.RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

  def __call__(self, x: jax.Array) -> jax.Array:
    return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nnx.Module):
  """layer[0] = self-attention, layer[1] = FFN (the transformers numbering)."""

  def __init__(self, cfg: T5EncoderConfig, has_bias: bool, *, rngs: nnx.Rngs):
    self.layer = nnx.List([T5LayerSelfAttention(cfg, has_bias, rngs=rngs),
                           T5LayerFF(cfg, rngs=rngs)])

  def __call__(self, x: jax.Array, bias: jax.Array, key_mask: jax.Array) -> jax.Array:
    return self.layer[1](self.layer[0](x, bias, key_mask))


class T5Stack(nnx.Module):
  """The encoder blocks and the final RMS norm; computes the position bias(es)."""

  def __init__(self, cfg: T5EncoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.block = nnx.List([T5Block(cfg, i == 0 or cfg.bias_per_layer, rngs=rngs)
                           for i in range(cfg.num_layers)])
    self.final_layer_norm = W.RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

  def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
    cfg = self.cfg
    buckets = relative_position_buckets(x.shape[1], cfg.relative_attention_num_buckets,
                                        cfg.relative_attention_max_distance)
    bias = None
    for block in self.block:
      attn = block.layer[0].SelfAttention
      if bias is None or cfg.bias_per_layer:
        bias = position_bias(attn.relative_attention_bias.weight[...], buckets)
      x = block(x, bias, key_mask)
    return self.final_layer_norm(x)


class T5EncoderModel(nnx.Module):
  """ids [B, L] int, mask [B, L] bool -> last hidden state [B, L, d_model] (final norm applied)."""

  def __init__(self, cfg: T5EncoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.shared = W.Embedding(cfg.vocab_size, cfg.d_model, rngs=rngs)
    self.encoder = T5Stack(cfg, rngs=rngs)

  @property
  def width(self) -> int:
    return self.cfg.d_model

  @property
  def vocab_size(self) -> int:
    return self.cfg.vocab_size

  @property
  def max_positions(self) -> int | None:
    return None  # relative positions: any length

  def __call__(self, ids: jax.Array, mask: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    return self.encoder(self.shared(ids).astype(dtype), mask)


def load_t5_encoder_model(path: str, config_path: str | None = None) -> T5EncoderModel:
  """Builds a T5EncoderModel from a local transformers folder or .safetensors (+ config.json):
  T5EncoderModel / UMT5EncoderModel saves, or a full encoder-decoder (decoder ignored)."""
  config, config_file, files, source = W.resolve_checkpoint(path, WEIGHT_FILES, config_path)
  cfg = T5EncoderConfig.from_hf(config, config_file)
  tensors = W.read_safetensors(files)
  if "shared.weight" not in tensors and TIED_EMBEDDING_KEY in tensors:
    tensors["shared.weight"] = tensors.pop(TIED_EMBEDDING_KEY)
  model = T5EncoderModel(cfg, rngs=nnx.Rngs(params=0))
  W.load_into(model, tensors, source=source, ignore_prefixes=IGNORED_KEYS + (TIED_EMBEDDING_KEY,))
  return model
