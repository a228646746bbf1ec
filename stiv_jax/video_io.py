"""Video and image files, the one home: metadata, frames by index at display geometry, writers.

Frame indices are positions in presentation order: frame i is the frame with the i-th smallest
presentation timestamp (pts) of the first video stream, read from the demuxed packets (no
decode). Scene detection, feature sampling and encoding all address frames this way, so the
indices agree for variable-frame-rate (VFR) video too. Display geometry = stored frame
resized by the sample aspect ratio (SAR, non-square pixels) and then rotated by the stream's
display matrix (`VideoFrame.rotation`, degrees counter-clockwise).
"""
from __future__ import annotations

import bisect
import fractions
import functools
import os
from typing import Iterator, Sequence

import av
import numpy as np
from PIL import Image


# ---------------------------------------------------------------- geometry and time helpers

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


def aspect_fraction(sample_aspect) -> fractions.Fraction:
  """SAR as [num, den] / Fraction / None -> Fraction (unknown or 0 -> 1:1, as FFmpeg does)."""
  if sample_aspect is None:
    return fractions.Fraction(1)
  if isinstance(sample_aspect, (list, tuple)):
    num, den = int(sample_aspect[0]), int(sample_aspect[1])
    return fractions.Fraction(num, den) if num > 0 and den > 0 else fractions.Fraction(1)
  sar = fractions.Fraction(sample_aspect)
  return sar if sar > 0 else fractions.Fraction(1)


def display_size(height: int, width: int, sample_aspect=None, rotation: int = 0
                 ) -> tuple[int, int]:
  """Displayed (h, w) of stored frames: width scaled by the SAR, then rotation applied."""
  w = max(1, int(round(width * aspect_fraction(sample_aspect))))
  h = int(height)
  return (w, h) if int(rotation) % 180 else (h, w)


