"""Stage workers: each wraps one stage's pure core as `worker(item row) -> output rows`.

The same workers run in-process, in a local process pool (runner.py) and as Beam DoFns
(beam_runner.py). `setup()` loads heavy state (models) once per process.
"""
from __future__ import annotations

import os

import numpy as np

from data_pipeline import caption as caption_lib
from data_pipeline import classify as classify_lib
from data_pipeline import dsg as dsg_lib
from data_pipeline import encode as encode_lib
from data_pipeline import features as features_lib
from data_pipeline import probe as probe_lib
from data_pipeline import scenes as scenes_lib
from stiv_jax import video_io


class Worker:
  """Base: a named stage step with lazily built per-process state."""

  name = "worker"

  def __init__(self, cfg):
    self.cfg = cfg
    self._ready = False

  def setup(self) -> None:
    """Builds per-process state (called once in each process before the first item)."""
    self._ready = True

  def __call__(self, item: dict) -> list[dict]:
    if not self._ready:
      self.setup()
    return self.process(item)

  def process(self, item: dict) -> list[dict]:
    raise NotImplementedError


class ProbeWorker(Worker):
  """Item {'id', 'relpath'} -> one video row (or its reject reason)."""

  name = "probe"

  def __init__(self, cfg, input_dir: str):
    super().__init__(cfg)
    self.input_dir = input_dir

  def process(self, item):
    return [probe_lib.probe_video(self.input_dir, item["relpath"], self.cfg)]


class ScenesWorker(Worker):
  """Video row -> clip rows; with `with_features`, features come from the same single decode.

  With `cuts_dir`, each video's cuts (frame, seconds, detectors that found it) are written to
  `<cuts_dir>/<video id>.json` (runner.stage_scenes gathers them into cuts_report.json).
  """

  name = "scenes"

  def __init__(self, cfg, with_features: bool = False, clips_dir: str = "", cuts_dir: str = ""):
    super().__init__(cfg)
    self.with_features, self.clips_dir, self.cuts_dir = with_features, clips_dir, cuts_dir

  def setup(self):
    self.extractor = features_lib.FeatureExtractor(self.cfg.features)
    self.transnet = None
    if "transnetv2" in self.cfg.scenes.detectors:
      from data_pipeline.models import transnetv2
      self.transnet = transnetv2.Predictor()  # weights loaded and compiled once per process
    super().setup()

  def process(self, video):
    rows, cuts = analyze_video(video, self.cfg, self.extractor if self.with_features else None,
                               transnet=self.transnet)
    if self.cfg.scenes.cut_to_files and self.clips_dir:
      for r in rows:
        r["clip_file"] = scenes_lib.cut_clip_to_file(r, self.clips_dir, self.cfg.scenes.cut_codec)
    if self.cuts_dir:
      from data_pipeline import manifest as mf
      mf.write_json_atomic(os.path.join(self.cuts_dir, f"{video['id']}.json"),
                           cuts_record(video, cuts))
    return rows


def cuts_record(video: dict, cuts: list[dict]) -> dict:
  """A video's cut report: each cut's frame, presentation time and detectors."""
  return {"id": video["id"], "relpath": video["relpath"], "num_frames": video["num_frames"],
          "cuts": [{**c, "seconds": video_io.frame_seconds(video["path"], c["frame"])}
                   for c in cuts]}


