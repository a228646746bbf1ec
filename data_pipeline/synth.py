"""The synthetic video corpus (the embedded default): moving coloured shapes on black.

Each scene is one filled shape (7 colours x 3 shapes) moving at constant speed in one of 4
directions, captioned exactly "a {color} {shape} moving {direction}". A video is one scene, or
two scenes joined by a hard cut (work for scene detection); some videos fade out to black.
Everything is a pure function of (seed, video number).

Two entry points (wired into `stiv-prep` by data_pipeline/cli.py):
  synth_cli:        stiv-prep synth --output=DIR --num-videos=N --seed=S   (MP4 + JSON sidecars)
  synth_shards_cli: stiv-prep synth-shards --output=DIR --num-videos=N --seed=S
                    (the same kind of clips rendered in memory, single-scene, encoded with the
                    configured VAE / text encoder straight into latent shards in DIR/shards,
                    the layout the video pipeline writes too)
The pure rendering and the shard fast path live in stiv_jax/data/synthetic.py (re-exported
here) so stiv_jax code (evaluation, demo data) can reuse them without importing data_pipeline.
"""
from __future__ import annotations

import argparse
import json
import os

import ml_collections
import numpy as np

from stiv_jax.data.synthetic import (  # re-exported: the renderer and the shard fast path
    COLORS, CUT_FRACTION, DIRECTIONS, SHAPES, SceneSpec, VideoSpec, caption_for, check_size,
    render_scene, render_video, sample_scene, sample_video, shape_mask, shard_clip_spec, video_rng,
    write_synthetic_shards)

__all__ = ["COLORS", "DIRECTIONS", "SHAPES", "SceneSpec", "VideoSpec", "caption_for",
           "render_scene", "render_video", "sample_scene", "sample_video", "shape_mask",
           "shard_clip_spec", "video_rng", "write_mp4", "write_synthetic_shards",
           "write_synthetic_videos", "synth_cli", "synth_shards_cli"]


def _pick_codec(preferred: str) -> str:
  """The first encoder of libx264 / mpeg4 (or the requested one) this PyAV can use."""
  import av
  candidates = ["libx264", "mpeg4"] if preferred == "auto" else [preferred]
  for name in candidates:
    try:
      av.codec.Codec(name, "w")
      return name
    except Exception:  # unknown / encoder not built into this PyAV
      continue
  raise ValueError(f"--codec: none of {candidates} can encode with this PyAV build")


def write_mp4(path: str, frames: np.ndarray, *, fps: int, codec: str = "auto") -> str:
  """Writes uint8 RGB frames [T, H, W, 3] as an MP4 (atomic, same bytes on every machine:
  one encoder thread) through stiv_jax.video_io; returns the codec used."""
  from stiv_jax import video_io
  codec = _pick_codec(codec)
  tmp = f"{path}.tmp-{os.getpid()}.mp4"
  options = {"crf": "10", "preset": "medium"} if codec == "libx264" else {"qscale": "2"}
  video_io.write_mp4(tmp, frames, fps=fps, codec=codec, options=options, threads=1)
  os.replace(tmp, path)
  return codec


def _video_sidecar(spec: VideoSpec, name: str, *, fps: int, size: int, seed: int,
                   index: int, codec: str) -> dict:
  """The JSON caption sidecar of a video: captions and frame / time spans per scene."""
  scenes, start = [], 0
  for scene, n in zip(spec.scenes, spec.scene_frames):
    scenes.append({"caption": scene.caption, "color": scene.color, "shape": scene.shape,
                   "direction": scene.direction, "start_frame": start, "end_frame": start + n,
                   "start_s": start / fps, "end_s": (start + n) / fps})
    start += n
  return {"video": name, "caption": spec.scenes[0].caption, "scenes": scenes, "fps": fps,
          "num_frames": spec.num_frames, "height": size, "width": size,
          "fade_out_frames": spec.fade_out_frames, "seed": seed, "index": index, "codec": codec}


def write_synthetic_videos(output: str, *, num_videos: int, seed: int, size: int = 64,
                           frames: int = 48, fps: int = 24, cut_fraction: float = CUT_FRACTION,
                           fade_fraction: float = 0.25, codec: str = "auto") -> list[str]:
  """Writes video_XXXXX.mp4 + video_XXXXX.json (caption sidecar) per video; returns the paths."""
  check_size(size, 2)
  os.makedirs(output, exist_ok=True)
  paths = []
  for i in range(num_videos):
    spec = sample_video(video_rng(seed, i), size=size, num_frames=frames,
                        cut_fraction=cut_fraction, fade_fraction=fade_fraction)
    name = f"video_{i:05d}.mp4"
    path = os.path.join(output, name)
    used = write_mp4(path, render_video(spec, size=size), fps=fps, codec=codec)
    sidecar = _video_sidecar(spec, name, fps=fps, size=size, seed=seed, index=i, codec=used)
    with open(os.path.join(output, f"video_{i:05d}.json"), "w") as f:
      json.dump(sidecar, f, indent=1)
    paths.append(path)
  return paths