def rotate_frames(frames: np.ndarray, rotation: int) -> np.ndarray:
  """Rotates [N, H, W, C] (or [H, W, C]) frames counter-clockwise by `rotation` degrees."""
  if int(rotation) % 90:
    raise ValueError(f"rotation: {rotation} degrees is not a multiple of 90")
  k = (int(rotation) // 90) % 4
  if not k:
    return frames
  axes = (1, 2) if np.ndim(frames) == 4 else (0, 1)
  return np.ascontiguousarray(np.rot90(frames, k=k, axes=axes))


def _stream_rate(stream) -> fractions.Fraction:
  rate = stream.average_rate or stream.guessed_rate or stream.base_rate
  if not rate:
    raise ValueError("video stream has no frame rate")
  return fractions.Fraction(rate.numerator, rate.denominator)


def _stream_sar(stream) -> fractions.Fraction:
  sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
  return aspect_fraction(fractions.Fraction(sar.numerator, sar.denominator) if sar else None)


@functools.lru_cache(maxsize=64)
def _pts_table(path: str, mtime_ns: int, size: int) -> tuple[int, ...] | None:
  """Sorted presentation timestamps of the first video stream's packets (demux only);
  None when some packet has no pts (then frames are counted from the start instead)."""
  del mtime_ns, size  # cache key only
  pts = []
  with av.open(path) as container:
    stream = container.streams.video[0]
    for packet in container.demux(stream):
      if packet.size == 0 or packet.is_discard:  # the flush packet; frames an edit list drops
        continue
      if packet.pts is None:
        return None
      pts.append(int(packet.pts))
  return tuple(sorted(pts))


def presentation_pts(path: str) -> tuple[int, ...] | None:
  """The frame index -> pts table of a video (cached per file version)."""
  st = os.stat(path)
  return _pts_table(os.path.abspath(path), st.st_mtime_ns, st.st_size)


def frame_seconds(path: str, index: int) -> float | None:
  """Presentation time (s, from the stream start) of frame `index`; None if unknown."""
  table = presentation_pts(path)
  if not table:
    return None
  with av.open(path) as container:
    stream = container.streams.video[0]
    tb, start = stream.time_base, stream.start_time or table[0]
  i = min(max(int(index), 0), len(table) - 1)
  extra = 0.0 if index < len(table) else (index - len(table) + 1) * (
      (table[-1] - table[0]) / max(len(table) - 1, 1))
  return float((table[i] - start + extra) * tb)


# ---------------------------------------------------------------- metadata

def container_info(path: str, first_frame: bool = False) -> dict:
  """Metadata of the first video stream (one demux, at most one frame decoded).

  Returns dict(num_frames, frames_exact, fps [num, den] (average rate), width, height
  (stored), sample_aspect [num, den], duration, codec, vfr); with `first_frame` also
  `rotation`: the first decoded frame's display rotation in degrees (counter-clockwise), or
  None when the stream yields no frame. num_frames counts the packets' timestamps (exact,
  VFR included) when every packet has one, else it comes from the container.
  """
  table = presentation_pts(path)
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
    if table is not None:
      frames, exact = len(table), True
    else:
      frames = int(stream.frames or 0)
      exact = frames > 0
      if not exact and duration is not None:
        frames = int(round(duration * rate))
    vfr = False
    if table and len(table) > 2 and stream.time_base is not None:
      gaps = np.diff(np.asarray(table, np.int64))
      vfr = bool(gaps.max() > 1.5 * max(gaps.min(), 1))
    sar = _stream_sar(stream)
    info = dict(num_frames=frames, frames_exact=exact, fps=[rate.numerator, rate.denominator],
                width=int(stream.codec_context.width), height=int(stream.codec_context.height),
                sample_aspect=[sar.numerator, sar.denominator],
                duration=duration if duration is not None else frames / float(rate),
                codec=stream.codec_context.name, vfr=vfr)
    if first_frame:
      info["rotation"] = None
      try:
        for frame in container.decode(stream):
          info["rotation"] = int(round(getattr(frame, "rotation", 0) or 0)) % 360
          break
      except av.error.EOFError:  # a stream that ends before its first frame
        pass
    return info


# ---------------------------------------------------------------- frames by index

def iter_decoded(path: str, start: int = 0, end: int | None = None, threads: bool = True
                 ) -> Iterator[tuple[int, "av.VideoFrame"]]:
  """Yields (frame index, decoded av.VideoFrame) for frames in [start, end), presentation
  order; seeks to the keyframe before `start` when every packet has a pts."""
  table = presentation_pts(path) if start > 0 else None
  with av.open(path) as container:
    stream = container.streams.video[0]
    if threads:
      stream.thread_type = "AUTO"
    if table is not None and start < len(table):
      container.seek(table[start], stream=stream, backward=True, any_frame=False)
    count = 0
    for frame in container.decode(stream):
      if table is not None and frame.pts is not None:
        idx = bisect.bisect_left(table, int(frame.pts))
      else:
        idx = count
      count += 1
      if idx < start:
        continue
      if end is not None and idx >= end:
        break
      yield idx, frame


class DisplayConverter:
  """av.VideoFrame -> uint8 [H, W, 3] at a displayed size (h, w): scaled in libswscale (one
  reused scaler context), then rotated; `size` None = SAR-corrected native size."""

  def __init__(self, size: tuple[int, int] | None = None, *, rotation: int = 0,
               sample_aspect=None, pixel_format: str = "rgb24", interpolation: str = "AREA"):
    from av.video.reformatter import VideoReformatter
    self.reformatter = VideoReformatter()
    self.rotation, self.sample_aspect = int(rotation), sample_aspect
    self.pixel_format, self.interpolation = pixel_format, interpolation
    self.size = None
    if size is not None:  # stored-orientation size to scale to
      self.size = (int(size[1]), int(size[0])) if self.rotation % 180 else (
          int(size[0]), int(size[1]))

  def __call__(self, frame) -> np.ndarray:
    if self.size is None:
      self.size = display_size(frame.height, frame.width, self.sample_aspect)
    arr = self.reformatter.reformat(frame, width=self.size[1], height=self.size[0],
                                    format=self.pixel_format,
                                    interpolation=self.interpolation).to_ndarray()
    return rotate_frames(arr, self.rotation)


def iter_frames(path: str, start: int = 0, end: int | None = None,
                size: tuple[int, int] | None = None, threads: bool = True, *,
                rotation: int = 0, sample_aspect=None, pixel_format: str = "rgb24",
                interpolation: str = "AREA") -> Iterator[tuple[int, np.ndarray]]:
  """Yields (frame index, uint8 [H, W, 3]) for frames in [start, end), presentation order, at
  display geometry: `size` is the displayed (h, w) (default: the SAR-corrected native size),
  scaled in libswscale, then rotated by `rotation`."""
  if size is None and sample_aspect is None:
    sample_aspect = container_info(path)["sample_aspect"]
  convert = DisplayConverter(size, rotation=rotation, sample_aspect=sample_aspect,
                             pixel_format=pixel_format, interpolation=interpolation)
  for idx, frame in iter_decoded(path, start, end, threads):
    yield idx, convert(frame)


def read_frames(path: str, indices: Sequence[int], size: tuple[int, int] | None = None, *,
                rotation: int = 0, sample_aspect=None) -> np.ndarray:
  """Decodes exactly the frames `indices` -> uint8 RGB [N, H, W, 3] at display geometry.

  `size` is the displayed (h, w) (None: SAR-corrected native size); indices past the real
  end repeat the last decoded frame; an error when nothing decoded.
  """
  if not len(indices):
    raise ValueError(f"{path}: read_frames needs at least one frame index")
  wanted = sorted(set(int(i) for i in indices))
  wanted_set = set(wanted)
  got: dict[int, np.ndarray] = {}
  for idx, arr in iter_frames(path, wanted[0], wanted[-1] + 1, size, rotation=rotation,
                              sample_aspect=sample_aspect):
    if idx in wanted_set and idx not in got:
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


def read_display_frames(path: str, indices: Sequence[int], *, rotation: int | None = None,
                        sample_aspect=None, size: tuple[int, int] | None = None) -> np.ndarray:
  """Frames `indices` (presentation order, as scene detection counts) at DISPLAY geometry.

  uint8 [N, H, W, 3]: non-square pixels resized to the display aspect and the rotation
  applied; `rotation` / `sample_aspect` default to the stream's own (probe rows carry them as
  `rotation` and `sample_aspect`); `size` optionally scales to a displayed (h, w).
  """
  if rotation is None or sample_aspect is None:
    info = container_info(path, first_frame=rotation is None)
    rotation = info.get("rotation") or 0 if rotation is None else rotation
    sample_aspect = info["sample_aspect"] if sample_aspect is None else sample_aspect
  return read_frames(path, indices, size, rotation=int(rotation), sample_aspect=sample_aspect)


def read_video(path: str) -> np.ndarray:
  """Decodes every frame of a video file to uint8 RGB [T, H, W, 3] (stored geometry)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"read_video: no such file {path}")
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise ValueError(f"read_video({path}): no video stream")
      frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  except av.error.FFmpegError as e:
    raise ValueError(f"read_video({path}): cannot decode: {e}") from e
  if not frames:
    raise ValueError(f"read_video({path}): no frames")
  return np.stack(frames)


# ---------------------------------------------------------------- writers

def write_mp4(path: str, frames: np.ndarray, fps: int | fractions.Fraction = 8,
              codec: str = "libx264", crf: int = 12, *, bits_per_pixel: float | None = None,
              rotation: int = 0, sample_aspect=None, pts: Sequence[int] | None = None,
              time_base: fractions.Fraction | None = None, options: dict | None = None,
              threads: int | None = None) -> None:
  """Writes uint8 RGB frames [T, H, W, 3] to a video file (yuv420p; odd sizes edge-padded).

  `bits_per_pixel` sets a bit rate (codecs without crf, e.g. mpeg4); `options` are encoder
  options (default: libx264's crf); `threads` fixes the encoder's thread count (1 gives the
  same bytes on every machine); `rotation` (degrees counter-clockwise) and `sample_aspect` are
  stored as display metadata; `pts` (in `time_base` units) writes a variable-frame-rate stream.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"write_mp4({path}): expected uint8 frames [T, H, W, 3], got "
                     f"{frames.dtype} {frames.shape}")
  if pts is not None and len(pts) != len(frames):
    raise ValueError(f"write_mp4({path}): {len(pts)} pts for {len(frames)} frames")
  h, w = frames.shape[1:3]
  frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with av.open(path, mode="w") as container:
    stream = container.add_stream(codec, rate=fractions.Fraction(fps))
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    if time_base is not None:
      stream.codec_context.time_base = time_base
      stream.time_base = time_base
    if sample_aspect is not None:
      stream.codec_context.sample_aspect_ratio = aspect_fraction(sample_aspect)
    if rotation:
      stream.set_display_rotation(int(rotation))
    if threads is not None:
      stream.thread_count = int(threads)
    if bits_per_pixel is not None:
      stream.bit_rate = int(bits_per_pixel * frames.shape[1] * frames.shape[2] * float(fps))
    if options is not None:
      stream.options = {k: str(v) for k, v in options.items()}
    elif codec == "libx264" and bits_per_pixel is None:
      stream.options = {"crf": str(int(crf))}
    for i, arr in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
      if pts is not None:
        frame.pts, frame.time_base = int(pts[i]), time_base
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def to_uint8(frames: np.ndarray) -> np.ndarray:
  """Frames in [-1, 1] -> uint8 in [0, 255]."""
  return np.clip(np.round((np.asarray(frames, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_unit(frames: np.ndarray) -> np.ndarray:
  """uint8 frames -> float32 in [-1, 1]."""
  return np.asarray(frames, np.float32) / 127.5 - 1.0


def read_image(path: str) -> np.ndarray:
  """Reads an image file to uint8 RGB [H, W, 3]."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"read_image: no such file {path}")
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes uint8 frames [N, H, W, 3] to (height, width) with bicubic filtering."""
  return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BICUBIC))
                   for f in frames])


def write_gif(path: str, frames: np.ndarray, fps: int = 8) -> None:
  """Writes uint8 frames [T, H, W, 3] as a looping GIF."""
  images = [Image.fromarray(f) for f in np.asarray(frames)]
  images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                 duration=max(1, int(1000 / fps)))


def contact_sheet(videos: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
  """uint8 videos (each [T, H, W, 3], same H, W) -> one image: a row per video, a column
  per frame."""
  t = max(v.shape[0] for v in videos)
  h, w = videos[0].shape[1:3]
  sheet = np.full((len(videos) * (h + pad) + pad, t * (w + pad) + pad, 3), 255, np.uint8)
  for i, v in enumerate(videos):
    for j, frame in enumerate(v):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      sheet[y:y + h, x:x + w] = frame
  return sheet


def write_png(path: str, image: np.ndarray) -> None:
  """Writes a uint8 [H, W, 3] image as PNG."""
  Image.fromarray(np.asarray(image, np.uint8)).save(path)
