"""Stage 2, scenes: single-shot spans from shot-boundary detectors, combinable in config.

Detectors (`scenes.detectors`): PySceneDetect's `content` (HSV/luma frame differences: hard
cuts), `adaptive` (the same score against its rolling average), `threshold` (mean level
through black: fades) and `transnetv2` (the TransNetV2 network, data_pipeline/models/
transnetv2.py: hard cuts and gradual transitions; a transition of several frames gives a cut
at each end, so the transition frames fall out of the clips). TransNetV2 costs ~0.76 GFLOP per
frame of each 100-frame window (1.5 GFLOP per frame kept), ~10x the CPU time of the rest of
the pipeline on 720p footage, so by default it is a cascade (`scenes.transnetv2_frames=
'candidates'`): it runs only on the windows near frames that a cheap per-frame signal flags
(`CandidateGate`); 'all' runs it on every window. Their cuts are combined by union or
intersection; every cut records which detectors found it (`attributed_cuts`).
Frames are pushed one at a time (decoded once, at the analysis resolution, display
geometry, indexed by presentation timestamp); spans are emitted as soon as no later cut can
change them, so memory stays bounded by the longest clip. Spans are frame indices [start, end)
with the video's exact rational fps. Black and fading frames are cut out of spans; shots longer
than `max_clip_frames` are split into consecutive pieces of that length; pieces shorter than
`min_clip_frames` are dropped.
"""
from __future__ import annotations

import collections
import fractions
import os
from typing import Iterable

import cv2
import numpy as np
from scenedetect import FrameTimecode
from scenedetect.detectors import AdaptiveDetector, ContentDetector, ThresholdDetector

from stiv_jax import video_io


class FrameScorer:
  """ContentDetector's frame score, computed once per frame and shared by all detectors.

  Same formula as scenedetect 0.7.2's ContentDetector (weighted mean absolute difference of
  the HSV channels of consecutive frames; edges not supported); with luma_only only the V
  channel is converted and compared. Also records each frame's peak level (for fades) and,
  with `hist_lag` > 0, `hist_change`: the total-variation distance (half L1, 0..1) between the
  32-bin V histograms of this frame and of the frame `hist_lag` earlier (the first frame
  before that), the cheap signal of the TransNetV2 cascade (`CandidateGate`).
  """

  HIST_BINS = 32

  def __init__(self, luma_only: bool, hist_lag: int = 0):
    self.luma_only = luma_only
    self.weights = (ContentDetector.LUMA_ONLY_WEIGHTS if luma_only
                    else ContentDetector.DEFAULT_COMPONENT_WEIGHTS)
    if self.weights.delta_edges:
      raise ValueError("scenes: edge weights are not supported by the shared frame scorer")
    self.idx, self.score, self.level, self._prev = -1, 0.0, 0.0, None
    self.hist_lag, self.hist_change = int(hist_lag), 0.0
    self._hists: collections.deque = collections.deque(maxlen=self.hist_lag + 1)

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
    if self.hist_lag:
      hist = cv2.calcHist([chans[-1]], [0], None, [self.HIST_BINS], [0, 256]).ravel()
      self._hists.append(hist / max(float(hist.sum()), 1.0))
      self.hist_change = 0.5 * float(np.abs(self._hists[-1] - self._hists[0]).sum())
    self.idx, self._prev = idx, chans


TRANSNETV2_FRAMES = ("candidates", "all")


class CandidateGate:
  """The cascade's cheap per-frame test: is this frame near a possible transition?

  A frame is a candidate when its HSV content score (`FrameScorer.score`) reaches
  `transnetv2_gate_content` or its V-histogram change over `transnetv2_gate_lag` frames
  reaches `transnetv2_gate_hist`; TransNetV2 then runs on the 100-frame windows whose kept
  frames lie within `transnetv2_dilate` frames of a candidate. The histogram change over 8
  frames (the default lag) is the gradual-transition signal (a 12..72-frame dissolve between real shots: >= 0.2;
  steady real shots: <= 0.08); the content score catches colour-only changes. Frames it does
  not flag are never shown to TransNetV2 (the recall risk: a transition between shots of
  near-equal brightness histograms and colours; the other detectors still run on every frame).
  """

  def __init__(self, scfg):
    self.content = float(scfg.transnetv2_gate_content)
    self.hist = float(scfg.transnetv2_gate_hist)

  def __call__(self, scorer: FrameScorer) -> bool:
    return scorer.score >= self.content or scorer.hist_change >= self.hist


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