def _parse_synth_args(argv: list[str], shards: bool) -> argparse.Namespace:
  """Parses the flags of `stiv-prep synth` or `stiv-prep synth-shards`."""
  prog = "stiv-prep synth-shards" if shards else "stiv-prep synth"
  p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
  p.add_argument("--output", required=True, help="output directory")
  p.add_argument("--num-videos", type=int, required=True)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
  p.add_argument("--fade-fraction", type=float, default=0.25, help="share of videos that fade out")
  if shards:
    p.add_argument("--frames", default="16",
                   help="frames per clip; a comma list (e.g. 16,8) makes several buckets")
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--vae-kind", default="pixel", help="'pixel' stand-in or 'kl'")
    p.add_argument("--vae-path", default="")
    p.add_argument("--vae-factor", type=int, default=4)
    p.add_argument("--latent-channels", type=int, default=4)
    p.add_argument("--text-kind", default="hash", help="'hash' stand-in or 'clip'")
    p.add_argument("--text-path", default="")
    p.add_argument("--tokenizer-path", default="")
    p.add_argument("--text-dim", type=int, default=64)
    p.add_argument("--text-len", type=int, default=16)
    p.add_argument("--latents-dtype", default="float16", choices=("float16", "bfloat16"))
    p.add_argument("--target-shard-mb", type=float, default=64.0)
    p.add_argument("--overwrite", action="store_true")
  else:
    p.add_argument("--frames", type=int, default=48, help="frames per video")
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--cut-fraction", type=float, default=CUT_FRACTION,
                   help="share of videos made of two scenes joined by a hard cut")
    p.add_argument("--codec", default="auto", help="libx264, mpeg4 or auto (first available)")
  args = p.parse_args(argv)
  if args.num_videos < 1:
    p.error(f"--num-videos: must be >= 1, got {args.num_videos}")
  return args


def synth_cli(argv: list[str]) -> int:
  """`stiv-prep synth`: writes MP4 videos with JSON caption sidecars."""
  args = _parse_synth_args(argv, shards=False)
  paths = write_synthetic_videos(args.output, num_videos=args.num_videos, seed=args.seed,
                                 size=args.size, frames=args.frames, fps=args.fps,
                                 cut_fraction=args.cut_fraction,
                                 fade_fraction=args.fade_fraction, codec=args.codec)
  print(f"wrote {len(paths)} videos to {args.output}")
  return 0


def synth_shards_cli(argv: list[str]) -> int:
  """`stiv-prep synth-shards`: renders clips and writes latent shards directly."""
  from stiv_jax.models.encoders import build_text_encoder, build_vae
  args = _parse_synth_args(argv, shards=True)
  try:
    frames = tuple(int(f) for f in args.frames.split(","))
  except ValueError:
    raise SystemExit(f"--frames: expected integers separated by commas, got {args.frames!r}")
  vae_cfg = ml_collections.ConfigDict({
      "kind": args.vae_kind, "path": args.vae_path, "spatial_factor": args.vae_factor,
      "latent_channels": args.latent_channels})
  text_cfg = ml_collections.ConfigDict({
      "kind": args.text_kind, "path": args.text_path, "tokenizer": args.tokenizer_path,
      "dim": args.text_dim, "max_length": args.text_len})
  shard_dir = os.path.join(args.output, "shards")  # same layout as the video pipeline's output
  manifest = write_synthetic_shards(
      shard_dir, num_videos=args.num_videos, seed=args.seed, size=args.size, frames=frames,
      fps=args.fps, fade_fraction=args.fade_fraction, vae=build_vae(vae_cfg),
      text_encoder=build_text_encoder(text_cfg), latents_dtype=args.latents_dtype,
      target_shard_bytes=int(args.target_shard_mb * (1 << 20)), overwrite=args.overwrite,
      metadata={"vae": vae_cfg.to_dict(), "text": text_cfg.to_dict()})
  print(json.dumps({"output": shard_dir, "num_records": manifest["num_records"],
                    "buckets": {k: v["count"] for k, v in manifest["buckets"].items()}}))
  return 0
