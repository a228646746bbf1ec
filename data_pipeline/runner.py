"""Local runner: resumable stages over a process pool, with a progress bar and a summary.

Each stage reads the previous stage's manifest from the output folder, skips the items its
log already holds, appends each finished item to the log, and writes its manifest
atomically at the end. Workers are processes (`--workers`), each with OpenCV's own thread
pool set to 1 so N workers use N cores.
"""
from __future__ import annotations

import collections
import json
import multiprocessing as mp
import os
import sys
import time
import traceback

import cv2

from data_pipeline import classify as classify_lib
from data_pipeline import dsg as dsg_lib
from data_pipeline import encode as encode_lib
from data_pipeline import filter as filter_lib
from data_pipeline import manifest as mf
from data_pipeline import stages

_PROCESS_WORKER = None  # the worker of a pool process (set by _init_process; per process)


def _init_process(worker) -> None:
  global _PROCESS_WORKER
  cv2.setNumThreads(1)
  worker.setup()
  _PROCESS_WORKER = worker


def _run_item(worker, item: dict) -> tuple[str, list[dict], float, float]:
  """Runs one item; a failure becomes a reject row (`<stage>_error`), never a crash."""
  t0, c0 = time.perf_counter(), time.process_time()
  try:
    rows = worker(item)
  except Exception as err:  # one bad item must not stop the batch
    msg = f"{type(err).__name__}: {err}"
    rows = [{**item, "reject": f"{worker.name}_error", "error": msg,
             "traceback": traceback.format_exc(limit=3)}]
  return item["id"], rows, time.perf_counter() - t0, time.process_time() - c0


def _pool_item(item: dict):
  return _run_item(_PROCESS_WORKER, item)


def _progress(total: int, desc: str, enabled: bool):
  if not enabled:
    return None
  from tqdm import tqdm
  return tqdm(total=total, desc=desc, unit="item", disable=None, file=sys.stderr)


def run_stage(worker, items: list[dict], out_dir: str, *, workers: int = 1,
              progress: bool = True, name: str | None = None) -> tuple[list[dict], dict]:
  """Runs `worker` over `items` (skipping logged ones); -> (all output rows, summary)."""
  name = name or worker.name
  log = mf.ProgressLog(out_dir, name)
  done = log.done()
  todo = [it for it in items if it["id"] not in done]
  t0 = time.perf_counter()
  cpu, bar = 0.0, _progress(len(todo), name, progress)
  results = {k: v[-1]["rows"] for k, v in done.items()}
  if todo:
    if workers > 1:
      ctx = mp.get_context("spawn")
      with ctx.Pool(workers, initializer=_init_process, initargs=(worker,)) as pool:
        for key, rows, _, c in pool.imap_unordered(_pool_item, todo):
          log.append(key, rows)
          results[key], cpu = rows, cpu + c
          bar and bar.update(1)
    else:
      cv2.setNumThreads(1)
      for item in todo:
        key, rows, _, c = _run_item(worker, item)
        log.append(key, rows)
        results[key], cpu = rows, cpu + c
        bar and bar.update(1)
  bar and bar.close()
  wall = time.perf_counter() - t0
  out = [r for it in items for r in results.get(it["id"], [])]
  mf.write_jsonl_atomic(mf.final_path(out_dir, name), out)
  rejected = collections.Counter(r["reject"] for r in out if r.get("reject"))
  summary = {"stage": name, "items": len(items), "done_now": len(todo),
             "skipped_done": len(items) - len(todo), "rows": len(out),
             "rejected_by_reason": dict(sorted(rejected.items())),
             "seconds_per_item": wall / len(todo) if todo else 0.0,
             "cpu_seconds_per_item": cpu / len(todo) if todo else 0.0}
  return out, summary


def _print(summary: dict) -> None:
  print(json.dumps(summary, sort_keys=True), file=sys.stderr)


def stage_probe(input_dir: str, out_dir: str, cfg) -> dict:
  items = stages.video_items(input_dir, cfg)
  _, s = run_stage(stages.ProbeWorker(cfg, os.path.abspath(input_dir)), items, out_dir,
                   workers=cfg.run.workers, progress=cfg.run.progress)
  return s


def stage_scenes(out_dir: str, cfg, with_features: bool = False) -> dict:
  videos = [r for r in mf.read_stage(out_dir, "probe") if stages.ok(r)]
  dirs = stages.stage_dirs(out_dir)
  worker = stages.ScenesWorker(cfg, with_features, dirs["clips"], dirs["cuts"])
  rows, s = run_stage(worker, videos, out_dir, workers=cfg.run.workers,
                      progress=cfg.run.progress, name="analyze" if with_features else "scenes")
  if with_features:  # the fused path (one decode) writes both manifests
    mf.write_jsonl_atomic(mf.final_path(out_dir, "scenes"), rows)
    mf.write_jsonl_atomic(mf.final_path(out_dir, "features"), rows)
  s["videos_without_clips"] = len({v["id"] for v in videos} - {r["video_id"] for r in rows})
  report = cuts_report(dirs["cuts"], videos, cfg.scenes)
  mf.write_json_atomic(os.path.join(out_dir, "cuts_report.json"), report)
  s["cuts_by_detector"] = report["cuts_by_detector"]
  return s