DETECTORS = ("content", "adaptive", "threshold", "transnetv2")


def make_detectors(scfg, scorer: FrameScorer | None = None) -> dict:
  """PySceneDetect detectors named in `scfg.detectors` (name -> detector), config thresholds.

  With a `scorer`, content and adaptive share its per-frame score (computed once). The
  `transnetv2` name is accepted here and run by `TransNetV2Cuts`.
  """
  out = {}
  for name in scfg.detectors:
    if name == "content":
      kw = dict(threshold=scfg.content_threshold, min_scene_len=int(scfg.min_scene_len),
                luma_only=scfg.luma_only)
      out[name] = _SharedContent(scorer, **kw) if scorer else ContentDetector(**kw)
    elif name == "adaptive":
      kw = dict(adaptive_threshold=scfg.adaptive_threshold,
                min_scene_len=int(scfg.min_scene_len),
                window_width=int(scfg.adaptive_window_width),
                min_content_val=scfg.adaptive_min_content_val, luma_only=scfg.luma_only)
      out[name] = _SharedAdaptive(scorer, **kw) if scorer else AdaptiveDetector(**kw)
    elif name == "threshold":
      out[name] = ThresholdDetector(threshold=scfg.fade_threshold,
                                    min_scene_len=int(scfg.min_scene_len), fade_bias=0.0)
    elif name != "transnetv2":
      raise ValueError(f"scenes.detectors: unknown detector {name!r}; expected any of "
                       f"{DETECTORS}")
  if not scfg.detectors:
    raise ValueError("scenes.detectors: at least one detector is needed")
  if scfg.transnetv2_frames not in TRANSNETV2_FRAMES:
    raise ValueError(f"scenes.transnetv2_frames: unknown mode {scfg.transnetv2_frames!r}; "
                     f"expected one of {TRANSNETV2_FRAMES}")
  if int(scfg.transnetv2_gate_lag) < 1:
    raise ValueError(f"scenes.transnetv2_gate_lag: must be >= 1 frame, got "
                     f"{scfg.transnetv2_gate_lag}")
  return out


class TransNetV2Cuts:
  """Streaming TransNetV2 cuts: push analysis frames, get cut frame indices as they are final.

  A run of frames [a, b] with transition probability above `transnetv2_threshold`: the next
  shot starts at b + 1 (TransNetV2's own rule); a run of several frames (a gradual
  transition) also ends the previous shot at a + 1, so its frames fall out of the clips.
  `transnetv2_frames='candidates'` (the cascade): only windows near a frame pushed with
  `candidate=True` are evaluated (`models.transnetv2.TransNetV2Stream`); 'all': every window.
  """

  def __init__(self, scfg, predictor=None):
    from data_pipeline.models import transnetv2 as tn
    self.threshold = float(scfg.transnetv2_threshold)
    batch = int(scfg.transnetv2_batch)
    self.stream = tn.TransNetV2Stream(
        predictor or tn.Predictor(), batch=batch,
        candidates_only=scfg.transnetv2_frames == "candidates",
        dilate=int(scfg.transnetv2_dilate))
    # Frames between a frame's push and its last possible cut: its window's last frame comes
    # 75 frames later (+ the run end), and a batch waits for `batch - 1` more windows.
    self.lag = tn.CONTEXT + tn.STEP + 5 + tn.STEP * (self.stream.batch - 1)
    self.size = tn.INPUT_HW
    self.pos, self.run_start = 0, None

  def push(self, frame_bgr: np.ndarray, candidate: bool = True) -> list[int]:
    small = cv2.resize(frame_bgr, self.size[::-1], interpolation=cv2.INTER_AREA)[..., ::-1]
    return self._cuts(self.stream.push(np.ascontiguousarray(small), candidate))

  def finish(self) -> list[int]:
    return self._cuts(self.stream.finish())

  def _cuts(self, probs: np.ndarray) -> list[int]:
    out = []
    for p in probs:
      above = p > self.threshold
      if above and self.run_start is None:
        self.run_start = self.pos
      elif above and self.pos == self.run_start + 1:
        out.append(self.pos)  # a gradual transition: the previous shot ends here
      elif not above and self.run_start is not None:
        out.append(self.pos)  # the next shot starts after the run
        self.run_start = None
      self.pos += 1
    return out


