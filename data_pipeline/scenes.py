"""Stage 2, scenes: single-shot spans from PySceneDetect's content and adaptive detectors.

Frames are pushed one at a time (decoded once, at the analysis resolution); spans are
emitted as soon as no later cut can change them, so memory stays bounded by the longest
clip. Spans are frame indices [start, end) with the video's exact rational fps. Black and
fading frames are cut out of spans; shots longer than `max_clip_frames` are split into
consecutive pieces of that length; pieces shorter than `min_clip_frames` are dropped.
"""
from __future__ import annotations

import fractions
import os
from typing import Iterable

import cv2
import numpy as np
from scenedetect import FrameTimecode
from scenedetect.detectors import AdaptiveDetector, ContentDetector

from data_pipeline import video_io


class FrameScorer:
  """ContentDetector's frame score, computed once per frame and shared by all detectors.

  Same formula as scenedetect 0.7.2's ContentDetector (weighted mean absolute difference of
  the HSV channels of consecutive frames; edges not supported); with luma_only only the V
  channel is converted and compared. Also records each frame's peak level (for fades).
  """

  def __init__(self, luma_only: bool):
    self.luma_only = luma_only
    self.weights = (ContentDetector.LUMA_ONLY_WEIGHTS if luma_only
                    else ContentDetector.DEFAULT_COMPONENT_WEIGHTS)
    if self.weights.delta_edges:
      raise ValueError("scenes: edge weights are not supported by the shared frame scorer")
    self.idx, self.score, self.level, self._prev = -1, 0.0, 0.0, None

  def push(self, idx: int, frame_bgr: np.ndarray) -> None:
    """Computes frame `idx`'s score against the previous frame."""
    hsv = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2HSV)
    chans = [cv2.extractChannel(hsv, 2)] if self.luma_only else list(cv2.split(hsv))
    weights = ([self.weights.delta_lum] if self.luma_only else
               [self.weights.delta_hue, self.weights.delta_sat, self.weights.delta_lum])
    self.level = float(chans[-1].max())  # V = max(B, G, R): the frame's peak
    if self._prev is None:
      self.score = 0.0
    else:
      diffs = [cv2.mean(cv2.absdiff(a, b))[0] for a, b in zip(chans, self._prev)]
      self.score = sum(d * w for d, w in zip(diffs, weights)) / sum(abs(w) for w in weights)
    self.idx, self._prev = idx, chans


class _SharedContent(ContentDetector):
  """ContentDetector whose frame score comes from a shared FrameScorer."""

  def __init__(self, scorer: FrameScorer, **kw):
    super().__init__(**kw)
    self._scorer = scorer

  def _calculate_frame_score(self, timecode, frame_img) -> float:
    return self._scorer.score


class _SharedAdaptive(AdaptiveDetector):
  """AdaptiveDetector whose frame score comes from a shared FrameScorer."""

  def __init__(self, scorer: FrameScorer, **kw):
    super().__init__(**kw)
    self._scorer = scorer

  def _calculate_frame_score(self, timecode, frame_img) -> float:
    return self._scorer.score


def make_detectors(scfg, scorer: FrameScorer | None = None) -> list:
  """PySceneDetect detectors named in `scfg.detectors`, thresholds from the config.

  With a `scorer`, the detectors share its per-frame score (computed once, not per detector).
  """
  out = []
  for name in scfg.detectors:
    if name == "content":
      kw = dict(threshold=scfg.content_threshold, min_scene_len=int(scfg.min_scene_len),
                luma_only=scfg.luma_only)
      out.append(_SharedContent(scorer, **kw) if scorer else ContentDetector(**kw))
    elif name == "adaptive":
      kw = dict(adaptive_threshold=scfg.adaptive_threshold,
                min_scene_len=int(scfg.min_scene_len),
                window_width=int(scfg.adaptive_window_width),
                min_content_val=scfg.adaptive_min_content_val, luma_only=scfg.luma_only)
      out.append(_SharedAdaptive(scorer, **kw) if scorer else AdaptiveDetector(**kw))
    else:
      raise ValueError(f"scenes.detectors: unknown detector {name!r}; expected content|adaptive")
  if not out:
    raise ValueError("scenes.detectors: at least one detector is needed")
  return out


