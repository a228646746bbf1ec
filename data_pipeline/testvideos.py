"""Tiny hand-made test videos (moving colored shapes, hard cuts, fades) with ground truth.

Used by the data_pipeline tests and as a fallback corpus for `stiv-bench prep`; the full
synthetic corpus generator lives in data_pipeline/synth.py.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from data_pipeline import video_io


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
  """Draws a filled square, circle or triangle centred at (cx, cy) into img in place."""
  c = tuple(int(v) for v in color)
  x, y, r = int(round(cx)), int(round(cy)), size // 2
  if shape == "square":
    cv2.rectangle(img, (x - r, y - r), (x + r, y + r), c, thickness=-1)
  elif shape == "circle":
    cv2.circle(img, (x, y), r, c, thickness=-1, lineType=cv2.LINE_AA)
  elif shape == "triangle":
    pts = np.array([[x, y - r], [x - r, y + r], [x + r, y + r]], np.int32)
    cv2.fillPoly(img, [pts], c)
  else:
    raise ValueError(f"draw_shape: unknown shape {shape!r}")


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
  video_io.write_video(video.path, frames, video.fps, codec="mpeg4")
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
