"""Stage 3, features: per-clip scores from a fixed number of sampled frames at a fixed size.

All features of a clip come from the same `num_sampled_frames` frames (uniform over the
span) at the analysis resolution (short side `analysis_short_side`), both recorded in the
row. Text area: PP-OCRv4 text detection (data_pipeline/models/ocr.py) on `ocr_num_frames`
frames at `ocr_short_side` px (`ocr_backend` 'ppocr'); aesthetics: the LAION-style MLP on CLIP
image embeddings (data_pipeline/models/aesthetic.py) when its weights are configured. Both
also take a `module:function` (RGB uint8 [N, H, W, 3] -> float). The named fallbacks:
`proxy_colorfulness_contrast` (NOT a learned aesthetic model; `aesthetic_backend` 'auto'
without weights, or 'proxy') and `proxy_edge_blobs` (NOT OCR; `ocr_backend` 'proxy'). Each row
says which ran: `aesthetic_backend` / `aesthetic_source`, `ocr_backend` / `ocr_source`.
"""
from __future__ import annotations

import importlib
import time
from typing import Callable

import cv2
import numpy as np

from stiv_jax import video_io

Backend = Callable[[np.ndarray], float]


def sample_indices(start: int, end: int, n: int) -> list[int]:
  """`n` frame indices spread uniformly over [start, end) (fewer if the span is shorter)."""
  if end <= start:
    raise ValueError(f"sample_indices: empty span [{start}, {end})")
  n = min(n, end - start)
  return sorted(set(int(round(x)) for x in np.linspace(start, end - 1, n)))


def _gray(frames_bgr: np.ndarray) -> list[np.ndarray]:
  return [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames_bgr]


def motion_score(grays: list[np.ndarray], gaps: list[int], fcfg) -> float:
  """Mean Farneback optical-flow magnitude, in analysis pixels per source frame.

  The flow runs at `motion_short_side` (cheaper) and is rescaled to analysis pixels.
  """
  if len(grays) < 2:
    return 0.0
  h, w = grays[0].shape
  fh, fw = video_io.analysis_size(h, w, int(fcfg.motion_short_side))
  scale = 1.0
  if (fh, fw) != (h, w):
    scale = w / fw
    grays = [cv2.resize(g, (fw, fh), interpolation=cv2.INTER_AREA) for g in grays]
  mags = []
  for a, b, gap in zip(grays[:-1], grays[1:], gaps):
    flow = cv2.calcOpticalFlowFarneback(
        a, b, None, fcfg.farneback_pyr_scale, int(fcfg.farneback_levels),
        int(fcfg.farneback_winsize), int(fcfg.farneback_iterations), int(fcfg.farneback_poly_n),
        fcfg.farneback_poly_sigma, 0)
    mags.append(scale * float(cv2.magnitude(flow[..., 0], flow[..., 1]).mean()) / max(gap, 1))
  return float(np.mean(mags))


def sharpness(grays: list[np.ndarray]) -> float:
  """Mean over frames of the variance of the Laplacian (higher = sharper)."""
  return float(np.mean([cv2.Laplacian(g, cv2.CV_64F).var() for g in grays]))


def temporal_consistency(frames_bgr: np.ndarray, bins: int) -> float:
  """Lowest color-histogram correlation between consecutive sampled frames (1 = same)."""
  if len(frames_bgr) < 2:
    return 1.0
  hists = []
  for f in frames_bgr:
    h = cv2.calcHist([f], [0, 1, 2], None, [bins] * 3, [0, 256] * 3)
    hists.append(cv2.normalize(h, h).flatten())
  return float(min(cv2.compareHist(a, b, cv2.HISTCMP_CORREL) for a, b in zip(hists[:-1], hists[1:])))


def proxy_colorfulness_contrast(frames_rgb: np.ndarray) -> float:
  """Cheap aesthetic PROXY in [0, 10]: Hasler-Suesstrunk colorfulness + RMS contrast.

  Not a learned aesthetic model; stands in when `features.aesthetic_backend` is 'proxy'.
  """
  scores = []
  for f in np.asarray(frames_rgb, np.float32):
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    rg, yb = r - g, 0.5 * (r + g) - b
    colorful = np.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    contrast = (0.299 * r + 0.587 * g + 0.114 * b).std()
    scores.append(10.0 * min(1.0, 0.5 * colorful / 100.0 + 0.5 * contrast / 64.0))
  return float(np.mean(scores))