def combine_cuts(per_detector: list[list[int]], mode: str, window: int) -> list[int]:
  """Union or intersection of several detectors' cut lists; cuts within `window` are one."""
  if mode == "union":
    merged: list[int] = []
    for c in sorted(c for cuts in per_detector for c in cuts):
      if not merged or c - merged[-1] > window:
        merged.append(c)
    return merged
  if mode == "intersection":
    first, rest = per_detector[0], per_detector[1:]
    return sorted(c for c in first
                  if all(any(abs(c - o) <= window for o in other) for other in rest))
  raise ValueError(f"scenes.combine: unknown mode {mode!r}; expected union|intersection")


def split_segment(start: int, end: int, levels: np.ndarray, base: int,
                  scfg) -> list[tuple[int, int]]:
  """Pure core: [start, end) of one shot -> spans without black/fading frames, min/max applied.

  `levels[i - base]` is frame i's peak level (max over pixels of max(B, G, R)): the peak,
  not the mean, so small bright objects on a black background still count. Frames below `black_level` split the shot; at
  the ends of each remaining run, frames below `fade_trim_ratio` x the run's median level
  (the dim part of a fade) are trimmed.
  """
  lv = np.asarray(levels[start - base:end - base], np.float32)
  dark = lv < scfg.black_level
  runs, run_start = [], None
  for i in range(len(lv) + 1):
    is_dark = i == len(lv) or bool(dark[i])
    if not is_dark and run_start is None:
      run_start = i
    elif is_dark and run_start is not None:
      runs.append((run_start, i))
      run_start = None
  out = []
  mx, mn = int(scfg.max_clip_frames), int(scfg.min_clip_frames)
  for s, e in runs:
    floor = scfg.fade_trim_ratio * float(np.median(lv[s:e]))
    while s < e and lv[s] < floor:
      s += 1
    while e > s and lv[e - 1] < floor:
      e -= 1
    s, e = s + start, e + start
    while e - s > mx:
      out.append((s, s + mx))
      s += mx
    if e - s >= mn:
      out.append((s, e))
  return out


class SceneSplitter:
  """Streaming scene splitter: push frames in order, get finished spans (and their frames)."""

  def __init__(self, scfg, fps: fractions.Fraction, keep_frames: bool = False):
    self.cfg, self.fps, self.keep_frames = scfg, fractions.Fraction(fps), keep_frames
    self.scorer = FrameScorer(bool(scfg.luma_only))
    self.detectors = make_detectors(scfg, self.scorer)
    self.cuts: list[list[int]] = [[] for _ in self.detectors]
    self.lag = max(int(scfg.min_scene_len), int(scfg.adaptive_window_width)) + 2 + int(
        scfg.merge_window)
    self.base = 0           # first frame not yet emitted
    self.count = 0          # frames pushed
    self.levels: list[float] = []   # peak level per frame, from `base` on
    self.frames: list[np.ndarray] = []  # from `base` on (when keep_frames)

  def _timecode(self, idx: int) -> FrameTimecode:
    return FrameTimecode(idx, fps=self.fps)

  def push(self, frame_bgr: np.ndarray) -> list[tuple[int, int, list[np.ndarray] | None]]:
    """Feeds the next frame (BGR uint8); returns spans that are now final."""
    idx = self.count
    self.count += 1
    tc = self._timecode(idx)
    self.scorer.push(idx, frame_bgr)
    for k, det in enumerate(self.detectors):
      self.cuts[k].extend(int(c.frame_num) for c in det.process_frame(tc, frame_bgr))
    self.levels.append(self.scorer.level)
    if self.keep_frames:
      self.frames.append(frame_bgr)
    horizon = idx + 1 - self.lag
    if horizon - self.base >= int(self.cfg.max_clip_frames) or self._cut_before(horizon):
      return self._flush(horizon)
    return []

  def finish(self) -> list[tuple[int, int, list[np.ndarray] | None]]:
    """Ends the video: post-processes detectors and emits every remaining span."""
    if self.count == 0:
      return []
    tc = self._timecode(self.count - 1)
    for k, det in enumerate(self.detectors):
      self.cuts[k].extend(int(c.frame_num) for c in det.post_process(tc))
    return self._flush(self.count)

  def all_cuts(self) -> list[int]:
    """The combined cut list so far (frame index of each new shot's first frame)."""
    cuts = combine_cuts(self.cuts, self.cfg.combine, int(self.cfg.merge_window))
    return [c for c in cuts if 0 < c < max(self.count, 1)]

  def _cut_before(self, horizon: int) -> bool:
    return any(self.base < c <= horizon for cuts in self.cuts for c in cuts)

  def _flush(self, horizon: int):
    out = []
    cuts = [c for c in self.all_cuts() if self.base < c <= horizon]
    bounds = cuts + ([horizon] if horizon == self.count else [])
    for b in bounds:
      out.extend(self._emit(self.base, b))
    # A long shot with no cut yet: emit full max-length pieces that end before the horizon.
    mx = int(self.cfg.max_clip_frames)
    while horizon - self.base >= mx:
      out.extend(self._emit(self.base, self.base + mx))
    return out

  def _emit(self, start: int, end: int):
    spans = split_segment(start, end, np.asarray(self.levels), self.base, self.cfg)
    out = [(s, e, self.frames[s - self.base:e - self.base] if self.keep_frames else None)
           for s, e in spans]
    drop = end - self.base
    self.levels = self.levels[drop:]
    if self.keep_frames:
      self.frames = self.frames[drop:]
    self.base = end
    return out


