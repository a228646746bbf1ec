"""CLIP text transformer (the HF `CLIPTextModel` architecture) in Flax NNX, with HF weight import.

Causal pre-LN transformer: token + learned position embeddings, L x (LN, causal MHA, LN, MLP),
final LayerNorm. Attribute names follow HF so parameter paths are the checkpoint keys.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from stiv_jax.models.encoders import weights as W

WEIGHT_FILES = ("model.safetensors",)
# Keys of a full CLIPModel / CLIPTextModelWithProjection checkpoint that the text tower ignores
# (after the optional "text_model." prefix is stripped); position_ids is an old saved buffer.
IGNORED_KEYS = ("vision_model.", "visual_projection.", "text_projection.", "logit_scale",
                "embeddings.position_ids")


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
  """Sizes of a CLIP text tower (the fields of an HF CLIPTextConfig that matter)."""

  vocab_size: int = 49408
  hidden_size: int = 512
  intermediate_size: int = 2048
  num_hidden_layers: int = 12
  num_attention_heads: int = 8
  max_position_embeddings: int = 77
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5

  @classmethod
  def from_hf(cls, config: dict, source: str) -> "CLIPTextConfig":
    """Validates an HF CLIP config.json (text or full CLIP); names `source` and the bad field."""
    model_type = config.get("model_type", "clip_text_model")
    if model_type == "clip":
      config = config.get("text_config") or {}
      model_type = "clip_text_model"
    if model_type != "clip_text_model":
      raise W.WeightImportError(f"{source}: model_type {model_type!r} is not supported; "
                                "expected 'clip_text_model' (or 'clip' with a text_config)")
    act = config.get("hidden_act", "quick_gelu")
    if act not in W.ACTIVATIONS:
      raise W.WeightImportError(f"{source}: hidden_act={act!r} is not supported; expected one "
                                f"of {sorted(W.ACTIVATIONS)}")
    fields = {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config}
    out = cls(**fields)
    if out.hidden_size % out.num_attention_heads:
      raise W.WeightImportError(f"{source}: hidden_size {out.hidden_size} is not divisible by "
                                f"num_attention_heads {out.num_attention_heads}")
    return out


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                     key_mask: jax.Array) -> jax.Array:
  """Multi-head attention [B, L, H, Dh] with a causal and key-padding mask; softmax in f32."""
  L = q.shape[1]
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * (q.shape[-1]**-0.5), k,
                      preferred_element_type=jnp.float32)
  allowed = jnp.tril(jnp.ones((L, L), bool))[None, None] & key_mask[:, None, None, :]
  logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class CLIPAttention(nnx.Module):
  """Causal multi-head self-attention with separate q/k/v/out projections."""

  def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs):
    d = cfg.hidden_size
    self.heads = cfg.num_attention_heads
    self.q_proj = W.Linear(d, d, rngs=rngs)
    self.k_proj = W.Linear(d, d, rngs=rngs)
    self.v_proj = W.Linear(d, d, rngs=rngs)
    self.out_proj = W.Linear(d, d, rngs=rngs)

  def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
    b, L, d = x.shape
    split = lambda t: t.reshape(b, L, self.heads, d // self.heads)
    o = causal_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                         key_mask)
    return self.out_proj(o.reshape(b, L, d))


class CLIPMLP(nnx.Module):
  """fc1, activation, fc2."""

  def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs):
    self.fc1 = W.Linear(cfg.hidden_size, cfg.intermediate_size, rngs=rngs)
    self.fc2 = W.Linear(cfg.intermediate_size, cfg.hidden_size, rngs=rngs)
    self.act = cfg.hidden_act

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(W.ACTIVATIONS[self.act](self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
  """Pre-LN transformer layer."""

  def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs):
    self.self_attn = CLIPAttention(cfg, rngs=rngs)
    self.layer_norm1 = W.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
    self.mlp = CLIPMLP(cfg, rngs=rngs)
    self.layer_norm2 = W.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)

  def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
    x = x + self.self_attn(self.layer_norm1(x), key_mask)
    return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
  """The stack of layers."""

  def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs):
    self.layers = nnx.List([CLIPEncoderLayer(cfg, rngs=rngs)
                            for _ in range(cfg.num_hidden_layers)])

  def __call__(self, x: jax.Array, key_mask: jax.Array) -> jax.Array:
    for layer in self.layers:
      x = layer(x, key_mask)
    return x


class CLIPTextEmbeddings(nnx.Module):
  """Token plus learned absolute position embeddings."""

  def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs):
    self.token_embedding = W.Embedding(cfg.vocab_size, cfg.hidden_size, rngs=rngs)
    self.position_embedding = W.Embedding(cfg.max_position_embeddings, cfg.hidden_size,
                                          rngs=rngs)

  def __call__(self, ids: jax.Array) -> jax.Array:
    pos = self.position_embedding.weight[...][: ids.shape[1]]
    return self.token_embedding(ids) + pos[None]


class CLIPTextModel(nnx.Module):
  """ids [B, L] int, mask [B, L] bool -> last hidden state [B, L, D] (after the final LayerNorm).

  transformers' pooler_output is this state at the EOS token (text.pool_tokens 'eos').
  """

  def __init__(self, cfg: CLIPTextConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embeddings = CLIPTextEmbeddings(cfg, rngs=rngs)
    self.encoder = CLIPEncoder(cfg, rngs=rngs)
    self.final_layer_norm = W.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)

  @property
  def width(self) -> int:
    return self.cfg.hidden_size

  @property
  def vocab_size(self) -> int:
    return self.cfg.vocab_size

  @property
  def max_positions(self) -> int | None:
    return self.cfg.max_position_embeddings

  def __call__(self, ids: jax.Array, mask: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    x = self.embeddings(ids).astype(dtype)
    return self.final_layer_norm(self.encoder(x, mask))


def load_clip_text_model(path: str, config_path: str | None = None) -> CLIPTextModel:
  """Builds a CLIPTextModel from a local HF folder or .safetensors (+ config.json).

  Accepts transformers 5.x flat keys and 4.x `text_model.`-prefixed keys (also the text tower
  of a full CLIPModel checkpoint, whose other tensors are ignored).
  """
  config, config_file, files, source = W.resolve_checkpoint(path, WEIGHT_FILES, config_path)
  cfg = CLIPTextConfig.from_hf(config, config_file)
  model = CLIPTextModel(cfg, rngs=nnx.Rngs(params=0))
  tensors = W.read_safetensors(files)
  prefix = "text_model." if any(k.startswith("text_model.") for k in tensors) else ""
  W.load_into(model, tensors, source=source, prefix=prefix,
              ignore_prefixes=IGNORED_KEYS + tuple(prefix + k for k in IGNORED_KEYS))
  return model
