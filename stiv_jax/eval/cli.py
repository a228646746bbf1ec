"""`stiv-eval`: semantic score of synthetic-corpus videos, FVD / FID, or both for a checkpoint.

  stiv-eval --synthetic-score DIR_OF_MP4S --prompts-file=FILE [--first-frame=IMG [--last-frame=IMG]]
  stiv-eval --fvd --real=DIR --fake=DIR --i3d-weights=I3D.safetensors
  stiv-eval --fid --real=DIR --fake=DIR --inception-weights=INCEPTION.safetensors
  stiv-eval --workdir=W|--checkpoint=C|--weights=EXPORT [--task=t2v] --prompts-file=FILE --out-dir=D
      [--mesh=fsdp=8 --batch-size=N] [--real=DIR --i3d-weights=...]
  stiv-eval --workdir=W --synthetic-suite --prompts-file=heldout|tune|FILE --out-dir=D

Prints one JSON object on its last line. The prompts file is one prompt per line matched to the
MP4s in name order, or a JSON object {file name: prompt}.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Any, Sequence

import numpy as np

from stiv_jax import video_io
from stiv_jax.eval import synthetic


class EvalError(Exception):
  """A user error, printed as one line."""


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="stiv-eval", description=__doc__.splitlines()[0])
  p.add_argument("--synthetic-score", metavar="DIR", help="folder of generated MP4s to score")
  p.add_argument("--synthetic-suite", action="store_true",
                 help="with --workdir/--checkpoint: t2v on the prompts and ti2v from rendered "
                      "first frames of them, scored (writes MP4s and sample grids to --out-dir)")
  p.add_argument("--prompts-file", help="prompts: one per line (name order) or JSON {file: prompt}")
  p.add_argument("--first-frame", help="ti2v: conditioning image, for first-frame fidelity")
  p.add_argument("--last-frame", help="interp: last keyframe, for endpoint fidelity")
  p.add_argument("--fvd", action="store_true", help="compute FVD between --real and --fake")
  p.add_argument("--fid", action="store_true", help="compute FID between --real and --fake")
  p.add_argument("--real", help="folder of reference MP4s")
  p.add_argument("--fake", help="folder of generated MP4s")
  p.add_argument("--i3d-weights", help="local I3D .safetensors (PyTorch names)")
  p.add_argument("--inception-weights", help="local FID Inception .safetensors (PyTorch names)")
  p.add_argument("--i3d-feature", choices=("logits", "pool"), default="logits")
  p.add_argument("--num-frames", type=int, default=16, help="frames per video for FVD")
  p.add_argument("--feature-size", type=int, default=None,
                 help="input resolution of the feature nets (default: native 224 / 299)")
  src = p.add_mutually_exclusive_group()
  src.add_argument("--workdir", help="sample from this training workdir's checkpoint first")
  src.add_argument("--checkpoint", help="sample from this checkpoint first")
  src.add_argument("--weights", help="sample from this stiv-export folder first")
  p.add_argument("--mesh", default=None, help="sampling mesh, e.g. fsdp=8 (see stiv-sample)")
  p.add_argument("--batch-size", type=int, default=None, help="samples per sampler call")
  p.add_argument("--task", default="t2v")
  p.add_argument("--out-dir", default="eval_samples", help="where sampled MP4s go")
  p.add_argument("--num-samples", type=int, default=None)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--samples-per-prompt", type=int, default=1,
                 help="--synthetic-suite: samples of each prompt (other noise and first frames)")
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--guidance", type=float, default=None)
  p.add_argument("--image", help="ti2v / multiview input when sampling")
  return p


def list_videos(folder: str, what: str) -> list[str]:
  """MP4 files of a folder in name order (an error if none)."""
  if not folder or not os.path.isdir(folder):
    raise EvalError(f"{what}: no such folder {folder!r}")
  files = sorted(glob.glob(os.path.join(folder, "*.mp4")))
  if not files:
    raise EvalError(f"{what}: no .mp4 files in {folder}")
  return files


def read_prompts(path: str, files: Sequence[str]) -> list[str]:
  """One prompt per video: JSON {basename: prompt}, or lines in the files' name order."""
  if not path or not os.path.exists(path):
    raise EvalError(f"--prompts-file: no such file {path!r}")
  with open(path) as fh:
    text = fh.read()
  if path.endswith(".json"):
    mapping = json.loads(text)
    missing = [os.path.basename(f) for f in files if os.path.basename(f) not in mapping]
    if missing:
      raise EvalError(f"--prompts-file {path}: no prompt for {missing[:3]}")
    return [mapping[os.path.basename(f)] for f in files]
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if len(lines) == 1:
    return lines * len(files)
  if len(lines) != len(files):
    raise EvalError(f"--prompts-file {path}: {len(lines)} prompts for {len(files)} videos")
  return lines