def clip_id(vid: str, start: int, end: int) -> str:
  """Stable clip id from the video id and the span."""
  return f"{vid}-{start:07d}-{end:07d}"


def clip_row(video_row: dict, start: int, end: int) -> dict:
  """Manifest row of one clip: a (video, span) reference with the exact fps."""
  fps = video_row["fps"]
  rate = video_io.fps_fraction(fps)
  return dict(id=clip_id(video_row["id"], start, end), video_id=video_row["id"],
              path=video_row["path"], relpath=video_row["relpath"], start=start, end=end,
              num_frames=end - start, fps=fps, start_seconds=float(start / rate),
              end_seconds=float(end / rate), height=video_row["display_height"],
              width=video_row["display_width"], orientation=video_row["orientation"],
              rotation=video_row.get("rotation", 0), reject=None)


def scenes_for_video(video_row: dict, scfg, size: tuple[int, int]) -> tuple[list[dict], list[int]]:
  """Decodes one video at `size` and returns (clip rows, detected cuts)."""
  splitter = SceneSplitter(scfg, video_io.fps_fraction(video_row["fps"]))
  spans = []
  for _, frame in iter_bgr(video_row["path"], size):
    spans.extend(splitter.push(frame))
  spans.extend(splitter.finish())
  return [clip_row(video_row, s, e) for s, e, _ in spans], splitter.all_cuts()


def iter_bgr(path: str, size: tuple[int, int],
             interpolation: str = "AREA") -> Iterable[tuple[int, np.ndarray]]:
  """All frames of a video as BGR uint8 at `size`: one decode, scaled in libswscale.

  One VideoReformatter is reused for the whole video (PyAV's `frame.reformat` builds a new
  scaler context per frame, which costs more than the decode at small sizes).
  """
  import av
  from av.video.reformatter import VideoReformatter
  reformatter = VideoReformatter()
  with av.open(path) as container:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    for i, frame in enumerate(container.decode(stream)):
      yield i, reformatter.reformat(frame, width=size[1], height=size[0], format="bgr24",
                                    interpolation=interpolation).to_ndarray()


def cut_clip_to_file(row: dict, out_dir: str, codec: str) -> str:
  """Writes a clip's frames to `<out_dir>/<clip id>.mp4` (when scenes.cut_to_files is set)."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{row['id']}.mp4")
  if os.path.exists(path):
    return path
  frames = np.stack([f for _, f in video_io.iter_frames(row["path"], row["start"], row["end"])])
  tmp = path + ".tmp.mp4"
  video_io.write_video(tmp, frames, video_io.fps_fraction(row["fps"]), codec=codec)
  os.replace(tmp, path)
  return path
