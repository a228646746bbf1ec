"""Analytic FLOP count of the STIV forward pass and train step (matmuls and attention only)."""
from __future__ import annotations


def forward_flops(cfg, batch: int, num_frames: int, height: int, width: int, text_len: int,
                  masked: bool = False) -> float:
  """Matmul + attention FLOPs (2 per multiply-add) of one forward pass over a batch."""
  d, mlp = cfg.hidden, int(cfg.hidden * cfg.mlp_ratio)
  pt, ps, c = cfg.patch_t, cfg.patch_s, cfg.latent_channels
  frames = max(num_frames, pt)
  tp, s_full = frames // pt, (height // ps) * (width // ps)
  s_keep = s_full
  if masked and cfg.mask_ratio > 0:
    s_keep = max(1, int(round(s_full * (1.0 - float(cfg.mask_ratio)))))
  patch_vol = pt * ps * ps * c

  def block(s: int) -> float:
    n = batch * tp * s  # tokens
    f = 2 * n * 4 * d * d + 2 * 2 * batch * tp * s * s * d            # spatial proj + attention
    if cfg.temporal_attention and tp > 1:
      f += 2 * n * 4 * d * d + 2 * 2 * batch * s * tp * tp * d        # temporal proj + attention
    if cfg.cross_attention:
      f += 2 * n * 2 * d * d + 2 * batch * text_len * 2 * cfg.text_dim * d
      f += 2 * 2 * n * text_len * d                                   # cross attention
    f += 2 * n * 2 * d * mlp                                          # FFN
    return f

  total = 2 * batch * tp * s_full * patch_vol * d                     # patch embedding
  total += cfg.depth * block(s_keep) + cfg.mask_decoder_depth * block(s_full)
  total += 2 * batch * tp * s_full * d * patch_vol                    # final layer
  adaln_layers = (cfg.depth + cfg.mask_decoder_depth
                  if cfg.get("adaln", "shared") == "per_block" else 1)
  total += adaln_layers * 2 * batch * d * 6 * d                       # adaLN (shared or per block)
  return float(total)


def train_step_flops(cfg, batch: int, num_frames: int, height: int, width: int, text_len: int,
                     masked: bool = True) -> float:
  """Model FLOPs of a train step: forward + backward = 3x forward (remat recompute not counted)."""
  return 3.0 * forward_flops(cfg, batch, num_frames, height, width, text_len, masked)