def synthetic_report(files: Sequence[str], prompts: Sequence[str], first: str | None = None,
                     last: str | None = None) -> dict[str, Any]:
  """Accuracy per attribute, plus first-frame / endpoint fidelity (PSNR dB) when asked."""
  videos = [video_io.read_video(f) for f in files]
  report: dict[str, Any] = synthetic.score(videos, prompts)
  if first:
    img = video_io.read_image(first)
    if last:
      end = video_io.read_image(last)
      report["endpoint_psnr"] = synthetic.mean_fidelity(
          synthetic.endpoint_fidelity(v, _fit(img, v), _fit(end, v)) for v in videos)
    else:
      report["first_frame_psnr"] = synthetic.mean_fidelity(
          synthetic.first_frame_fidelity(v, _fit(img, v)) for v in videos)
  return report


def _fit(image: np.ndarray, video: np.ndarray) -> np.ndarray:
  """The reference image at the video's frame size."""
  h, w = video.shape[1:3]
  return image if image.shape[:2] == (h, w) else video_io.resize_frames(image[None], h, w)[0]


def load_clips(files: Sequence[str], num_frames: int) -> np.ndarray:
  """uint8 [N, num_frames, H, W, 3]: each video's first frames (last frame repeated if short)."""
  clips = []
  for f in files:
    v = video_io.read_video(f)
    idx = np.minimum(np.arange(num_frames), v.shape[0] - 1)
    clips.append(v[idx])
  shapes = {c.shape for c in clips}
  if len(shapes) != 1:
    raise EvalError(f"videos differ in size: {sorted(shapes)[:3]}")
  return np.stack(clips)


def frechet_report(args: argparse.Namespace, fake_files: Sequence[str]) -> dict[str, float]:
  """FVD and/or FID between --real and the generated videos."""
  from stiv_jax.eval import features
  out = {}
  real = load_clips(list_videos(args.real, "--real"), args.num_frames)
  fake = load_clips(fake_files, args.num_frames)
  if args.fvd:
    if not args.i3d_weights:
      raise EvalError("--fvd needs --i3d-weights=FILE.safetensors (local I3D weights)")
    net = features.FeatureNet.from_safetensors("i3d", args.i3d_weights, feature=args.i3d_feature,
                                               size=args.feature_size)
    out["fvd"] = features.fvd(net, real, fake)
  if args.fid:
    if not args.inception_weights:
      raise EvalError("--fid needs --inception-weights=FILE.safetensors (local Inception weights)")
    net = features.FeatureNet.from_safetensors("inception", args.inception_weights,
                                               size=args.feature_size)
    out["fid"] = features.fid(net, real, fake)
  return out


def sample_for_eval(args: argparse.Namespace, prompts: Sequence[str]) -> list[str]:
  """Samples one MP4 per prompt with stiv-sample's machinery; returns the written files."""
  from stiv_jax import sample as sample_lib
  os.makedirs(args.out_dir, exist_ok=True)
  flag = "workdir" if args.workdir else ("checkpoint" if args.checkpoint else "weights")
  argv = [f"--{flag}={args.workdir or args.checkpoint or args.weights}",
          f"--task={args.task}", f"--out={os.path.join(args.out_dir, 'sample.mp4')}",
          f"--seed={args.seed}", "--no-progress"]
  for name in ("mesh", "batch_size"):
    if getattr(args, name) is not None:
      argv.append(f"--{name.replace('_', '-')}={getattr(args, name)}")
  if args.steps is not None:
    argv.append(f"--steps={args.steps}")
  if args.guidance is not None:
    argv.append(f"--guidance={args.guidance}")
  if args.image:
    argv.append(f"--image={args.image}")
  argv += [f"--prompt={p}" for p in prompts]
  try:
    summary = sample_lib.main(argv)
  except (sample_lib.UserError, sample_lib.NonFiniteOutput) as e:
    raise EvalError(str(e.args[-1])) from e
  return [f for f in summary["files"] if f.endswith(".mp4")]


