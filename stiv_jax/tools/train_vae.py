"""`stiv-train-vae`: trains a small KL autoencoder on a folder of videos, saved as diffusers has it.

  stiv-train-vae --videos=DIR --output=FOLDER [--frames-per-video=N] [--steps=N] ...

For footage with no pretrained VAE at hand (the CPU demo): frames are decoded from every video
under --videos (evenly spaced, --frames-per-video each), an AutoencoderKL of the given widths
is trained on them (stiv_jax.train.vae_train), and FOLDER gets config.json and
diffusion_pytorch_model.safetensors (with the measured scaling and shift factors) plus
train_vae.json (the run's figures). Point `vae.kind=kl`, `vae.path=FOLDER` at it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
SUMMARY_FILE = "train_vae.json"


def find_videos(root: str) -> list[str]:
  """Video files under `root` (recursively, sorted); an error naming `root` when none."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--videos: no such folder {root!r}")
  found = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                 if f.lower().endswith(VIDEO_EXTENSIONS))
  if not found:
    raise ValueError(f"--videos: no video files ({', '.join(VIDEO_EXTENSIONS)}) under {root!r}")
  return found


def load_frames(paths: list[str], frames_per_video: int, factor: int) -> np.ndarray:
  """[N, H, W, 3] float in [-1, 1]: `frames_per_video` evenly spaced frames of each video; every
  video must share one size, a multiple of the VAE's spatial factor (the file is named)."""
  from stiv_jax import video_io
  out, size = [], None
  for path in paths:
    n = int(video_io.container_info(path).get("num_frames") or 0)
    if n <= 0:
      n = video_io.read_video(path).shape[0]
    idx = np.unique(np.linspace(0, n - 1, max(frames_per_video, 1)).round().astype(int))
    frames = video_io.read_frames(path, list(idx))
    h, w = frames.shape[1:3]
    if size is None:
      size = (h, w)
    if (h, w) != size:
      raise ValueError(f"{path}: frames are {h}x{w}, other videos {size[0]}x{size[1]}; train "
                       "on one size")
    if h % factor or w % factor:
      raise ValueError(f"{path}: frame size {h}x{w} is not a multiple of the VAE's spatial "
                       f"factor {factor} (--block-out-channels)")
    out.append(frames)
  return np.concatenate(out).astype(np.float32) / 127.5 - 1.0


def _ints(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(x) for x in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def parse_args(argv: list[str] | None):
  from stiv_jax.train.vae_train import VAETrainConfig
  d = VAETrainConfig()
  p = argparse.ArgumentParser(prog="stiv-train-vae", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
  p.add_argument("--output", required=True, help="diffusers folder to write")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
  p.add_argument("--frames-per-video", type=int, default=8)
  p.add_argument("--max-videos", type=int, default=0, help="0: all")
  p.add_argument("--block-out-channels", type=_ints, default=d.block_out_channels)
  for f in dataclasses.fields(VAETrainConfig):
    if f.name == "block_out_channels":
      continue
    flag = "--" + f.name.replace("_", "-")
    if f.type in ("bool", bool):
      p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default)
    else:
      p.add_argument(flag, type=type(f.default), default=f.default)
  return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
  args = parse_args(argv)
  from stiv_jax.models.encoders import vae as vae_lib
  from stiv_jax.train import vae_train
  fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(vae_train.VAETrainConfig)}
  cfg = vae_train.VAETrainConfig(**fields)
  cfg.validate()
  weights = os.path.join(args.output, vae_lib.WEIGHT_FILES[0])
  if os.path.exists(weights) and not args.overwrite:
    raise FileExistsError(f"--output: {args.output!r} already holds a VAE; pass --overwrite to "
                          "replace it")
  paths = find_videos(args.videos)
  if args.max_videos > 0:
    paths = paths[: args.max_videos]
  frames = load_frames(paths, args.frames_per_video, 2 ** (len(cfg.block_out_channels) - 1))
  print(f"stiv-train-vae: {len(frames)} frames {frames.shape[1]}x{frames.shape[2]} from "
        f"{len(paths)} videos", flush=True)
  model, summary = vae_train.train_vae(frames, cfg, log=lambda s: print(s, flush=True))
  vae_lib.save_autoencoder_kl(model, args.output)
  summary = {**summary, "frames": int(len(frames)), "videos": len(paths),
             "config": dataclasses.asdict(cfg)}
  with open(os.path.join(args.output, SUMMARY_FILE), "w") as f:
    json.dump(summary, f, indent=2)
  print(json.dumps({k: summary[k] for k in ("steps", "seconds", "final_mse", "latent_std")}))
  return summary


def run() -> None:
  from stiv_jax import cli_errors
  cli_errors.run_main("stiv-train-vae", lambda: main(sys.argv[1:]) and None)


if __name__ == "__main__":
  main(sys.argv[1:])
