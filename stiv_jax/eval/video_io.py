"""Writing and reading sample videos: MP4 (PyAV), GIF and PNG contact sheets (Pillow)."""
from __future__ import annotations

import os
from typing import Sequence

import av
import numpy as np
from PIL import Image


def to_uint8(frames: np.ndarray) -> np.ndarray:
  """Frames in [-1, 1] -> uint8 in [0, 255]."""
  return np.clip(np.round((np.asarray(frames, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_unit(frames: np.ndarray) -> np.ndarray:
  """uint8 frames -> float32 in [-1, 1]."""
  return np.asarray(frames, np.float32) / 127.5 - 1.0


def write_mp4(path: str, frames: np.ndarray, fps: int = 8, codec: str = "libx264",
              crf: int = 12) -> None:
  """Writes uint8 frames [T, H, W, 3] to an MP4 (yuv420p; odd sizes are padded by edge copy)."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"write_mp4({path}): expected uint8 frames [T, H, W, 3], got "
                     f"{frames.dtype} {frames.shape}")
  h, w = frames.shape[1:3]
  frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with av.open(path, mode="w") as container:
    stream = container.add_stream(codec, rate=int(fps))
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    if codec == "libx264":
      stream.options = {"crf": str(int(crf))}
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def read_video(path: str) -> np.ndarray:
  """Decodes every frame of a video file to uint8 RGB [T, H, W, 3]."""
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