def synthetic_suite_report(args: argparse.Namespace) -> dict[str, Any]:
  """--synthetic-suite: the model of --workdir/--checkpoint on synthetic prompts (t2v, and ti2v
  from rendered first frames); the run's sampling section unless --steps/--guidance are given."""
  from stiv_jax.eval import synthetic_suite
  from stiv_jax.train import checkpoint as ckpt_lib
  if not (args.workdir or args.checkpoint):
    raise EvalError("--synthetic-suite needs --workdir or --checkpoint (the model to sample)")
  if not args.prompts_file:
    raise EvalError("--synthetic-suite needs --prompts-file (or 'heldout' / 'tune')")
  prompts = synthetic.load_prompts(args.prompts_file)
  config, model = ckpt_lib.load_ema_model(args.workdir or args.checkpoint)
  for name in ("steps", "guidance"):
    if getattr(args, name) is not None:
      config.sampling[name] = getattr(args, name)
  report = synthetic_suite.run_suite(model, config, prompts, seed=args.seed, out_dir=args.out_dir,
                                     samples_per_prompt=args.samples_per_prompt)
  t2v, ti2v = report["t2v"], report["ti2v"]
  print(f"t2v on {len(prompts)} prompts x {args.samples_per_prompt} samples: "
        f"color {t2v['color']:.2f}, shape {t2v['shape']:.2f}, "
        f"direction {t2v['direction']:.2f}, background {t2v['background']:.3f}; "
        f"ti2v direction {ti2v['direction']:.2f}", flush=True)
  print(f"Sample grids: {report['sheets']['t2v']}  {report['sheets']['ti2v']}", flush=True)
  return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the asked evaluations; returns the JSON-ready report."""
  args = build_parser().parse_args(argv)
  report: dict[str, Any] = {}
  if args.synthetic_suite:
    return synthetic_suite_report(args)
  if args.workdir or args.checkpoint or args.weights:
    if not args.prompts_file or not os.path.exists(args.prompts_file):
      raise EvalError(f"--prompts-file: no such file {args.prompts_file!r} (prompts to sample)")
    with open(args.prompts_file) as fh:
      prompts = [line.strip() for line in fh if line.strip()]
    if args.num_samples:
      prompts = [prompts[i % len(prompts)] for i in range(args.num_samples)]
    files = sample_for_eval(args, prompts)
    report.update(synthetic_report(files, prompts, args.image))
    if args.fvd or args.fid:
      report.update(frechet_report(args, files))
    report["files"] = len(files)
    return report
  if args.synthetic_score:
    files = list_videos(args.synthetic_score, "--synthetic-score")
    report.update(synthetic_report(files, read_prompts(args.prompts_file, files),
                                   args.first_frame, args.last_frame))
  if args.fvd or args.fid:
    report.update(frechet_report(args, list_videos(args.fake, "--fake")))
  if not report:
    raise EvalError("nothing to do: pass --synthetic-score, --fvd/--fid, or --workdir/--checkpoint")
  return report


def run(argv: Sequence[str] | None = None) -> None:
  """Console entry point: one JSON line, or `stiv-eval: error: ...` and exit status 2."""
  try:
    report = main(argv)
  except (EvalError, FileNotFoundError, KeyError, ValueError) as e:
    msg = str(e).strip("'\"").splitlines()[0] if str(e) else type(e).__name__
    print(f"stiv-eval: error: {msg}", file=sys.stderr)
    raise SystemExit(2)
  print(json.dumps(report))


if __name__ == "__main__":
  run()