def analyze_video(video: dict, cfg, extractor=None, transnet=None, *, start: int = 0,
                  end: int | None = None, timings: dict | None = None
                  ) -> tuple[list[dict], list[dict]]:
  """probe row -> (clip rows [with features], cuts [{frame, detectors}]), one decode.

  Frames are decoded once and converted at display geometry (SAR and rotation applied),
  indexed by presentation timestamp: every frame to BGR at the analysis resolution (scene
  detectors and features read those), every `ocr_every`-th frame also to RGB at OCR size
  when the OCR backend wants it. `start`/`end` restrict the analysis to a frame range.
  `timings` (a dict) accumulates CPU seconds per part: decode, cuts, features, ocr.
  """
  clock = _Clock(timings)
  size = scenes_lib.analysis_size_for(video, cfg.features.analysis_short_side)
  geometry = dict(rotation=int(video.get("rotation", 0)),
                  sample_aspect=video.get("sample_aspect", [1, 1]))
  to_bgr = video_io.DisplayConverter(size, pixel_format="bgr24", **geometry)
  ocr_side = extractor.ocr_size_short_side if extractor is not None else 0
  to_ocr = video_io.DisplayConverter(
      scenes_lib.analysis_size_for(video, ocr_side), **geometry) if ocr_side else None
  every = int(cfg.features.ocr_every)
  splitter = scenes_lib.SceneSplitter(cfg.scenes, video_io.fps_fraction(video["fps"]),
                                      keep_frames=extractor is not None, transnet=transnet)
  rows, ocr_frames = [], {}

  def finished(spans) -> None:  # rows (and features) of spans as soon as they are final
    for s, e, frames in spans:
      row = scenes_lib.clip_row(video, s + start, e + start)
      if extractor is not None:
        idx = features_lib.sample_indices(s, e, int(cfg.features.num_sampled_frames))
        ocr = None
        if to_ocr is not None:
          want = features_lib.ocr_indices(s + start, e + start,
                                          int(cfg.features.ocr_num_frames), every)
          got = [ocr_frames[i] for i in want if i in ocr_frames]
          ocr = np.stack(got) if got else None
        with clock("features"):
          row.update(extractor(np.stack([frames[i - s] for i in idx]),
                               [i + start for i in idx], row, ocr, timings=timings))
      rows.append(row)

  decoded = video_io.iter_decoded(video["path"], start, end)
  while True:
    with clock("decode"):
      item = next(decoded, None)
      if item is None:
        break
      idx, frame = item
      if to_ocr is not None and idx % every == 0:
        ocr_frames[idx] = to_ocr(frame)
      bgr = to_bgr(frame)
    with clock("cuts"):
      spans = splitter.push(bgr)
    finished(spans)
    if ocr_frames and min(ocr_frames) < splitter.base + start:  # emitted: no longer needed
      ocr_frames = {k: v for k, v in ocr_frames.items() if k >= splitter.base + start}
  with clock("cuts"):
    spans = splitter.finish()
  finished(spans)
  cuts = [{**c, "frame": c["frame"] + start} for c in splitter.attributed_cuts()]
  return rows, cuts


class _Clock:
  """Context manager factory adding CPU seconds to `timings[name]` (no-op without a dict)."""

  def __init__(self, timings: dict | None):
    self.timings = timings

  def __call__(self, name: str):
    import contextlib
    import time

    @contextlib.contextmanager
    def timed():
      if self.timings is None:
        yield
        return
      t0 = time.process_time()
      try:
        yield
      finally:
        self.timings[name] = self.timings.get(name, 0.0) + time.process_time() - t0

    return timed()


class FeaturesWorker(Worker):
  """Clip row -> clip row with features (standalone path: seeks to the sampled frames)."""

  name = "features"

  def setup(self):
    self.extractor = features_lib.FeatureExtractor(self.cfg.features)
    super().setup()

  def process(self, clip):
    return [features_lib.features_for_clip(clip, self.extractor)]


def uniform_frames(row: dict, n: int, short_side: int | None) -> np.ndarray:
  """`n` uniformly sampled RGB frames of a clip at display geometry (native display size
  when short_side is None)."""
  idx = features_lib.sample_indices(int(row["start"]), int(row["end"]), int(n))
  size = None
  if short_side:
    size = video_io.analysis_size(row["height"], row["width"], int(short_side))
  return video_io.read_display_frames(row["path"], idx, rotation=int(row.get("rotation", 0)),
                                      sample_aspect=row.get("sample_aspect", [1, 1]),
                                      size=size)


