"""Built-in semantic score for the synthetic corpus: read color, shape and motion from pixels.

Prompts of the synthetic corpus read "a {color} {shape} moving {direction}". The detector
estimates the background as the per-frame median color, takes the pixels far from it as the
object, names its color by the nearest palette entry, its shape by the best-fitting template
(square, inscribed circle, apex-up triangle) in its bounding box, and its direction by the
dominant axis of its centroid's motion. A hand-written detector, NOT a learned classifier.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Mapping, Sequence

import numpy as np

# name -> RGB 0..255 (the synthetic corpus palette).
PALETTE = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 220, 230),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
ATTRIBUTES = ("color", "shape", "direction")


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  """Thresholds of the detector (every one a field)."""

  min_contrast: float = 40.0     # min RGB distance from the background for object pixels
  rel_contrast: float = 0.5      # ... and at least this fraction of the frame's max distance
  min_pixels: int = 3            # frames with fewer object pixels are skipped
  core_fraction: float = 0.5     # color from the object's most contrasting pixels (this share)
  palette: tuple[tuple[str, tuple[int, int, int]], ...] = tuple(PALETTE.items())


@dataclasses.dataclass
class Detection:
  """What the detector read from one video (None where nothing was found)."""

  color: str | None
  shape: str | None
  direction: str | None
  motion: tuple[float, float]     # mean centroid displacement per frame (dx, dy) in pixels
  frames_found: int


def parse_prompt(prompt: str) -> dict[str, str | None]:
  """The (color, shape, direction) words of a synthetic prompt; None for a missing one."""
  words = re.findall(r"[a-z]+", prompt.lower())
  pick = lambda vocab: next((w for w in words if w in vocab), None)
  return {"color": pick(PALETTE), "shape": pick(SHAPES), "direction": pick(DIRECTIONS)}


def object_masks(frames: np.ndarray, cfg: DetectorConfig = DetectorConfig()
                 ) -> tuple[np.ndarray, np.ndarray]:
  """uint8 [T, H, W, 3] -> (object mask [T, H, W] bool, distance to background [T, H, W])."""
  f = np.asarray(frames, np.float32)
  bg = np.median(f.reshape(f.shape[0], -1, 3), axis=1)[:, None, None, :]
  dist = np.linalg.norm(f - bg, axis=-1)
  thresh = np.maximum(cfg.min_contrast, cfg.rel_contrast * dist.max(axis=(1, 2), keepdims=True))
  return dist >= thresh, dist


def _templates(h: int, w: int) -> dict[str, np.ndarray]:
  """Binary templates of each shape filling an h x w bounding box."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  ry, rx = max(h / 2.0, 0.5), max(w / 2.0, 0.5)
  circle = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
  # Apex-up triangle: at row y (0 top, 1 bottom) the half width grows linearly.
  frac = (yy + 0.5) / h
  triangle = np.abs(xx + 0.5 - w / 2.0) <= frac * w / 2.0
  return {"square": np.ones((h, w), bool), "circle": circle, "triangle": triangle}


def classify_shape(mask: np.ndarray) -> tuple[str | None, dict[str, float]]:
  """The template with the highest IoU against the object in its bounding box."""
  ys, xs = np.nonzero(mask)
  if ys.size == 0:
    return None, {}
  crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
  scores = {}
  for name, tpl in _templates(*crop.shape).items():
    inter = np.logical_and(crop, tpl).sum()
    scores[name] = float(inter / max(np.logical_or(crop, tpl).sum(), 1))
  return max(scores, key=scores.get), scores


def classify_color(rgb: np.ndarray, cfg: DetectorConfig = DetectorConfig()) -> str:
  """Nearest palette color name to an RGB triple (0..255)."""
  names = [n for n, _ in cfg.palette]
  table = np.array([c for _, c in cfg.palette], np.float32)
  return names[int(np.argmin(np.linalg.norm(table - np.asarray(rgb, np.float32), axis=-1)))]


def direction_from_motion(dx: float, dy: float) -> str | None:
  """Dominant axis and sign of a displacement (image y grows downward); None if still."""
  if dx == 0 and dy == 0:
    return None
  if abs(dx) >= abs(dy):
    return "right" if dx > 0 else "left"
  return "down" if dy > 0 else "up"


