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
from data_pipeline import video_io


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
  """Video row -> clip rows; with `with_features`, features come from the same single decode."""

  name = "scenes"

  def __init__(self, cfg, with_features: bool = False, clips_dir: str = ""):
    super().__init__(cfg)
    self.with_features, self.clips_dir = with_features, clips_dir

  def setup(self):
    self.extractor = features_lib.FeatureExtractor(self.cfg.features)
    super().setup()

  def process(self, video):
    rows, _ = analyze_video(video, self.cfg, self.extractor if self.with_features else None)
    if self.cfg.scenes.cut_to_files and self.clips_dir:
      for r in rows:
        r["clip_file"] = scenes_lib.cut_clip_to_file(r, self.clips_dir, self.cfg.scenes.cut_codec)
    return rows


def analyze_video(video: dict, cfg, extractor=None) -> tuple[list[dict], list[int]]:
  """probe row -> (clip rows [with features], cuts), decoding the video exactly once.

  Frames are converted once to BGR at the analysis resolution; the scene detectors and all
  features read those same frames.
  """
  size = video_io.analysis_size(video["height"], video["width"],
                                int(cfg.features.analysis_short_side))
  splitter = scenes_lib.SceneSplitter(cfg.scenes, video_io.fps_fraction(video["fps"]),
                                      keep_frames=extractor is not None)
  spans = []
  for _, frame in scenes_lib.iter_bgr(video["path"], size):
    spans.extend(splitter.push(frame))
  spans.extend(splitter.finish())
  rows = []
  for start, end, frames in spans:
    row = scenes_lib.clip_row(video, start, end)
    if extractor is not None:
      idx = features_lib.sample_indices(start, end, int(cfg.features.num_sampled_frames))
      row.update(extractor(np.stack([frames[i - start] for i in idx]), idx, row))
    rows.append(row)
  return rows, splitter.all_cuts()


class FeaturesWorker(Worker):
  """Clip row -> clip row with features (standalone path: seeks to the sampled frames)."""

  name = "features"

  def setup(self):
    self.extractor = features_lib.FeatureExtractor(self.cfg.features)
    super().setup()

  def process(self, clip):
    return [features_lib.features_for_clip(clip, self.extractor)]


def uniform_frames(row: dict, n: int, short_side: int | None) -> np.ndarray:
  """`n` uniformly sampled RGB frames of a clip (native size when short_side is None)."""
  idx = features_lib.sample_indices(int(row["start"]), int(row["end"]), int(n))
  size = None
  if short_side:
    size = video_io.analysis_size(row["height"], row["width"], int(short_side))
    if row.get("rotation", 0) % 180:
      size = (size[1], size[0])
  return video_io.read_frames(row["path"], idx, size)


class CaptionWorker(Worker):
  """Kept clip row -> row with `caption` (empty captions are rejected as 'no_caption')."""

  name = "caption"

  def setup(self):
    self.captioner = caption_lib.build_captioner(self.cfg.caption)
    super().setup()

  def process(self, row):
    c = self.cfg.caption
    frames = uniform_frames(row, c.num_frames, c.frame_short_side) if (
        self.captioner.needs_frames) else None
    text = self.captioner.caption(frames, c.prompt, row).strip()
    return [{**row, "caption": text, "caption_backend": self.captioner.name,
             "reject": None if text else "no_caption"}]


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
  return {"clips": os.path.join(out_dir, "clips"), "shards": os.path.join(out_dir, "shards")}
