"""Stage 1, probe: container metadata of each video without a full decode.

Rows carry the stored size (`height`, `width`), `sample_aspect` [num, den], `rotation`
(degrees counter-clockwise) and the displayed size (`display_height`, `display_width`: SAR
then rotation applied); `num_frames` counts presentation timestamps (exact for VFR).

Bad inputs (missing, zero-length, undecodable, no video stream, no frames) get a reject
reason in their manifest row instead of stopping the batch.
"""
from __future__ import annotations

import hashlib
import os
import re

import av

from stiv_jax import video_io

REJECT_REASONS = ("missing_file", "empty_file", "undecodable", "no_video_stream", "no_frames")


def video_id(relpath: str) -> str:
  """Stable id of a video from its path relative to the input folder."""
  stem = re.sub(r"[^A-Za-z0-9]+", "_", os.path.splitext(relpath)[0]).strip("_")[:40]
  digest = hashlib.sha1(relpath.encode("utf-8")).hexdigest()[:8]
  return f"{stem}-{digest}"


def orientation(height: int, width: int, ratio: float = 1.05) -> str:
  """'portrait' / 'landscape' / 'square' from the displayed (rotated) frame size."""
  if height > ratio * width:
    return "portrait"
  if width > ratio * height:
    return "landscape"
  return "square"


def list_videos(input_dir: str, extensions) -> list[str]:
  """Relative paths of the videos under input_dir, sorted (a clear error if there are none)."""
  if not os.path.isdir(input_dir):
    raise FileNotFoundError(f"--input: {input_dir} is not a folder")
  exts = tuple(e.lower() for e in extensions)
  out = []
  for root, _, files in os.walk(input_dir):
    for name in files:
      if name.lower().endswith(exts):
        out.append(os.path.relpath(os.path.join(root, name), input_dir))
  return sorted(out)


def probe_video(input_dir: str, relpath: str, cfg) -> dict:
  """Pure-ish core: one manifest row of metadata (or a reject reason) for one video file."""
  path = os.path.join(input_dir, relpath)
  row = dict(id=video_id(relpath), relpath=relpath, path=os.path.abspath(path), reject=None,
             error="")
  if not os.path.exists(path):
    return {**row, "reject": "missing_file", "error": f"{path}: no such file"}
  size = os.path.getsize(path)
  row["bytes"] = size
  if size < cfg.probe.min_bytes:
    return {**row, "reject": "empty_file", "error": f"{path}: {size} bytes"}
  try:
    info = video_io.container_info(path, first_frame=bool(cfg.probe.decode_first_frame))
  except av.error.EOFError as err:  # a container that ends before any frame
    return {**row, "reject": "no_frames", "error": f"{path}: {type(err).__name__}: {err}"}
  except av.error.FFmpegError as err:
    return {**row, "reject": "undecodable", "error": f"{path}: {type(err).__name__}: {err}"}
  except ValueError as err:
    return {**row, "reject": "no_video_stream", "error": f"{path}: {err}"}
  except Exception as err:  # PyAV raises many error types for corrupt containers.
    return {**row, "reject": "undecodable", "error": f"{path}: {type(err).__name__}: {err}"}
  rotation = info.pop("rotation", 0)
  row.update(info)
  if rotation is None:
    return {**row, "reject": "no_frames", "error": f"{path}: the video stream has no frames"}
  if info["num_frames"] <= 0:
    return {**row, "reject": "no_frames", "error": f"{path}: container reports 0 frames"}
  if rotation % 90:
    return {**row, "reject": "undecodable",
            "error": f"{path}: display rotation {rotation} is not a multiple of 90 degrees"}
  h, w = video_io.display_size(info["height"], info["width"], info["sample_aspect"], rotation)
  row.update(rotation=rotation, display_height=h, display_width=w,
             orientation=orientation(h, w, cfg.features.portrait_ratio))
  return row
