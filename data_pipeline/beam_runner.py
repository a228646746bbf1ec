"""`stiv-prep beam`: the same stage workers as an Apache Beam pipeline, shards included.

DirectRunner locally (tested); Dataflow / Flink / Spark through Beam's own pipeline options
(`stiv-prep beam --runner=DataflowRunner ... -- --project=... --temp_location=...`). The
output folder must then be on a filesystem every Beam worker can write (e.g. a mounted
bucket): manifests are written with WriteToText, shards by one DoFn call per bucket.
"""
from __future__ import annotations

import json
import os

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from data_pipeline import classify as classify_lib
from data_pipeline import dsg as dsg_lib
from data_pipeline import encode as encode_lib
from data_pipeline import filter as filter_lib
from data_pipeline import manifest as mf
from data_pipeline import runner as runner_lib
from data_pipeline import stages


class WorkerDoFn(beam.DoFn):
  """Runs a stage worker on each element; failures become reject rows, as locally."""

  def __init__(self, worker):
    self.worker = worker

  def setup(self):
    import cv2
    cv2.setNumThreads(1)
    self.worker.setup()

  def process(self, item):
    _, rows, _, _ = runner_lib._run_item(self.worker, item)
    yield from rows


class EncodeDoFn(beam.DoFn):
  """Clip row -> (bucket, (clip id, example bytes, encode row)); too-short clips dropped.
  setup() leaves the encoders' contract record in OUT/encoded (a shared filesystem)."""

  def __init__(self, cfg, out_dir: str):
    self.cfg, self.out_dir = cfg, out_dir

  def setup(self):
    self.worker = stages.EncodeWorker(self.cfg, self.out_dir)
    self.worker.setup()

  def process(self, row):
    from stiv_jax.data import schema as schema_lib
    rec = self.worker.record(row)
    if rec is not None:
      yield rec.bucket, (row["id"], schema_lib.encode_example(rec),
                         {"latents_shape": list(rec.latents.shape), "micro": rec.micro,
                          "caption_source": rec.caption_source})


class WriteBucketDoFn(beam.DoFn):
  """Writes all records of one bucket (sorted by clip id) as that bucket's shard files."""

  def __init__(self, shard_dir: str, target_bytes: int):
    self.shard_dir, self.target_bytes = shard_dir, target_bytes

  def process(self, kv):
    bucket, items = kv
    yield from encode_lib.write_bucket_shards(self.shard_dir, bucket, list(items),
                                              self.target_bytes)


def _write_rows(pcoll, out_dir: str, name: str):
  return (pcoll | f"{name}Json" >> beam.Map(lambda r: json.dumps(r, sort_keys=True))
          | f"{name}Write" >> beam.io.WriteToText(os.path.join(out_dir, name),
                                                   file_name_suffix=".jsonl",
                                                   shard_name_template=""))


def _write_manifest(out_dir: str, shard_dir: str, meta: dict) -> dict:
  """The dataset manifest with the latent contract the encode workers recorded."""
  contract, empty = encode_lib.load_encoders(out_dir)
  return encode_lib.writer_lib.write_manifest(shard_dir, metadata=meta, contract=contract,
                                              empty_prompt=empty)


def build(p, input_dir: str, out_dir: str, cfg):
  """Adds the whole pipeline to Pipeline `p`; returns the PCollection of shard file names."""
  shard_dir = os.path.join(out_dir, "shards")
  items = p | "Videos" >> beam.Create(stages.video_items(input_dir, cfg))
  probed = items | "Probe" >> beam.ParDo(WorkerDoFn(stages.ProbeWorker(cfg, os.path.abspath(
      input_dir))))
  clips = (probed | "ProbeOk" >> beam.Filter(stages.ok)
           | "Analyze" >> beam.ParDo(WorkerDoFn(stages.ScenesWorker(cfg, True))))
  filtered = clips | "Filter" >> beam.Map(filter_lib.filter_row, cfg.filter)
  captioned = (filtered | "Kept" >> beam.Filter(stages.ok)
               | "Caption" >> beam.ParDo(WorkerDoFn(stages.CaptionWorker(cfg))))
  classified = (captioned | "CaptionOk" >> beam.Filter(stages.ok)
                | "Classify" >> beam.ParDo(WorkerDoFn(stages.ClassifyWorker(cfg))))
  checked = (classified | "ClassifyOk" >> beam.Filter(stages.ok)
             | "DSG" >> beam.ParDo(WorkerDoFn(stages.DSGWorker(cfg))))
  for name, pc in (("probe", probed), ("features", clips), ("filter", filtered),
                   ("caption", captioned), ("classify", classified), ("dsg", checked)):
    _write_rows(pc, out_dir, name)
  # Reports, as combines (scale with the corpus).
  (filtered | "Reasons" >> beam.Map(lambda r: r.get("reject") or "kept")
   | "CountReasons" >> beam.combiners.Count.PerElement()
   | "ReasonDict" >> beam.combiners.ToDict()
   | "FilterReport" >> beam.Map(lambda d: mf.write_json_atomic(
       os.path.join(out_dir, "filter_report.json"), d)))
  (classified | "Cats" >> beam.Map(lambda r: r["category"])
   | "CountCats" >> beam.combiners.Count.PerElement()
   | "CatDict" >> beam.combiners.ToDict()
   | "ClassifyReport" >> beam.Map(lambda d: mf.write_json_atomic(
       os.path.join(out_dir, "classify_report.json"),
       classify_lib.distribution_report(cfg.classify.categories,
                                        [{"category": k} for k, n in d.items() for _ in range(n)]))))
  (checked | "DsgTuple" >> beam.Map(lambda r: (
      r["dsg_num_objects"], r["dsg_num_hallucinated"], int(r["dsg_hallucinated"]),
      int(r["dsg_checkable"]), r["dsg_num_unique_objects"], 1))
   | "DsgSum" >> beam.CombineGlobally(lambda ts: tuple(map(sum, zip(*ts))) or (0,) * 6)
   | "DsgReport" >> beam.Map(lambda t: mf.write_json_atomic(
       os.path.join(out_dir, "dsg_report.json"), dsg_lib.dsg_metrics(
           t[0], t[1], t[3], t[2], total_captions=t[5], unique_objects=t[4]))))
  target = int(cfg.encode.target_shard_mb * (1 << 20))
  shards = (checked | "DsgOk" >> beam.Filter(stages.ok)
            | "Encode" >> beam.ParDo(EncodeDoFn(cfg, out_dir))
            | "ByBucket" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(WriteBucketDoFn(shard_dir, target)))
  meta = {"vae": cfg.encode.vae.to_dict(), "text": cfg.encode.text.to_dict(),
          "source": "data_pipeline.beam"}
  (p | "Once" >> beam.Create([None])
   | "ShardManifest" >> beam.Map(
       lambda _, names: _write_manifest(out_dir, shard_dir, meta),
       names=beam.pvalue.AsList(shards)))
  return shards


def run(input_dir: str, out_dir: str, cfg, runner: str = "DirectRunner",
        beam_args: list[str] | None = None) -> None:
  """Builds and runs the pipeline to completion."""
  os.makedirs(os.path.join(out_dir, "shards"), exist_ok=True)
  opts = PipelineOptions(list(beam_args or []), runner=runner)
  with beam.Pipeline(options=opts) as p:
    build(p, input_dir, out_dir, cfg)
