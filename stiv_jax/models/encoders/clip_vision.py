"""CLIP vision tower (HF `CLIPVisionModel[WithProjection]`) in Flax NNX, with HF weight import.

Patch embedding (bias-free conv) + class token + learned positions, `pre_layrnorm` (HF's
spelling), the CLIP text tower's pre-LN layers without the causal mask, `post_layernorm` on
the class token, and an optional bias-free `visual_projection`. Layers, MLP, norms and the
weight import are the text tower's (clip_text.py, weights.py); only attention is non-causal.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stiv_jax.models.encoders import clip_text
from stiv_jax.models.encoders import weights as W

WEIGHT_FILES = ("model.safetensors",)
IGNORED_KEYS = ("text_model.", "text_projection.", "logit_scale",
                "vision_model.embeddings.position_ids")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)   # OpenAI CLIP pixel statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig(clip_text.CLIPTextConfig):
  """Sizes of a CLIP vision tower (HF CLIPVisionConfig fields that matter)."""

  image_size: int = 224
  patch_size: int = 32
  num_channels: int = 3
  projection_dim: int = 0   # 0: no visual_projection (CLIPVisionModel)

  @classmethod
  def from_hf(cls, config: dict, source: str) -> "CLIPVisionConfig":
    """Validates an HF vision (or full CLIP) config.json; names `source` and the bad field."""
    model_type = config.get("model_type", "clip_vision_model")
    projection = config.get("projection_dim", 0)
    if model_type == "clip":
      projection = config.get("projection_dim", projection)
      config = {**(config.get("vision_config") or {}), "projection_dim": projection}
      model_type = "clip_vision_model"
    if model_type != "clip_vision_model":
      raise W.WeightImportError(f"{source}: model_type {model_type!r} is not supported; "
                                "expected 'clip_vision_model' (or 'clip' with a vision_config)")
    if config.get("hidden_act", "quick_gelu") not in W.ACTIVATIONS:
      raise W.WeightImportError(f"{source}: hidden_act={config.get('hidden_act')!r} is not "
                                f"supported; expected one of {sorted(W.ACTIVATIONS)}")
    fields = {f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config}
    out = cls(**fields)
    if out.hidden_size % out.num_attention_heads:
      raise W.WeightImportError(f"{source}: hidden_size {out.hidden_size} is not divisible by "
                                f"num_attention_heads {out.num_attention_heads}")
    if out.image_size % out.patch_size:
      raise W.WeightImportError(f"{source}: image_size {out.image_size} is not a multiple of "
                                f"patch_size {out.patch_size}")
    return out


class PatchConv(nnx.Module):
  """Non-overlapping patch convolution without bias, kernel HWIO under `weight`."""

  TORCH_LAYOUT = {"weight": (W.conv_oihw_to_hwio, W._torch_shape_conv)}

  def __init__(self, cin: int, cout: int, patch: int, *, rngs: nnx.Rngs):
    self.weight = nnx.Param(W._normal(rngs, (patch, patch, cin, cout), (cin * patch**2)**-0.5))
    self.patch = patch

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, self.weight[...].astype(x.dtype),
                                        (self.patch, self.patch), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class LinearNoBias(nnx.Module):
  """Dense layer without bias, kernel [in, out] under `weight`."""

  TORCH_LAYOUT = {"weight": (W.linear_out_in_to_in_out, W._torch_shape_linear)}

  def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
    self.weight = nnx.Param(W._normal(rngs, (din, dout), din**-0.5))

  def __call__(self, x: jax.Array) -> jax.Array:
    return x @ self.weight[...].astype(x.dtype)


def full_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Multi-head attention [B, L, H, Dh] without a mask; softmax in float32."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q * (q.shape[-1]**-0.5), k,
                      preferred_element_type=jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


class VisionAttention(clip_text.CLIPAttention):
  """The text tower's attention projections, attending over all tokens."""

  def __call__(self, x: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    b, L, d = x.shape
    split = lambda t: t.reshape(b, L, self.heads, d // self.heads)
    o = full_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
    return self.out_proj(o.reshape(b, L, d))


class VisionEncoderLayer(clip_text.CLIPEncoderLayer):
  """The text tower's pre-LN layer with non-causal attention."""

  def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
    super().__init__(cfg, rngs=rngs)
    self.self_attn = VisionAttention(cfg, rngs=rngs)


class VisionEncoder(nnx.Module):
  """The stack of layers."""

  def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
    self.layers = nnx.List([VisionEncoderLayer(cfg, rngs=rngs)
                            for _ in range(cfg.num_hidden_layers)])

  def __call__(self, x: jax.Array) -> jax.Array:
    for layer in self.layers:
      x = layer(x, None)
    return x


class VisionEmbeddings(nnx.Module):
  """Patch embeddings, a learned class token in front, learned absolute positions."""

  TORCH_LAYOUT = {"class_embedding": (W.identity, None)}

  def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
    d = cfg.hidden_size
    self.class_embedding = nnx.Param(W._normal(rngs, (d,), d**-0.5))
    self.patch_embedding = PatchConv(cfg.num_channels, d, cfg.patch_size, rngs=rngs)
    n = (cfg.image_size // cfg.patch_size) ** 2 + 1
    self.position_embedding = W.Embedding(n, d, rngs=rngs)

  def __call__(self, pixels: jax.Array) -> jax.Array:
    x = self.patch_embedding(pixels)
    b = x.shape[0]
    x = x.reshape(b, -1, x.shape[-1])
    cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (b, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1)
    return x + self.position_embedding.weight[...].astype(x.dtype)[None]


class CLIPVisionTower(nnx.Module):
  """pixels [B, S, S, 3] (CLIP-normalised) -> (pooled [B, D], image embedding [B, P] or None).

  `pooled` is transformers' pooler_output (post-LayerNorm class token); the image embedding is
  `visual_projection(pooled)` when the checkpoint has a projection (image_embeds)."""

  def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embeddings = VisionEmbeddings(cfg, rngs=rngs)
    self.pre_layrnorm = W.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
    self.encoder = VisionEncoder(cfg, rngs=rngs)
    self.post_layernorm = W.LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
    self.visual_projection = (LinearNoBias(cfg.hidden_size, cfg.projection_dim, rngs=rngs)
                              if cfg.projection_dim else None)

  def __call__(self, pixels: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    x = self.encoder(self.pre_layrnorm(self.embeddings(pixels)))
    pooled = self.post_layernorm(x[:, 0])
    proj = self.visual_projection(pooled) if self.visual_projection is not None else None
    return pooled, proj


def preprocess(frames_rgb: np.ndarray, image_size: int, mean=CLIP_MEAN,
               std=CLIP_STD) -> np.ndarray:
  """uint8 [N, H, W, 3] -> float32 [N, S, S, 3]: short side to S (bicubic), center crop,
  CLIP normalisation (as CLIPImageProcessor)."""
  from PIL import Image
  out = []
  for f in np.asarray(frames_rgb):
    h, w = f.shape[:2]
    scale = image_size / min(h, w)
    rh, rw = max(image_size, int(round(h * scale))), max(image_size, int(round(w * scale)))
    im = np.asarray(Image.fromarray(f).resize((rw, rh), Image.BICUBIC), np.float32)
    top, left = (rh - image_size) // 2, (rw - image_size) // 2
    out.append(im[top:top + image_size, left:left + image_size])
  x = np.stack(out) / 255.0
  return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


def load_clip_vision_model(path: str, config_path: str | None = None) -> CLIPVisionTower:
  """Builds a CLIPVisionTower from a local HF folder (CLIPVisionModel, ...WithProjection or a
  full CLIPModel) or a .safetensors file (+ config.json); text-tower tensors are ignored."""
  config, config_file, files, source = W.resolve_checkpoint(path, WEIGHT_FILES, config_path)
  cfg = CLIPVisionConfig.from_hf(config, config_file)
  tensors = W.read_safetensors(files)
  if cfg.projection_dim and "visual_projection.weight" not in tensors:
    cfg = dataclasses.replace(cfg, projection_dim=0)  # a CLIPVisionModel: no projection
  model = CLIPVisionTower(cfg, rngs=nnx.Rngs(params=0))
  renames = {"vision_model.": ""}
  W.load_into(model, tensors, source=source, renames=renames, ignore_prefixes=IGNORED_KEYS)
  return model
