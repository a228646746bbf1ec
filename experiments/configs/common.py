"""Shared config pieces: the STIV model section per size, and the encoder sections."""
from __future__ import annotations

import ml_collections

# name -> (blocks, hidden, heads); head dim is 64 at every paper size (STIV_SPEC.md section 1).
MODEL_SIZES = {
    "XL": (28, 1152, 18),
    "XXL": (38, 1536, 24),
    "M": (46, 3072, 48),
    "demo": (4, 128, 2),   # CPU demo (make demo)
    "small": (2, 64, 2),   # unit tests
    "mid": (8, 512, 8),    # stiv-bench model / train-step
}


def model_config(size: str = "XL", **overrides) -> ml_collections.ConfigDict:
  """The `model` section for a named size; keyword overrides replace fields."""
  if size not in MODEL_SIZES:
    raise ValueError(f"model size {size!r} unknown; expected one of {sorted(MODEL_SIZES)}")
  depth, hidden, heads = MODEL_SIZES[size]
  c = ml_collections.ConfigDict()
  c.size = size
  # Latent video the model sees (after the frozen VAE): frames, height, width, channels.
  c.latent_channels = 8
  c.num_frames = 20          # latent frames at the base resolution (20 frames, stride 3)
  c.latent_height = 32       # 256 px / VAE factor 8
  c.latent_width = 32
  c.patch_t = 2              # temporal patch ("cubify"); 1 for a pure image model
  c.patch_s = 2              # spatial patch
  c.patch_inflation = "mean"  # T2I -> T2V kernel inflation: 'mean' (copy / patch_t) or 'center'
  # Transformer.
  c.depth = depth
  c.hidden = hidden
  c.heads = heads
  c.mlp_ratio = 4.0
  c.mlp_activation = "gelu_tanh"
  c.temporal_attention = True   # False: an image (T2I) model
  c.cross_attention = True
  c.qk_norm = True
  c.sandwich_norm = True
  c.norm_eps = 1e-6
  # Conditioning.
  c.text_dim = 1280          # CLIP-style text encoder width (the paper's: 1280)
  c.freq_dim = 256           # sinusoidal embedding size of time and micro-conditions
  c.micro_conditions = True
  # RoPE: positions are multiplied by these factors (old_len / new_len to interpolate).
  c.rope_theta = 10000.0
  c.rope_scale_t = 1.0
  c.rope_scale_s = 1.0
  # MaskDiT.
  c.mask_ratio = 0.5
  c.mask_decoder_depth = 2
  # Compute.
  c.param_dtype = "float32"
  c.dtype = "float32"        # compute dtype: 'float32' or 'bfloat16'
  c.remat = "save_self_attn"  # none | full | save_self_attn | save_dots_no_batch
  c.scan_blocks = True
  c.attention_impl = "xla"   # jax.nn.dot_product_attention implementation: xla | cudnn | auto
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def vae_config(kind: str = "pixel", **overrides) -> ml_collections.ConfigDict:
  """The frozen VAE section: 'pixel' stand-in (tests, demo) or 'kl' from local weights."""
  c = ml_collections.ConfigDict()
  c.kind = kind
  c.path = ""
  c.spatial_factor = 8
  c.latent_channels = 8
  c.scaling_factor = 1.0
  c.shift_factor = 0.0
  c.batch_size = 16
  c.sample = False
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def text_config(kind: str = "hash", **overrides) -> ml_collections.ConfigDict:
  """The frozen text-encoder section: 'hash' stand-in (tests, demo) or 'clip' from local weights."""
  c = ml_collections.ConfigDict()
  c.kind = kind
  c.path = ""
  c.tokenizer_path = ""
  c.dim = 1280
  c.max_length = 77
  for k, v in overrides.items():
    setattr(c, k, v)
  return c
