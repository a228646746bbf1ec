"""Built-in semantic score for the synthetic corpus: read color, shape and motion from pixels.

Prompts of the synthetic corpus read "a {color} {shape} moving {direction}". The detector
estimates the background as the per-frame median color, takes the pixels far from it as the
object, names its color by the nearest palette entry (brightness-free), its shape by the
best-fitting rendered shape (placed by the object's soft mass and centroid), and its direction
by the dominant axis of its centroid's motion. A hand-written detector, NOT a learned classifier.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterable, Mapping, Sequence

import numpy as np

from stiv_jax.data import synthetic as corpus

# name -> RGB 0..255: the synthetic corpus palette, shapes and directions.
PALETTE = dict(corpus.COLORS)
SHAPES = tuple(corpus.SHAPES)
DIRECTIONS = tuple(corpus.DIRECTIONS)
ATTRIBUTES = ("color", "shape", "direction")
# Fixed prompt sets over every color, shape and direction: 'tune' (the during-training sample
# grid, what settings were chosen on) and 'heldout' (final scores only), disjoint.
PROMPT_SETS = {name: os.path.join(os.path.dirname(__file__), "prompts", f"synthetic_{name}.txt")
               for name in ("tune", "heldout")}


def load_prompts(path: str) -> list[str]:
  """Prompts of a text file, one per line ('#' comment lines and blank lines skipped); a name
  of PROMPT_SETS ('tune', 'heldout') reads that set."""
  path = PROMPT_SETS.get(path, path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"prompts file {path!r} not found")
  with open(path) as fh:
    prompts = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
  if not prompts:
    raise ValueError(f"prompts file {path}: no prompts")
  return prompts


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  """Thresholds of the detector (every one a field)."""

  min_contrast: float = 40.0     # min RGB distance from the background for object pixels
  rel_contrast: float = 0.5      # ... and at least this fraction of the frame's max distance
  min_pixels: int = 3            # frames with fewer object pixels are skipped
  core_fraction: float = 0.5     # color from the object's most contrasting pixels (this share)
  background_margin: int = 4     # background level: pixels this far (box) from the object count
  occupancy_floor: float = 0.15  # soft occupancy: distance / object level, zero below this
  compare_factor: int = 4        # shape fit compares box-averaged maps at this factor
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


def render_shape(shape: str, cx: float, cy: float, radius: float, height: int, width: int,
                 supersample: int = 4) -> np.ndarray:
  """[H, W] float coverage of a shape centred at (cx, cy) with half-size `radius` (pixels): the
  corpus geometry (stiv_jax.data.synthetic.shape_mask) on a supersampled grid, box-averaged."""
  if shape not in SHAPES:
    raise ValueError(f"render_shape: unknown shape {shape!r}; expected one of {SHAPES}")
  ss = int(supersample)
  inside = corpus.shape_mask(shape, cx * ss, cy * ss, radius * ss, (height * ss, width * ss))
  return inside.reshape(height, ss, width, ss).mean(axis=(1, 3))


# Area of each shape in units of radius^2, and its centroid's offset below its centre / r.
_AREA = {"circle": np.pi, "square": 4.0, "triangle": 2.0}
_CENTROID_DY = {"circle": 0.0, "square": 0.0, "triangle": 1.0 / 3.0}


def _coarse(a: np.ndarray, f: int) -> np.ndarray:
  """Box-averages [H, W] by f (edge-padded to a multiple of f)."""
  h, w = a.shape
  a = np.pad(a, ((0, (-h) % f), (0, (-w) % f)), mode="edge")
  return a.reshape(a.shape[0] // f, f, a.shape[1] // f, f).mean(axis=(1, 3))


def classify_shape(occupancy: np.ndarray, compare_factor: int = 4
                   ) -> tuple[str | None, dict[str, float]]:
  """The shape whose fitted rendering best matches a soft occupancy map [H, W] in [0, 1].

  Each candidate is placed by the occupancy's mass (size) and centroid (position), rendered,
  and compared (L1) after both are box-averaged by `compare_factor`, which makes the fit
  insensitive to blocky or blurred decoders. Scores are 1 - L1 / (2 * mass), higher is better.
  """
  mass = float(occupancy.sum())
  if mass <= 0:
    return None, {}
  h, w = occupancy.shape
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
  cx = float((occupancy * xx).sum() / mass)
  cy = float((occupancy * yy).sum() / mass)
  target = _coarse(occupancy, compare_factor)
  scores = {}
  for name in SHAPES:
    r = float(np.sqrt(mass / _AREA[name]))
    tpl = render_shape(name, cx, cy - _CENTROID_DY[name] * r, r, h, w)
    err = np.abs(_coarse(tpl, compare_factor) - target).sum() * compare_factor ** 2
    scores[name] = float(1.0 - err / (2.0 * mass))
  return max(scores, key=scores.get), scores


def _chroma(rgb: np.ndarray) -> np.ndarray:
  """RGB divided by its largest channel, so a faded color keeps its name."""
  rgb = np.asarray(rgb, np.float32)
  return rgb / np.maximum(rgb.max(axis=-1, keepdims=True), 1e-3)


def classify_color(rgb: np.ndarray, cfg: DetectorConfig = DetectorConfig()) -> str:
  """Nearest palette color name to an RGB triple (0..255), compared brightness-free."""
  names = [n for n, _ in cfg.palette]
  table = _chroma(np.array([c for _, c in cfg.palette], np.float32))
  return names[int(np.argmin(np.linalg.norm(table - _chroma(rgb), axis=-1)))]


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
    level = float(np.quantile(d, 0.9))
    occ = np.clip(dist[i] / max(level, 1e-6), 0.0, 1.0)
    occ = np.where(occ >= cfg.occupancy_floor, occ, 0.0)
    _, scores = classify_shape(occ, cfg.compare_factor)
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


def _dilate(mask: np.ndarray, margin: int) -> np.ndarray:
  """[H, W] bool grown by a (2 margin + 1) square box (separable max filter)."""
  if margin <= 0:
    return mask
  out = mask
  for axis in (0, 1):
    pad = [(0, 0), (0, 0)]
    pad[axis] = (margin, margin)
    win = np.lib.stride_tricks.sliding_window_view(np.pad(out, pad), 2 * margin + 1, axis=axis)
    out = win.any(axis=-1)
  return out


def background_level(frames: np.ndarray, cfg: DetectorConfig = DetectorConfig()) -> float:
  """Mean absolute pixel value on [0, 1] outside the object (its detected mask grown by
  cfg.background_margin px): 0 for a clean black background, residual noise raises it."""
  frames = np.asarray(frames)
  masks, _ = object_masks(frames, cfg)
  values = []
  for frame, m in zip(frames, masks):
    outside = ~_dilate(m, cfg.background_margin)
    if outside.any():
      values.append(float(np.abs(frame[outside].astype(np.float32)).mean()) / 255.0)
  return float(np.mean(values)) if values else 0.0


def score(videos: Iterable[np.ndarray], prompts: Sequence[str],
          cfg: DetectorConfig = DetectorConfig()) -> dict[str, float]:
  """Accuracy per attribute (and all three right) of detections against their prompts, and the
  mean background level (background_level) of the videos."""
  videos = list(videos)
  if len(videos) != len(prompts):
    raise ValueError(f"score: {len(videos)} videos but {len(prompts)} prompts")
  if not videos:
    raise ValueError("score: no videos")
  hits = {a: [] for a in ATTRIBUTES}
  every, background = [], []
  for video, prompt in zip(videos, prompts):
    want = parse_prompt(prompt)
    if all(v is None for v in want.values()):  # nothing to check: refuse, never a silent 1.0
      raise ValueError(f"synthetic score: prompt {prompt!r} names no color, shape or direction "
                       f"of the synthetic corpus (colors {sorted(PALETTE)}, shapes "
                       f"{list(SHAPES)}, directions {list(DIRECTIONS)})")
    background.append(background_level(video, cfg))
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
  out["background"] = float(np.mean(background))
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
