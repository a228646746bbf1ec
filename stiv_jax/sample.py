"""`stiv-sample`: sample any STIV task from a trained checkpoint (EMA weights) to MP4/GIF/PNG.

  stiv-sample --workdir=workdir/demo --task=t2v --prompt="a red circle moving right" \
      --out=samples/t2v.mp4 [--num-samples=4 --seed=0 --steps=50 --guidance=7.5 --gif]

User errors (unknown task, missing --image, wrong image size, incompatible checkpoint) end
with one line `stiv-sample: error: ...` and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import numpy as np

from stiv_jax import tasks as tasks_lib


class UserError(Exception):
  """An error the user can fix; printed as one line."""


def _fail(message: str) -> None:
  print(f"stiv-sample: error: {message}", file=sys.stderr)
  raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
  """The command-line flags of stiv-sample."""
  p = argparse.ArgumentParser(prog="stiv-sample", description=__doc__.splitlines()[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="training workdir (its latest checkpoint's EMA weights)")
  src.add_argument("--checkpoint", help="path of one checkpoint")
  p.add_argument("--task", default="t2v", help=f"one of {sorted(tasks_lib.TASKS)}")
  p.add_argument("--out", default="samples/sample.mp4", help="output MP4 (PNG for t2i)")
  p.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
  p.add_argument("--prompts-file", help="text file, one prompt per line")
  p.add_argument("--num-samples", type=int, default=None,
                 help="samples to draw (prompts are cycled); default: one per prompt")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--guidance", type=float, default=None, help="JIT-CFG scale")
  p.add_argument("--guidance-mode", choices=("jit", "sit", "none"), default=None)
  p.add_argument("--text-guidance", type=float, default=None, help="SIT-CFG text scale")
  p.add_argument("--image-guidance", type=float, default=None, help="SIT-CFG image scale")
  p.add_argument("--no-renorm", action="store_true", help="disable CFG renormalisation")
  p.add_argument("--solver", choices=("euler", "heun", "sde"), default=None)
  p.add_argument("--schedule", choices=("uniform", "shifted"), default=None)
  p.add_argument("--shift", type=float, default=None)
  p.add_argument("--image",
                 help="first frame (ti2v, long), input view (multiview), first keyframe (interp)")
  p.add_argument("--last-image", help="last keyframe (interp)")
  p.add_argument("--video", help="input video (v2v, tup, interp)")
  p.add_argument("--resize", action="store_true", help="resize inputs to the model resolution")
  p.add_argument("--num-frames", type=int, default=None, help="latent frames per clip")
  p.add_argument("--length", type=int, default=None, help="frames of a long video")
  p.add_argument("--frame-stride", type=float, default=None,
                 help="micro-condition stride (default: config data.stride, else 1)")
  p.add_argument("--keyframe-stride", type=float, default=20.0, help="long: keyframe stride")
  p.add_argument("--first-k", type=int, default=4, help="v2v: frames given")
  p.add_argument("--gif", action="store_true", help="also write a GIF per sample")
  p.add_argument("--fps", type=int, default=8)
  p.add_argument("--no-progress", action="store_true")
  return p


def read_prompts(args: argparse.Namespace, task: tasks_lib.TaskSpec) -> list[str]:
  """Prompts from --prompt / --prompts-file, cycled to --num-samples."""
  prompts = list(args.prompt or [])
  if args.prompts_file:
    if not os.path.exists(args.prompts_file):
      raise UserError(f"--prompts-file: no such file {args.prompts_file}")
    with open(args.prompts_file) as fh:
      prompts += [line.strip() for line in fh if line.strip()]
  if not prompts:
    if task.empty_text:
      prompts = [""]
    else:
      raise UserError(f"--task={task.name} needs --prompt or --prompts-file")
  n = args.num_samples if args.num_samples is not None else len(prompts)
  if n < 1:
    raise UserError(f"--num-samples: must be >= 1, got {n}")
  return [prompts[i % len(prompts)] for i in range(n)]


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:
  """(config, EMA model) from --workdir or --checkpoint; a UserError when incompatible."""
  from stiv_jax.train import checkpoint as ckpt_lib
  path = args.workdir or args.checkpoint
  if not os.path.exists(path):
    raise UserError(f"{'--workdir' if args.workdir else '--checkpoint'}: no such path {path}")
  try:
    config, model = ckpt_lib.load_ema_model(path)
  except Exception as e:  # the loader names the field / shape that does not fit
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise UserError(f"checkpoint {path} cannot be loaded: {msg}") from e
  for section in ("model", "vae", "text"):
    if section not in config:
      raise UserError(f"checkpoint {path}: its config has no {section!r} section")
  return config, model


def sampler_config(config: Any, args: argparse.Namespace):
  """SamplerConfig from the config's `sampling` section (if any) and the flags."""
  from stiv_jax import sampling
  section = dict(config.get("sampling", {}) or {})
  return sampling.SamplerConfig.from_config(
      section, steps=args.steps, guidance=args.guidance, guidance_mode=args.guidance_mode,
      text_guidance=args.text_guidance, image_guidance=args.image_guidance,
      solver=args.solver, schedule=args.schedule, shift=args.shift,
      renorm=False if args.no_renorm else None)


