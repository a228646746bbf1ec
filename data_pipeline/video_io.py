"""Video reading with PyAV: container metadata, and frames decoded once at a chosen size.

Frame indices come from presentation timestamps and the stream's exact (rational) rate, so
they are exact for constant-frame-rate video (variable-rate video gets its nearest index).
"""
from __future__ import annotations

import fractions
from typing import Iterator

import av
import numpy as np


def analysis_size(height: int, width: int, short_side: int) -> tuple[int, int]:
  """(h, w) with the short side `short_side` and the aspect kept; both even."""
  if height <= 0 or width <= 0:
    raise ValueError(f"analysis_size: bad frame size {height}x{width}")
  scale = short_side / min(height, width)
  h = max(2, int(round(height * scale / 2)) * 2)
  w = max(2, int(round(width * scale / 2)) * 2)
  return h, w


def fps_fraction(fps: list[int] | tuple[int, int]) -> fractions.Fraction:
  """[num, den] as stored in manifests -> Fraction."""
  return fractions.Fraction(int(fps[0]), int(fps[1]))


def _stream_rate(stream) -> fractions.Fraction:
  rate = stream.average_rate or stream.guessed_rate or stream.base_rate
  if not rate:
    raise ValueError("video stream has no frame rate")
  return fractions.Fraction(rate.numerator, rate.denominator)


def _frame_index(frame, stream, rate: fractions.Fraction, fallback: int) -> int:
  if frame.pts is None or stream.time_base is None:
    return fallback
  start = stream.start_time or 0
  return int(round((frame.pts - start) * stream.time_base * rate))


def container_info(path: str, first_frame: bool = False) -> dict:
  """Container metadata of the first video stream (no full decode).

  Returns dict(num_frames, frames_exact, fps [num, den], width, height, duration, codec), and
  with `first_frame` also `rotation`: the first decoded frame's display rotation in degrees,
  or None when the stream yields no frame (one open, one frame decoded).
  """
  with av.open(path) as container:
    if not container.streams.video:
      raise ValueError("no video stream")
    stream = container.streams.video[0]
    rate = _stream_rate(stream)
    duration = None
    if stream.duration is not None and stream.time_base is not None:
      duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
      duration = container.duration / av.time_base
    frames = int(stream.frames or 0)
    exact = frames > 0
    if not exact and duration is not None:
      frames = int(round(duration * rate))
    info = dict(num_frames=frames, frames_exact=exact, fps=[rate.numerator, rate.denominator],
                width=int(stream.codec_context.width), height=int(stream.codec_context.height),
                duration=duration if duration is not None else frames / float(rate),
                codec=stream.codec_context.name)
    if first_frame:
      info["rotation"] = None
      try:
        for frame in container.decode(stream):
          info["rotation"] = int(getattr(frame, "rotation", 0) or 0)
          break
      except av.error.EOFError:  # a stream that ends before its first frame
        pass
    return info


def iter_frames(path: str, start: int = 0, end: int | None = None,
                size: tuple[int, int] | None = None, threads: bool = True
                ) -> Iterator[tuple[int, np.ndarray]]:
  """Yields (frame index, RGB uint8 [H, W, 3]) for frames in [start, end), resized to `size`.

  Seeks to the keyframe before `start`; resizing (area interpolation, one reused scaler, as
  in the scene pass) happens in libswscale during conversion.
  """
  from av.video.reformatter import VideoReformatter
  reformatter = VideoReformatter()
  with av.open(path) as container:
    stream = container.streams.video[0]
    if threads:
      stream.thread_type = "AUTO"
    rate = _stream_rate(stream)
    if start > 0 and stream.time_base is not None:
      target = int((stream.start_time or 0) + fractions.Fraction(start) / rate / stream.time_base)
      container.seek(max(target, 0), stream=stream, backward=True, any_frame=False)
    count = 0
    for frame in container.decode(stream):
      idx = _frame_index(frame, stream, rate, count) if start > 0 else count
      count += 1
      if idx < start:
        continue
      if end is not None and idx >= end:
        break
      if size is None:
        arr = reformatter.reformat(frame, format="rgb24").to_ndarray()
      else:
        arr = reformatter.reformat(frame, width=size[1], height=size[0], format="rgb24",
                                   interpolation="AREA").to_ndarray()
      yield idx, arr


def read_frames(path: str, indices: list[int], size: tuple[int, int] | None = None) -> np.ndarray:
  """Decodes exactly the frames `indices` (sorted, unique) -> [N, H, W, 3] uint8.

  A missing index (past the real end) repeats the last decoded frame and is an error only
  when nothing decoded.
  """
  if not indices:
    raise ValueError(f"{path}: read_frames needs at least one frame index")
  wanted = sorted(set(int(i) for i in indices))
  wanted_set = set(wanted)
  got: dict[int, np.ndarray] = {}
  for idx, arr in iter_frames(path, wanted[0], wanted[-1] + 1, size):
    if idx in got or idx not in wanted_set:
      continue
    got[idx] = arr
  if not got:
    raise ValueError(f"{path}: no frames decoded in [{wanted[0]}, {wanted[-1]}]")
  out, last = [], None
  for i in indices:
    if int(i) in got:
      last = got[int(i)]
    elif last is None:
      last = got[min(got)]
    out.append(last)
  return np.stack(out)


def write_video(path: str, frames: np.ndarray, fps: fractions.Fraction | int,
                codec: str = "mpeg4", bits_per_pixel: float = 4.0) -> None:
  """Encodes RGB uint8 frames [N, H, W, 3] into a video file (used to cut clips to files)."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"write_video({path}): expected uint8 [N, H, W, 3], got "
                     f"{frames.dtype} {frames.shape}")
  with av.open(path, mode="w") as container:
    stream = container.add_stream(codec, rate=fractions.Fraction(fps))
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    stream.bit_rate = int(bits_per_pixel * frames.shape[1] * frames.shape[2] * float(fps))
    for arr in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