def combine_cuts(per_detector: list[list[int]], mode: str, window: int) -> list[int]:
  """Union or intersection of several detectors' cut lists; cuts within `window` are one."""
  named = {str(i): cuts for i, cuts in enumerate(per_detector)}
  return [c["frame"] for c in attributed_cuts(named, mode, window)]


def attributed_cuts(per_detector: dict[str, list[int]], mode: str, window: int) -> list[dict]:
  """[{frame, detectors}]: the combined cuts, each with the detectors that found it (a cut
  within `window` frames of another is the same cut; the earliest frame is kept)."""
  if mode not in ("union", "intersection"):
    raise ValueError(f"scenes.combine: unknown mode {mode!r}; expected union|intersection")
  events = sorted((c, name) for name, cuts in per_detector.items() for c in set(cuts))
  groups: list[dict] = []
  for c, name in events:
    if groups and c - groups[-1]["last"] <= window:
      groups[-1]["last"] = c
      groups[-1]["detectors"].add(name)
    else:
      groups.append({"frame": c, "last": c, "detectors": {name}})
  out = [{"frame": g["frame"], "detectors": sorted(g["detectors"])} for g in groups]
  if mode == "intersection":
    out = [g for g in out if len(g["detectors"]) == len(per_detector)]
  return out


def split_segment(start: int, end: int, levels: np.ndarray, base: int,
                  scfg) -> list[tuple[int, int]]:
  """Pure core: [start, end) of one shot -> spans without black/fading frames, min/max applied.

  `levels[i - base]` is frame i's peak level (max over pixels of max(B, G, R)): the peak,
  not the mean, so small bright objects on a black background still count. Frames below
  `black_level` split the shot; at the ends of each remaining run, frames below
  `fade_trim_ratio` x the run's median level (the dim part of a fade) are trimmed.
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
  """Streaming scene splitter: push frames in order, get finished spans (and their frames).

  `transnet` is a `TransNetV2Cuts` (or a `models.transnetv2.Predictor` to build one from),
  used when `scenes.detectors` names 'transnetv2'; built here when not given.
  """

  def __init__(self, scfg, fps: fractions.Fraction, keep_frames: bool = False,
               transnet=None):
    self.cfg, self.fps, self.keep_frames = scfg, fractions.Fraction(fps), keep_frames
    cascade = "transnetv2" in scfg.detectors and scfg.transnetv2_frames == "candidates"
    self.scorer = FrameScorer(bool(scfg.luma_only),
                              hist_lag=int(scfg.transnetv2_gate_lag) if cascade else 0)
    self.detectors = make_detectors(scfg, self.scorer)
    self.transnet, self.gate = None, CandidateGate(scfg) if cascade else None
    if "transnetv2" in scfg.detectors:
      self.transnet = (transnet if isinstance(transnet, TransNetV2Cuts)
                       else TransNetV2Cuts(scfg, transnet))
    self.cuts: dict[str, list[int]] = {name: [] for name in scfg.detectors}
    self.lag = max(int(scfg.min_scene_len), int(scfg.adaptive_window_width)) + 2 + int(
        scfg.merge_window) + (self.transnet.lag if self.transnet else 0)
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
    for name, det in self.detectors.items():
      self.cuts[name].extend(int(c.frame_num) for c in det.process_frame(tc, frame_bgr))
    if self.transnet is not None:
      candidate = self.gate is None or self.gate(self.scorer)
      self.cuts["transnetv2"].extend(self.transnet.push(frame_bgr, candidate))
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
    for name, det in self.detectors.items():
      self.cuts[name].extend(int(c.frame_num) for c in det.post_process(tc))
    if self.transnet is not None:
      self.cuts["transnetv2"].extend(self.transnet.finish())
    return self._flush(self.count)

  def attributed_cuts(self) -> list[dict]:
    """[{frame, detectors}]: the combined cuts so far, each with the detectors that found it."""
    cuts = attributed_cuts(self.cuts, self.cfg.combine, int(self.cfg.merge_window))
    return [c for c in cuts if 0 < c["frame"] < max(self.count, 1)]

  def all_cuts(self) -> list[int]:
    """The combined cut list so far (frame index of each new shot's first frame)."""
    return [c["frame"] for c in self.attributed_cuts()]

  def _cut_before(self, horizon: int) -> bool:
    return any(self.base < c <= horizon for cuts in self.cuts.values() for c in cuts)

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
  """Manifest row of one clip: a (video, span) reference with the exact fps, display size,
  rotation and sample aspect; seconds are presentation times of the span's frames."""
  fps = video_row["fps"]
  rate = video_io.fps_fraction(fps)
  t0 = video_io.frame_seconds(video_row["path"], start)
  t1 = video_io.frame_seconds(video_row["path"], end)
  return dict(id=clip_id(video_row["id"], start, end), video_id=video_row["id"],
              path=video_row["path"], relpath=video_row["relpath"], start=start, end=end,
              num_frames=end - start, fps=fps,
              start_seconds=float(start / rate) if t0 is None else t0,
              end_seconds=float(end / rate) if t1 is None else t1,
              height=video_row["display_height"], width=video_row["display_width"],
              orientation=video_row["orientation"], rotation=video_row.get("rotation", 0),
              sample_aspect=video_row.get("sample_aspect", [1, 1]), reject=None)


def analysis_size_for(video_row: dict, short_side: int) -> tuple[int, int]:
  """Analysis (h, w) of a video at display geometry (SAR and rotation applied)."""
  return video_io.analysis_size(video_row["display_height"], video_row["display_width"],
                                int(short_side))


def scenes_for_video(video_row: dict, scfg, size: tuple[int, int],
                     transnet=None) -> tuple[list[dict], list[int]]:
  """Decodes one video at display size `size` and returns (clip rows, detected cuts)."""
  splitter = SceneSplitter(scfg, video_io.fps_fraction(video_row["fps"]), transnet=transnet)
  spans = []
  for _, frame in iter_bgr(video_row, size):
    spans.extend(splitter.push(frame))
  spans.extend(splitter.finish())
  return [clip_row(video_row, s, e) for s, e, _ in spans], splitter.all_cuts()


def iter_bgr(video_row: dict, size: tuple[int, int], start: int = 0,
             end: int | None = None) -> Iterable[tuple[int, np.ndarray]]:
  """Frames of a probed video as BGR uint8 at display size `size`, indexed by presentation
  timestamp (the indices every later stage reads): one decode, scaled in libswscale."""
  return video_io.iter_frames(video_row["path"], start, end, size,
                              rotation=int(video_row.get("rotation", 0)),
                              sample_aspect=video_row.get("sample_aspect"),
                              pixel_format="bgr24")


def cut_clip_to_file(row: dict, out_dir: str, codec: str) -> str:
  """Writes a clip's frames (display geometry) to `<out_dir>/<clip id>.mp4`
  (when scenes.cut_to_files is set)."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{row['id']}.mp4")
  if os.path.exists(path):
    return path
  frames = np.stack([f for _, f in video_io.iter_frames(
      row["path"], row["start"], row["end"], rotation=int(row.get("rotation", 0)),
      sample_aspect=row.get("sample_aspect"))])
  tmp = path + ".tmp.mp4"
  video_io.write_mp4(tmp, frames, video_io.fps_fraction(row["fps"]), codec=codec,
                     bits_per_pixel=4.0)
  os.replace(tmp, path)
  return path
