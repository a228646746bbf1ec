"""Validation of the `model` config section: every size mismatch fails before any compile."""
from __future__ import annotations

REMAT_POLICIES = ("none", "full", "save_self_attn", "save_dots_no_batch")
DTYPES = ("float32", "bfloat16")
ATTENTION_IMPLS = ("xla", "cudnn", "splash", "auto")
ADALN_MODES = ("shared", "per_block")
INFLATION_MODES = ("mean", "center")
PREDICTIONS = ("velocity", "data")
ABS_POS_EMBEDS = ("none", "sincos")


def _fail(field: str, message: str) -> None:
  raise ValueError(f"model.{field}: {message}")


def validate_model_config(cfg) -> None:
  """Raises ValueError naming the field and values when the model sizes don't fit together."""
  for name in ("depth", "hidden", "heads", "patch_t", "patch_s", "latent_channels", "num_frames",
               "latent_height", "latent_width", "text_dim", "freq_dim"):
    value = cfg[name]
    if not isinstance(value, int) or value < 1:
      _fail(name, f"must be a positive integer, got {value!r}")
  if cfg.hidden % cfg.heads:
    _fail("hidden", f"hidden={cfg.hidden} is not divisible by heads={cfg.heads}")
  head_dim = cfg.hidden // cfg.heads
  if head_dim % 4:
    _fail("heads", f"head dim hidden/heads={head_dim} must be divisible by 4 "
          "(2D RoPE rotates half the dims with the row and half with the column, in pairs)")
  if cfg.freq_dim % 2:
    _fail("freq_dim", f"sinusoidal embedding size must be even, got {cfg.freq_dim}")
  if cfg.num_frames != 1 and cfg.num_frames % cfg.patch_t:
    _fail("num_frames", f"num_frames={cfg.num_frames} is not divisible by patch_t={cfg.patch_t}")
  for name in ("latent_height", "latent_width"):
    if cfg[name] % cfg.patch_s:
      _fail(name, f"{name}={cfg[name]} is not divisible by patch_s={cfg.patch_s}")
  if not 0.0 <= float(cfg.mask_ratio) < 1.0:
    _fail("mask_ratio", f"must be in [0, 1), got {cfg.mask_ratio}")
  if cfg.mask_decoder_depth < 0:
    _fail("mask_decoder_depth", f"must be >= 0, got {cfg.mask_decoder_depth}")
  if cfg.mlp_ratio <= 0:
    _fail("mlp_ratio", f"must be > 0, got {cfg.mlp_ratio}")
  if cfg.remat not in REMAT_POLICIES:
    _fail("remat", f"unknown policy {cfg.remat!r}; expected one of {REMAT_POLICIES}")
  for name in ("dtype", "param_dtype"):
    if cfg[name] not in DTYPES:
      _fail(name, f"unknown dtype {cfg[name]!r}; expected one of {DTYPES}")
  if cfg.attention_impl not in ATTENTION_IMPLS:
    _fail("attention_impl", f"unknown {cfg.attention_impl!r}; expected one of {ATTENTION_IMPLS}")
  if cfg.get("adaln", "shared") not in ADALN_MODES:
    _fail("adaln", f"unknown {cfg.adaln!r}; expected one of {ADALN_MODES}")
  if cfg.patch_inflation not in INFLATION_MODES:
    _fail("patch_inflation", f"unknown {cfg.patch_inflation!r}; expected one of {INFLATION_MODES}")
  if cfg.mlp_activation not in ("gelu_tanh", "gelu", "silu"):
    _fail("mlp_activation", f"unknown {cfg.mlp_activation!r}")
  if cfg.get("prediction", "velocity") not in PREDICTIONS:
    _fail("prediction", f"unknown {cfg.prediction!r}; expected one of {PREDICTIONS}")
  if not 0.0 < float(cfg.get("prediction_min_gap", 0.05)) <= 1.0:
    _fail("prediction_min_gap", f"must be in (0, 1], got {cfg.prediction_min_gap}")
  if cfg.get("abs_pos_embed", "none") not in ABS_POS_EMBEDS:
    _fail("abs_pos_embed", f"unknown {cfg.abs_pos_embed!r}; expected one of {ABS_POS_EMBEDS}")
  for name in ("rope_scale_t", "rope_scale_s", "rope_theta"):
    if float(cfg[name]) <= 0:
      _fail(name, f"must be > 0, got {cfg[name]}")


def num_kept_tokens(cfg) -> int:
  """Spatial tokens kept per frame under MaskDiT (static, so shapes stay fixed under jit)."""
  spatial = (cfg.latent_height // cfg.patch_s) * (cfg.latent_width // cfg.patch_s)
  return max(1, int(round(spatial * (1.0 - float(cfg.mask_ratio)))))
