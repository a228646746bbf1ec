"""`stiv-bench prep`: probe+scenes+features throughput on the synthetic corpus vs decode alone.

Reference (the floor): decoding every frame of every video to an RGB array at native size
(one reused PyAV VideoReformatter, the cheapest PyAV path).
Pipeline: probe + scene detection + all clip features, decoding each video once (the fused
path of `stiv-prep run`). ratio = decode-alone seconds / pipeline seconds (1.0 = features
cost nothing beyond decoding; goal >= 0.5). Single process, OpenCV threads = 1.

The analysis runs at a fixed small resolution, so its cost per frame is fixed while decoding
grows with the source size: the headline uses 512x512 synthetic videos (still far cheaper
to decode than camera footage: flat colors on black); `small_*` repeats it at 128x128.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def _timed(fn):
  t0, c0 = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - t0, time.process_time() - c0


def measure(corpus: str, repeats: int) -> dict:
  """Times decode-alone and probe+scenes+features over every video of `corpus`."""
  import av
  from av.video.reformatter import VideoReformatter
  from data_pipeline import config as config_lib
  from data_pipeline import features as features_lib
  from data_pipeline import probe as probe_lib
  from data_pipeline import stages
  cfg = config_lib.get_config()
  rels = probe_lib.list_videos(corpus, cfg.run.video_extensions)
  extractor = features_lib.FeatureExtractor(cfg.features)
  sizes = set()

  def decode_all():
    n = 0
    reformatter = VideoReformatter()
    for rel in rels:
      with av.open(os.path.join(corpus, rel)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for frame in c.decode(s):
          reformatter.reformat(frame, format="rgb24").to_ndarray()
          n += 1
    return n

  def pipeline():
    clips = 0
    for rel in rels:
      row = probe_lib.probe_video(corpus, rel, cfg)
      if stages.ok(row):
        sizes.add((row["height"], row["width"]))
        rows, _ = stages.analyze_video(row, cfg, extractor)
        clips += len(rows)
    return clips

  # Interleaved, best of `repeats`, so both see the same machine load.
  decs, pipes = [], []
  for _ in range(repeats):
    decs.append(_timed(decode_all))
    pipes.append(_timed(pipeline))
  dec, pipe = min(decs, key=lambda t: t[1]), min(pipes, key=lambda t: t[1])
  frames, clips = dec[0], pipe[0]
  return {
      "videos": len(rels), "frames": frames, "clips": clips,
      "frame_sizes": sorted(f"{h}x{w}" for h, w in sizes),
      "analysis_short_side": cfg.features.analysis_short_side,
      "num_sampled_frames": cfg.features.num_sampled_frames,
      "pipeline_s": round(pipe[1], 4), "pipeline_clips_per_s": round(clips / pipe[1], 2),
      "pipeline_cpu_s_per_clip": round(pipe[2] / max(clips, 1), 5),
      "decode_s": round(dec[1], 4), "decode_clips_per_s": round(clips / dec[1], 2),
      "decode_cpu_s_per_clip": round(dec[2] / max(clips, 1), 5),
      "ratio": round(dec[1] / pipe[1], 3),
  }


def main(argv: list[str] | None = None) -> None:
  """Runs the benchmark; prints one JSON object on the last line."""
  p = argparse.ArgumentParser(prog="stiv-bench prep")
  p.add_argument("--num-videos", type=int, default=12)
  p.add_argument("--size", type=int, default=512, help="synthetic frame size (headline)")
  p.add_argument("--small-size", type=int, default=128,
                 help="also measure at this size (0 = skip); reported as small_*")
  p.add_argument("--frames", type=int, default=96)
  p.add_argument("--repeats", type=int, default=3, help="best of N timings")
  p.add_argument("--corpus", default="", help="existing folder of videos (default: synthesize)")
  if argv is None:
    argv = sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "prep" else sys.argv[1:]
  args = p.parse_args(argv)
  import cv2
  cv2.setNumThreads(1)
  with tempfile.TemporaryDirectory() as tmp:
    def corpus(size):
      if args.corpus:
        return args.corpus
      from data_pipeline import synth
      d = os.path.join(tmp, f"videos{size}")
      synth.write_synthetic_videos(d, num_videos=args.num_videos, seed=0, size=size,
                                   frames=args.frames, cut_fraction=0.5, fade_fraction=0.25)
      return d
    result = measure(corpus(args.size), args.repeats)
    if args.small_size and not args.corpus:
      small = measure(corpus(args.small_size), args.repeats)
      result.update({f"small_{k}": small[k] for k in (
          "frame_sizes", "pipeline_clips_per_s", "pipeline_cpu_s_per_clip",
          "decode_clips_per_s", "ratio")})
  result["reference"] = ("decode alone: every frame to RGB at native size (PyAV, one reused "
                         "reformatter), same videos, same process")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