def cuts_report(cuts_dir: str, videos: list[dict], scfg) -> dict:
  """Per-video cuts (frame, seconds, detectors that found it) and counts per detector."""
  per_video, counts = {}, collections.Counter()
  for v in videos:
    path = os.path.join(cuts_dir, f"{v['id']}.json")
    if os.path.exists(path):
      with open(path) as fh:
        rec = json.load(fh)
      per_video[v["relpath"]] = rec["cuts"]
      counts.update(d for c in rec["cuts"] for d in c["detectors"])
  return {"detectors": list(scfg.detectors), "combine": scfg.combine,
          "cuts_by_detector": dict(sorted(counts.items())), "videos": per_video}


def stage_features(out_dir: str, cfg) -> dict:
  clips = [r for r in mf.read_stage(out_dir, "scenes") if stages.ok(r)]
  _, s = run_stage(stages.FeaturesWorker(cfg), clips, out_dir, workers=cfg.run.workers,
                   progress=cfg.run.progress)
  return s


def stage_filter(out_dir: str, cfg) -> dict:
  t0 = time.perf_counter()
  rows, report = filter_lib.apply_filter(mf.read_stage(out_dir, "features"), cfg.filter)
  mf.write_jsonl_atomic(mf.final_path(out_dir, "filter"), rows)
  mf.write_json_atomic(os.path.join(out_dir, "filter_report.json"), report)
  return {"stage": "filter", "seconds": time.perf_counter() - t0,
          **{k: v for k, v in report.items() if k != "thresholds"}}


def _simple(out_dir: str, cfg, worker, source: str) -> tuple[list[dict], dict]:
  items = [r for r in mf.read_stage(out_dir, source) if stages.ok(r)]
  return run_stage(worker, items, out_dir, workers=cfg.run.workers, progress=cfg.run.progress)


def stage_caption(out_dir: str, cfg) -> dict:
  return _simple(out_dir, cfg, stages.CaptionWorker(cfg), "filter")[1]


def stage_classify(out_dir: str, cfg) -> dict:
  rows, s = _simple(out_dir, cfg, stages.ClassifyWorker(cfg), "caption")
  report = classify_lib.distribution_report(cfg.classify.categories, rows)
  mf.write_json_atomic(os.path.join(out_dir, "classify_report.json"), report)
  return {**s, "categories": report["counts"]}


def stage_dsg(out_dir: str, cfg) -> dict:
  rows, s = _simple(out_dir, cfg, stages.DSGWorker(cfg), "classify")
  report = dsg_lib.dsg_report([r for r in rows if "dsg_num_objects" in r])
  mf.write_json_atomic(os.path.join(out_dir, "dsg_report.json"), report)
  return {**s, **report}


def stage_encode(out_dir: str, cfg) -> dict:
  rows, s = _simple(out_dir, cfg, stages.EncodeWorker(cfg, out_dir), "dsg")
  good = [r for r in rows if stages.ok(r)]
  meta = {"vae": cfg.encode.vae.to_dict(), "text": cfg.encode.text.to_dict(),
          "source": "data_pipeline"}
  manifest = encode_lib.write_all_shards(out_dir, good, cfg.encode, metadata=meta)
  return {**s, "records": manifest["num_records"],
          "buckets": {k: v["count"] for k, v in manifest["buckets"].items()}}


STAGES = ("probe", "scenes", "features", "filter", "caption", "classify", "dsg", "encode")


def run_one(stage: str, out_dir: str, cfg, input_dir: str | None = None) -> dict:
  """Runs one named stage; prints and returns its summary."""
  if stage == "probe":
    if not input_dir:
      raise ValueError("stiv-prep probe: --input is required")
    s = stage_probe(input_dir, out_dir, cfg)
  else:
    fn = {"scenes": stage_scenes, "features": stage_features, "filter": stage_filter,
          "caption": stage_caption, "classify": stage_classify, "dsg": stage_dsg,
          "encode": stage_encode}.get(stage)
    if fn is None:
      raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    s = fn(out_dir, cfg)
  _print(s)
  return s


def run_all(input_dir: str, out_dir: str, cfg) -> list[dict]:
  """All stages in order; scenes and features share one decode per video."""
  summaries = [run_one("probe", out_dir, cfg, input_dir)]
  s = stage_scenes(out_dir, cfg, with_features=True)
  _print(s)
  summaries.append(s)
  for stage in STAGES[3:]:
    summaries.append(run_one(stage, out_dir, cfg))
  mf.write_json_atomic(os.path.join(out_dir, "summary.json"), summaries)
  return summaries