def load_inputs(args: argparse.Namespace) -> tasks_lib.TaskInputs:
  """Reads --image / --last-image / --video into uint8 arrays."""
  from stiv_jax import video_io
  inputs = tasks_lib.TaskInputs()
  try:
    if args.image:
      inputs.image = video_io.read_image(args.image)
    if args.last_image:
      inputs.last_image = video_io.read_image(args.last_image)
    if args.video:
      inputs.video = video_io.read_video(args.video)
  except (FileNotFoundError, ValueError, OSError) as e:
    raise UserError(str(e).splitlines()[0]) from e
  return inputs


def output_paths(out: str, n: int, task: str) -> tuple[list[str], str]:
  """(one file per sample, contact sheet path) for --out."""
  stem, suffix = os.path.splitext(out)
  suffix = ".png" if task == "t2i" else (suffix if suffix in (".mp4",) else ".mp4")
  files = [stem + suffix] if n == 1 else [f"{stem}_{i:03d}{suffix}" for i in range(n)]
  return files, stem + "_sheet.png"


def write_outputs(frames: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
  """Writes each sample (MP4, or PNG for t2i; GIF if asked) and a PNG contact sheet."""
  from stiv_jax import video_io
  videos = [video_io.to_uint8(v) for v in frames]
  files, sheet = output_paths(args.out, len(videos), args.task)
  written = []
  for path, video in zip(files, videos):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if args.task == "t2i":
      video_io.write_png(path, video[0])
    else:
      video_io.write_mp4(path, video, fps=args.fps)
      if args.gif:
        gif = os.path.splitext(path)[0] + ".gif"
        video_io.write_gif(gif, video, fps=args.fps)
        written.append(gif)
    written.append(path)
  video_io.write_png(sheet, video_io.contact_sheet(videos))
  return {"files": written, "contact_sheet": sheet}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Parses flags, samples, writes files; returns a summary dict (raises UserError)."""
  args = build_parser().parse_args(argv)
  task = tasks_lib.get_task(args.task)
  prompts = read_prompts(args, task)
  inputs = load_inputs(args)
  if task.needs == "image" and inputs.image is None:
    raise UserError(f"--task={task.name} needs --image")
  try:
    sampler_config({}, args)  # flag errors before the (slow) checkpoint load
  except ValueError as e:
    raise UserError(str(e)) from e
  config, model = load_model(args)
  from stiv_jax import sampling
  from stiv_jax.models.encoders import build_text_encoder, build_vae
  try:
    scfg = sampler_config(config, args)
  except ValueError as e:
    raise UserError(str(e)) from e
  vae = build_vae(config.vae)
  text_encoder = build_text_encoder(config.text)
  stride = args.frame_stride
  if stride is None:
    stride = float(config.get("data", {}).get("stride", 1)) if "data" in config else 1.0
  sampler = sampling.Sampler(model, scfg)
  runner = tasks_lib.TaskRunner(sampler, text_encoder, vae, config.model, frame_stride=stride,
                                first_k=args.first_k, keyframe_stride=args.keyframe_stride,
                                resize=args.resize)
  latents = runner.run(task.name, prompts, inputs, seed=args.seed, num_frames=args.num_frames,
                       length=args.length, progress=not args.no_progress)
  summary = write_outputs(runner.decode(latents), args)
  summary.update(task=task.name, prompts=[""] * len(prompts) if task.empty_text else prompts,
                 seed=args.seed, steps=scfg.steps,
                 guidance=scfg.guidance, frames=int(latents.shape[1]))
  return summary


def run(argv: Sequence[str] | None = None) -> None:
  """Console entry point: one JSON summary line, or a one-line error."""
  try:
    summary = main(argv)
  except (UserError, tasks_lib.TaskError) as e:
    _fail(str(e))
  print(json.dumps(summary))


if __name__ == "__main__":
  run()