def detect(frames: np.ndarray, cfg: DetectorConfig = DetectorConfig()) -> Detection:
  """Reads color, shape and motion direction of the single object in uint8 frames [T, H, W, 3]."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"detect: expected frames [T, H, W, 3], got {frames.shape}")
  masks, dist = object_masks(frames, cfg)
  h, w = frames.shape[1:3]
  colors, shape_votes, centroids = [], {}, []
  for i in range(frames.shape[0]):
    m = masks[i]
    n = int(m.sum())
    if n < cfg.min_pixels:
      centroids.append(None)
      continue
    d = dist[i][m]
    core = d >= np.quantile(d, 1.0 - cfg.core_fraction)
    colors.append(frames[i][m][core].astype(np.float32).mean(axis=0))
    shape, scores = classify_shape(m)
    for k, v in scores.items():
      shape_votes[k] = shape_votes.get(k, 0.0) + v
    ys, xs = np.nonzero(m)
    centroids.append((float(xs.mean()), float(ys.mean())))
  if not colors:
    return Detection(None, None, None, (0.0, 0.0), 0)
  color = classify_color(np.median(np.stack(colors), axis=0), cfg)
  shape = max(shape_votes, key=shape_votes.get)
  steps = []
  for a, b in zip(centroids[:-1], centroids[1:]):
    if a is None or b is None:
      continue
    # Wrap displacements into [-size/2, size/2) so an object leaving one edge and entering
    # the opposite one (wrap-around motion) still moves the right way.
    dx = (b[0] - a[0] + w / 2.0) % w - w / 2.0
    dy = (b[1] - a[1] + h / 2.0) % h - h / 2.0
    steps.append((dx, dy))
  motion = tuple(float(v) for v in np.mean(steps, axis=0)) if steps else (0.0, 0.0)
  return Detection(color, shape, direction_from_motion(*motion), motion, len(colors))


def score(videos: Iterable[np.ndarray], prompts: Sequence[str],
          cfg: DetectorConfig = DetectorConfig()) -> dict[str, float]:
  """Accuracy per attribute (and all three right) of detections against their prompts."""
  videos = list(videos)
  if len(videos) != len(prompts):
    raise ValueError(f"score: {len(videos)} videos but {len(prompts)} prompts")
  if not videos:
    raise ValueError("score: no videos")
  hits = {a: [] for a in ATTRIBUTES}
  every = []
  for video, prompt in zip(videos, prompts):
    want = parse_prompt(prompt)
    got = dataclasses.asdict(detect(video, cfg))
    ok_all = True
    for a in ATTRIBUTES:
      if want[a] is None:
        continue
      ok = got[a] == want[a]
      hits[a].append(ok)
      ok_all &= ok
    every.append(ok_all)
  out = {a: float(np.mean(v)) for a, v in hits.items() if v}
  out["all"] = float(np.mean(every))
  out["n"] = len(videos)
  return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR in dB between two uint8 images/videos of the same shape (inf if identical)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"psnr: shape mismatch {a.shape} vs {b.shape}")
  mse = float(np.mean((a - b) ** 2))
  return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def first_frame_fidelity(video: np.ndarray, image: np.ndarray) -> float:
  """TI2V: PSNR (dB) of the generated first frame against the conditioning image."""
  return psnr(np.asarray(video)[0], image)


def endpoint_fidelity(video: np.ndarray, first: np.ndarray, last: np.ndarray) -> float:
  """Interpolation: mean PSNR (dB) of the first and last frames against the given keyframes."""
  video = np.asarray(video)
  return 0.5 * (psnr(video[0], first) + psnr(video[-1], last))


def mean_fidelity(values: Iterable[float], cap: float = 100.0) -> float:
  """Mean of PSNR values with infinities capped (identical frames)."""
  vals = [min(v, cap) for v in values]
  return float(np.mean(vals)) if vals else float("nan")


def score_dict(detections: Mapping[str, Detection]) -> dict[str, dict]:
  """Detections keyed by name -> JSON-ready dicts."""
  return {k: dataclasses.asdict(v) for k, v in detections.items()}