class CaptionWorker(Worker):
  """Kept clip row -> row with `caption` and `caption_source`; a clip no backend captions is
  rejected as 'no_caption' with the reason (the video and what was tried)."""

  name = "caption"

  def setup(self):
    self.captioner = caption_lib.build_captioner(self.cfg.caption)
    super().setup()

  def process(self, row):
    c = self.cfg.caption
    frames = uniform_frames(row, c.num_frames, c.frame_short_side) if (
        self.captioner.needs_frames) else None
    text, source = caption_lib.describe(self.captioner, frames, c.prompt, row)
    out = {**row, "caption": text, "caption_backend": self.captioner.name,
           "caption_source": source if text else None, "reject": None if text else "no_caption"}
    if not text:
      out["error"] = caption_lib.missing_reason(self.captioner, row, c.sidecar_suffix)
    return [out]


class ClassifyWorker(Worker):
  """Captioned row -> row with `category` from the fixed list."""

  name = "classify"

  def setup(self):
    self.classifier = classify_lib.build_classifier(self.cfg.classify)
    super().setup()

  def process(self, row):
    return [{**row, "category": self.classifier.classify(row["caption"]),
             "classify_backend": self.classifier.name}]


class DSGWorker(Worker):
  """Captioned row -> row with its DSG-Video questions, answers and hallucinated objects."""

  name = "dsg"

  def setup(self):
    self.qgen = dsg_lib.build_question_generator(self.cfg.dsg)
    self.vqa = dsg_lib.build_vqa(self.cfg.dsg)
    super().setup()

  def process(self, row):
    frames = uniform_frames(row, self.cfg.dsg.num_frames, None)
    out = {**row, **dsg_lib.evaluate_caption(row["caption"], frames, self.qgen, self.vqa)}
    if self.cfg.dsg.reject_hallucinated and out["dsg_hallucinated"]:
      out["reject"] = "hallucinated_caption"
    return [out]


class EncodeWorker(Worker):
  """Clip row -> cached encoded example file; the row gets bucket, shape and micro."""

  name = "encode"

  def __init__(self, cfg, out_dir: str):
    super().__init__(cfg)
    self.out_dir = out_dir

  def setup(self):
    from stiv_jax.models.encoders import build_text_encoder, build_vae
    self.vae = build_vae(self.cfg.encode.vae)
    self.text = build_text_encoder(self.cfg.encode.text)
    encode_lib.save_encoders(self.out_dir, self.vae, self.text)
    super().setup()

  def record(self, row):
    """The ClipRecord of one clip (also used by the Beam runner)."""
    e = self.cfg.encode
    if row["num_frames"] < int(e.num_frames):
      return None
    frames, stride = encode_lib.decode_for_encode(row, e)
    return encode_lib.encode_clip(row, frames, stride, self.vae, self.text, e)

  def process(self, row):
    rec = self.record(row)
    if rec is None:
      return [{**row, "reject": "too_short_for_encode"}]
    from stiv_jax.data import schema as schema_lib
    data = schema_lib.encode_example(rec)
    encode_lib.save_example(encode_lib.example_path(self.out_dir, row["id"]), data)
    return [{**row, "bucket": rec.bucket, "latents_shape": list(rec.latents.shape),
             "micro": rec.micro}]


def video_items(input_dir: str, cfg) -> list[dict]:
  """The probe stage's input items, one per video file."""
  rels = probe_lib.list_videos(input_dir, cfg.run.video_extensions)
  return [{"id": probe_lib.video_id(r), "relpath": r} for r in rels]


def ok(row: dict) -> bool:
  """A row that goes on to the next stage (not rejected; kept by the filter when filtered)."""
  return not row.get("reject") and row.get("keep", True)


def stage_dirs(out_dir: str) -> dict[str, str]:
  """Sub-folders of an output folder."""
  return {"clips": os.path.join(out_dir, "clips"), "shards": os.path.join(out_dir, "shards"),
          "cuts": os.path.join(out_dir, "cuts")}