def make_proxy_edge_blobs(min_area: int, max_height_frac: float) -> Backend:
  """Cheap text-area PROXY (NOT OCR): area fraction of wide, short, dense edge blobs."""

  def text_fraction(frames_rgb: np.ndarray) -> float:
    fracs = []
    for f in frames_rgb:
      gray = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY)
      grad = cv2.morphologyEx(gray, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
      _, bw = cv2.threshold(grad, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
      bw = cv2.morphologyEx(bw, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (5, 1)))
      n, _, stats, _ = cv2.connectedComponentsWithStats(bw, connectivity=8)
      covered = 0
      for x, y, w, h, area in stats[1:n]:
        if (area >= min_area and w >= 2 * h and h <= max_height_frac * gray.shape[0]
            and area >= 0.4 * w * h):
          covered += w * h
      fracs.append(covered / float(gray.size))
    return float(np.mean(fracs))

  return text_fraction


def load_backend(spec: str, field: str, proxy: Backend) -> tuple[str, Backend]:
  """'proxy' -> (proxy name, proxy); 'package.module:function' -> the imported function."""
  if spec == "proxy":
    return getattr(proxy, "__name__", "proxy"), proxy
  if ":" not in spec:
    raise ValueError(f"features.{field}: expected 'proxy' or 'module:function', got {spec!r}")
  mod, fn = spec.split(":", 1)
  try:
    return spec, getattr(importlib.import_module(mod), fn)
  except (ImportError, AttributeError) as err:
    raise ValueError(f"features.{field}: cannot load {spec!r}: {err}") from err


def build_aesthetic(fcfg) -> tuple[str, str, Backend]:
  """(backend name, source 'laion' | 'proxy' | 'custom', scorer) for `aesthetic_backend`."""
  spec = fcfg.aesthetic_backend
  has_weights = bool(fcfg.aesthetic_clip_path and fcfg.aesthetic_mlp_path)
  if spec == "laion" or (spec == "auto" and has_weights):
    if not has_weights:
      raise ValueError("features.aesthetic_backend 'laion' needs aesthetic_clip_path (a CLIP "
                       "vision folder) and aesthetic_mlp_path (the MLP weights)")
    from data_pipeline.models import aesthetic
    model = aesthetic.LaionAesthetic(fcfg.aesthetic_clip_path, fcfg.aesthetic_mlp_path)
    return model.name, "laion", model
  if spec in ("auto", "proxy"):
    return "proxy_colorfulness_contrast", "proxy", proxy_colorfulness_contrast
  name, fn = load_backend(spec, "aesthetic_backend", proxy_colorfulness_contrast)
  return name, "custom", fn


def build_ocr(fcfg) -> tuple[str, str, Backend]:
  """(backend name, source 'ppocr' | 'proxy' | 'custom', text-area fn) for `ocr_backend`."""
  spec = fcfg.ocr_backend
  if spec == "ppocr":
    from data_pipeline.models import ocr
    det = ocr.TextAreaDetector(short_side=int(fcfg.ocr_short_side), thresh=fcfg.ocr_thresh,
                               box_thresh=fcfg.ocr_box_thresh,
                               unclip_ratio=fcfg.ocr_unclip_ratio)
    return det.name, "ppocr", det
  proxy = make_proxy_edge_blobs(int(fcfg.text_min_blob_area), fcfg.text_max_blob_height_frac)
  if spec == "proxy":
    return "proxy_edge_blobs", "proxy", proxy
  name, fn = load_backend(spec, "ocr_backend", proxy)
  return name, "custom", fn


def ocr_indices(start: int, end: int, n: int, every: int) -> list[int]:
  """Up to `n` frames of [start, end) on the OCR grid (multiples of `every`), spread evenly;
  the middle frame when the span holds no grid frame."""
  grid = list(range(-(-start // every) * every, end, every))
  if not grid:
    return [(start + end - 1) // 2]
  if len(grid) <= n:
    return grid
  return [grid[int(round(i))] for i in np.linspace(0, len(grid) - 1, n)]


class FeatureExtractor:
  """Computes the feature row of a clip from its sampled BGR frames (backends bound once)."""

  def __init__(self, fcfg):
    self.cfg = fcfg
    self.aesthetic_name, self.aesthetic_source, self.aesthetic = build_aesthetic(fcfg)
    self.ocr_name, self.ocr_source, self.ocr = build_ocr(fcfg)

  @property
  def ocr_size_short_side(self) -> int:
    """Short side (px) of the frames OCR wants (0: the analysis frames are enough)."""
    return int(self.cfg.ocr_short_side) if self.ocr_source == "ppocr" else 0

  def __call__(self, frames_bgr: np.ndarray, indices: list[int], clip: dict,
               ocr_frames_rgb: np.ndarray | None = None, timings: dict | None = None) -> dict:
    """Pure core: features of one clip from frames [N, h, w, 3] BGR at analysis size; the text
    area reads `ocr_frames_rgb` when given (higher resolution), else the analysis frames."""
    frames_bgr = np.asarray(frames_bgr)
    if frames_bgr.ndim != 4 or len(frames_bgr) != len(indices):
      raise ValueError(f"clip {clip.get('id')}: {len(indices)} indices but frames "
                       f"{frames_bgr.shape}")
    grays = _gray(frames_bgr)
    gaps = [b - a for a, b in zip(indices[:-1], indices[1:])]
    rgb = frames_bgr[..., ::-1]
    ocr_in = rgb if ocr_frames_rgb is None else np.asarray(ocr_frames_rgb)
    t0 = time.process_time()
    text_fraction = float(self.ocr(np.ascontiguousarray(ocr_in)))
    if timings is not None:  # OCR's CPU time, reported apart (and taken out of features')
      timings["ocr"] = timings.get("ocr", 0.0) + time.process_time() - t0
      timings["features"] = timings.get("features", 0.0) - (time.process_time() - t0)
    return dict(
        motion=motion_score(grays, gaps, self.cfg),
        motion_height=min(int(frames_bgr.shape[1]), video_io.analysis_size(
            *frames_bgr.shape[1:3], int(self.cfg.motion_short_side))[0]),
        aesthetic=float(self.aesthetic(np.ascontiguousarray(rgb))),
        aesthetic_backend=self.aesthetic_name, aesthetic_source=self.aesthetic_source,
        text_fraction=text_fraction,
        ocr_backend=self.ocr_name, ocr_source=self.ocr_source,
        ocr_frames=len(ocr_in), ocr_height=int(ocr_in.shape[1]),
        sharpness=sharpness(grays),
        temporal_consistency=temporal_consistency(frames_bgr, int(self.cfg.similarity_bins)),
        height=int(clip["height"]), width=int(clip["width"]),
        orientation=clip["orientation"],
        analysis_height=int(frames_bgr.shape[1]), analysis_width=int(frames_bgr.shape[2]),
        num_sampled_frames=len(indices), sampled_indices=list(map(int, indices)),
    )


def features_for_clip(clip: dict, extractor: FeatureExtractor) -> dict:
  """Standalone path: decodes the clip's sampled frames (seeking) and computes its features."""
  fcfg = extractor.cfg
  idx = sample_indices(clip["start"], clip["end"], int(fcfg.num_sampled_frames))
  geometry = dict(rotation=int(clip.get("rotation", 0)),
                  sample_aspect=clip.get("sample_aspect", [1, 1]))
  size = video_io.analysis_size(clip["height"], clip["width"], int(fcfg.analysis_short_side))
  rgb = video_io.read_display_frames(clip["path"], idx, size=size, **geometry)
  ocr = None
  if extractor.ocr_size_short_side:
    ocr = video_io.read_display_frames(
        clip["path"], ocr_indices(clip["start"], clip["end"], int(fcfg.ocr_num_frames),
                                  int(fcfg.ocr_every)),
        size=video_io.analysis_size(clip["height"], clip["width"],
                                    extractor.ocr_size_short_side), **geometry)
  return {**clip, **extractor(np.ascontiguousarray(rgb[..., ::-1]), idx, clip, ocr)}
