"""Stage 5, caption: a captioner interface (frames, prompt) -> text, with three backends.

- `SidecarCaptioner`: the captions that come with a dataset (`<video stem>.json` next to the
  video: {"caption": str}, or {"scenes" | "captions": [{"start"/"start_frame",
  "end"/"end_frame", "caption"}, ...]} with frame spans: the caption overlapping the clip most).
- `VLMCaptioner`: a vision-language model from a LOCAL transformers folder
  (data_pipeline/models/hf.py: the clip's frames as images of one chat prompt); never
  downloads anything.
- `StubCaptioner`: deterministic text from the frames' mean color and motion (NOT a caption
  of the content); only as the opted-in `caption.fallback = 'stub'`.

A clip without a real caption is rejected (`no_caption`, the error names the video and what
was tried) unless `caption.fallback` names a backend; every row records `caption_source`
(sidecar | vlm | stub).
"""
from __future__ import annotations

import json
import os
from typing import Protocol

import numpy as np


class Captioner(Protocol):
  """(frames RGB uint8 [N, H, W, 3], prompt) -> caption; `needs_frames` False skips decoding."""

  name: str
  needs_frames: bool

  def caption(self, frames: np.ndarray | None, prompt: str, clip: dict) -> str:
    ...


class StubCaptioner:
  """Deterministic stub (NOT a model): names the dominant color channel and motion."""

  name = "stub"
  needs_frames = True

  def caption(self, frames, prompt, clip):
    if frames is None or not len(frames):
      raise ValueError(f"clip {clip.get('id')}: stub captioner needs frames")
    mean = np.asarray(frames, np.float32).mean(axis=(0, 1, 2))
    color = ("reddish", "greenish", "bluish")[int(np.argmax(mean))]
    diff = float(np.abs(np.diff(np.asarray(frames, np.float32), axis=0)).mean()) if len(
        frames) > 1 else 0.0
    motion = "moving" if diff > 1.0 else "still"
    return f"a {color} {motion} scene"


def sidecar_path(video_path: str, suffix: str) -> str:
  """`<dir>/<stem><suffix>` next to the video."""
  return os.path.splitext(video_path)[0] + suffix


def pick_sidecar_caption(doc, start: int, end: int, where: str) -> str:
  """Pure core: the caption of span [start, end) from a parsed sidecar document ('' if none)."""
  if isinstance(doc, str):
    return doc
  entries = None
  if isinstance(doc, dict):
    for key in ("scenes", "captions", "shots"):
      if isinstance(doc.get(key), list):
        entries = doc[key]
        break
    if entries is None:
      if isinstance(doc.get("caption"), str):
        return doc["caption"]
      raise ValueError(f"{where}: expected 'caption' or a 'scenes'/'captions' list")
  elif isinstance(doc, list):
    entries = doc
  else:
    raise ValueError(f"{where}: expected a JSON object or list, got {type(doc).__name__}")
  best, best_overlap = "", 0
  for i, e in enumerate(entries):
    if not isinstance(e, dict) or "caption" not in e:
      raise ValueError(f"{where}: captions[{i}] has no 'caption' field")
    s, t = int(e.get("start", e.get("start_frame", 0))), int(e.get("end", e.get("end_frame", 1 << 62)))
    overlap = min(t, end) - max(s, start)
    if overlap > best_overlap:
      best, best_overlap = str(e["caption"]), overlap
  return best


class SidecarCaptioner:
  """Reads the dataset's own caption files; '' when the video has none."""

  name = "sidecar"
  needs_frames = False

  def __init__(self, suffix: str = ".json"):
    self.suffix = suffix

  def caption(self, frames, prompt, clip):
    path = sidecar_path(clip["path"], self.suffix)
    if not os.path.exists(path):
      return ""
    with open(path, "r", encoding="utf-8") as fh:
      try:
        doc = json.load(fh)
      except json.JSONDecodeError as err:
        raise ValueError(f"{path}: caption sidecar is not JSON ({err})") from err
    return pick_sidecar_caption(doc, int(clip["start"]), int(clip["end"]), path)


class VLMCaptioner:
  """A vision-language model loaded from a local folder (transformers, local_files_only)."""

  name = "vlm"
  needs_frames = True

  def __init__(self, path: str, max_new_tokens: int = 64):
    from data_pipeline.models import hf
    self.vlm = hf.LocalVLM(path, max_new_tokens, field="caption.vlm_path")

  def caption(self, frames, prompt, clip):
    return self.vlm.generate([list(frames)], [prompt])[0]


class FallbackCaptioner:
  """Uses `primary`, and `fallback` when the primary gives an empty caption."""

  def __init__(self, primary: Captioner, fallback: Captioner):
    self.primary, self.fallback = primary, fallback
    self.name = f"{primary.name}+{fallback.name}"
    self.needs_frames = primary.needs_frames or fallback.needs_frames

  def caption(self, frames, prompt, clip):
    return describe(self, frames, prompt, clip)[0]


def describe(captioner, frames, prompt: str, clip: dict) -> tuple[str, str]:
  """(caption, source backend name); '' when no backend gave one."""
  if isinstance(captioner, FallbackCaptioner):
    text = captioner.primary.caption(frames, prompt, clip).strip()
    if text:
      return text, captioner.primary.name
    return captioner.fallback.caption(frames, prompt, clip).strip(), captioner.fallback.name
  return captioner.caption(frames, prompt, clip).strip(), captioner.name


def missing_reason(captioner, clip: dict, suffix: str) -> str:
  """The one-line error of a clip no backend captioned: the video and what was tried."""
  names = ([captioner.primary.name, captioner.fallback.name]
           if isinstance(captioner, FallbackCaptioner) else [captioner.name])
  tried = []
  for n in names:
    if n == "sidecar":
      path = sidecar_path(clip["path"], suffix)
      state = "no caption for this span" if os.path.exists(path) else "missing"
      tried.append(f"sidecar {path} ({state})")
    else:
      tried.append(f"{n} (empty caption)")
  return (f"{clip.get('path')} [{clip.get('start')}, {clip.get('end')}): no caption; tried "
          + ", ".join(tried) + "; set caption.fallback='stub' to accept stub captions")


def _single(kind: str, ccfg) -> Captioner:
  if kind == "sidecar":
    return SidecarCaptioner(ccfg.sidecar_suffix)
  if kind == "stub":
    return StubCaptioner()
  if kind == "vlm":
    return VLMCaptioner(ccfg.vlm_path, ccfg.vlm_max_new_tokens)
  raise ValueError(f"caption.backend: unknown backend {kind!r}; expected sidecar|stub|vlm")


def build_captioner(ccfg) -> Captioner:
  """The captioner named by `caption.backend` (with `caption.fallback` when set: '' = none)."""
  primary = _single(ccfg.backend, ccfg)
  if ccfg.fallback and ccfg.fallback != ccfg.backend:
    return FallbackCaptioner(primary, _single(ccfg.fallback, ccfg))
  return primary
