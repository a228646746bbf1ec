"""`stiv-sample`: sample any STIV task from a trained checkpoint (EMA weights) to MP4/GIF/PNG.

  stiv-sample --workdir=workdir/demo --task=t2v --prompt="a red circle moving right" \
      --out=samples/t2v.mp4 [--num-samples=4 --seed=0 --steps=50 --guidance=7.5 --gif]
  stiv-sample --weights=EXPORT_DIR ...          (a `stiv-export` folder instead of a checkpoint)
  stiv-sample --workdir=W --mesh=fsdp=8 --prompts-file=prompts.txt --batch-size=4

Only the EMA parameters are read, straight into their shardings on the mesh (`--mesh`, else
the run config's `mesh` section; parameters sharded by the config's logical rules), so a model
larger than one device samples sharded. A prompts file is sampled in batches across the mesh
with a progress bar; sample i's noise depends only on (--seed, i), not on its batch.

User errors (unknown task, bad flag values, missing --image, wrong image size, incompatible
checkpoint) end with one line `stiv-sample: error: ...` and exit status 2 (the traceback only
with --verbose); a written video holding NaN/Inf ends with exit status 1.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Sequence

import numpy as np

from stiv_jax import tasks as tasks_lib

SHEET_MAX = 16  # samples shown on the contact sheet


class UserError(Exception):
  """An error the user can fix; printed as one line."""


class NonFiniteOutput(Exception):
  """Samples were written but hold NaN/Inf (exit status 1)."""


def _fail(message: str, code: int = 2) -> None:
  print(f"stiv-sample: error: {message}", file=sys.stderr)
  raise SystemExit(code)


def warn(message: str) -> None:
  print(f"stiv-sample: warning: {message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
  """The command-line flags of stiv-sample."""
  p = argparse.ArgumentParser(prog="stiv-sample", description=__doc__.splitlines()[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="training workdir (its latest good checkpoint's EMA weights)")
  src.add_argument("--checkpoint", help="path of one checkpoint (WORKDIR/checkpoints/STEP)")
  src.add_argument("--weights", help="a stiv-export folder (safetensors + config.json)")
  p.add_argument("--mesh", default=None, metavar="AXIS=N,...",
                 help="device mesh, e.g. fsdp=8 or data=2,fsdp=2,tensor=2 (unnamed axes: data "
                      "takes the rest); default: the run config's mesh section")
  p.add_argument("--task", default="t2v", help=f"one of {sorted(tasks_lib.TASKS)}")
  p.add_argument("--out", default="samples/sample.mp4", help="output MP4 (PNG for t2i)")
  p.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable)")
  p.add_argument("--prompts-file", help="text file, one prompt per line")
  p.add_argument("--num-samples", type=int, default=None,
                 help="samples to draw (prompts are cycled); default: one per prompt")
  p.add_argument("--batch-size", type=int, default=None,
                 help="samples per sampler call (default: enough to fill the mesh)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--steps", type=int, default=None)
  p.add_argument("--guidance", type=float, default=None, help="JIT-CFG scale (>= 0)")
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
                 help="micro-condition stride (default: what the training data held most)")
  p.add_argument("--orig-size", default=None, metavar="HxW",
                 help="micro-condition original size in pixels (default: the training data's)")
  p.add_argument("--bucket", default=None, metavar="HxW",
                 help="latent size to sample, one of the trained buckets (default: the model's)")
  p.add_argument("--keyframe-stride", type=float, default=20.0, help="long: keyframe stride")
  p.add_argument("--first-k", type=int, default=4, help="v2v: frames given")
  p.add_argument("--gif", action="store_true", help="also write a GIF per sample")
  p.add_argument("--fps", type=int, default=8)
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--verbose", action="store_true", help="print tracebacks of errors")
  return p


def check_flags(args: argparse.Namespace) -> None:
  """Flag values that are wrong whatever the checkpoint (before the slow load)."""
  for flag in ("guidance", "text_guidance", "image_guidance"):
    value = getattr(args, flag)
    if value is not None and not (math.isfinite(value) and value >= 0):
      raise UserError(f"--{flag.replace('_', '-')}: must be a finite number >= 0 (0 = "
                      f"unconditional, 1 = conditional only), got {value}")
  positive_float = (("frame_stride", "--frame-stride"), ("keyframe_stride", "--keyframe-stride"),
                    ("shift", "--shift"))
  for field, flag in positive_float:
    value = getattr(args, field)
    if value is not None and not (math.isfinite(value) and value > 0):
      raise UserError(f"{flag}: must be a finite number > 0, got {value}")
  positive_int = (("num_frames", "--num-frames"), ("batch_size", "--batch-size"),
                  ("fps", "--fps"), ("first_k", "--first-k"), ("steps", "--steps"),
                  ("num_samples", "--num-samples"))
  for field, flag in positive_int:
    value = getattr(args, field)
    if value is not None and value < 1:
      raise UserError(f"{flag}: must be >= 1, got {value}")


def check_guidance(scfg: Any, args: argparse.Namespace) -> None:
  """The guidance scales actually used (flags or the run's `sampling` section) are finite and
  >= 0; names where a bad one came from."""
  for field in ("guidance", "text_guidance", "image_guidance"):
    value = float(getattr(scfg, field))
    if not (math.isfinite(value) and value >= 0):
      where = (f"--{field.replace('_', '-')}" if getattr(args, field) is not None
               else f"sampling.{field} of the run's config")
      raise UserError(f"{where}: must be a finite number >= 0, got {value}; pass "
                      f"--{field.replace('_', '-')}=7.5 (or another scale)")


def check_frames(task: tasks_lib.TaskSpec, args: argparse.Namespace, model_cfg: Any) -> int:
  """Latent frames per clip for `task`: a count the model takes (a multiple of
  model.patch_t) and the task's frame mode accepts."""
  if task.single_frame:
    if args.num_frames is not None and args.num_frames != 1:
      warn(f"--task=t2i samples one frame; --num-frames={args.num_frames} is ignored")
    return 1
  t = int(args.num_frames or model_cfg.num_frames)
  pt = int(model_cfg.patch_t)
  if t % pt or (t == 1 and pt > 1):
    raise UserError(f"--num-frames={t}: this model takes a multiple of its temporal patch "
                    f"model.patch_t={pt} (e.g. {max(pt, t - t % pt)}); for one frame use "
                    "--task=t2i")
  from stiv_jax import conditioning
  try:
    conditioning.frame_mask(task.frame_mode, t, k=args.first_k)
  except ValueError as e:
    raise UserError(f"--num-frames={t} does not fit --task={task.name}: {e}") from e
  if task.name == "long" and t < 3:
    raise UserError(f"--num-frames={t}: --task=long fills gaps between keyframes, it needs "
                    ">= 3 frames per clip")
  return t


def read_prompts(args: argparse.Namespace, task: tasks_lib.TaskSpec) -> list[str]:
  """Prompts from --prompt / --prompts-file, cycled to --num-samples."""
  prompts = list(args.prompt or [])
  if args.prompts_file:
    if not os.path.exists(args.prompts_file):
      raise UserError(f"--prompts-file: no such file {args.prompts_file}")
    with open(args.prompts_file) as fh:
      prompts += [line.strip() for line in fh if line.strip()]
  if task.empty_text and any(prompts):
    warn(f"--task={task.name} always samples with the empty prompt; the {len(prompts)} "
         "prompt(s) given are ignored")
  if not prompts:
    if task.empty_text:
      prompts = [""]
    else:
      raise UserError(f"--task={task.name} needs --prompt or --prompts-file")
  n = args.num_samples if args.num_samples is not None else len(prompts)
  if n < 1:
    raise UserError(f"--num-samples: must be >= 1, got {n}")
  return [prompts[i % len(prompts)] for i in range(n)]


def warn_truncated(text_encoder: Any, prompts: Sequence[str]) -> None:
  """One warning naming the prompts longer than the text encoder's max_length tokens."""
  unique = sorted(set(p for p in prompts if p))
  if not unique:
    return
  lengths = text_encoder.token_lengths(unique)
  long = [(p, n) for p, n in zip(unique, lengths) if n > int(text_encoder.max_length)]
  if long:
    shown = "; ".join(f"{p[:40]!r}{'...' if len(p) > 40 else ''} ({n} tokens)"
                      for p, n in long[:3])
    warn(f"{len(long)} prompt(s) exceed the text encoder's max_length="
         f"{text_encoder.max_length} tokens and are cut: {shown}")


def parse_mesh(value: str | None) -> dict[str, int] | None:
  """'fsdp=8' / 'data=2,fsdp=2,tensor=2' -> axis sizes (unnamed: data -1, others 1)."""
  from stiv_jax import sharding as shd
  if value is None:
    return None
  sizes = {"data": -1, "fsdp": 1, "tensor": 1}
  given = set()
  for part in filter(None, value.split(",")):
    name, _, num = part.partition("=")
    name = name.strip()
    if name not in shd.MESH_AXES or not num.strip().lstrip("-").isdigit():
      raise UserError(f"--mesh: expected AXIS=N[,AXIS=N] with axes {shd.MESH_AXES}, got "
                      f"{value!r}")
    sizes[name] = int(num)
    given.add(name)
  if not given:
    raise UserError(f"--mesh: expected AXIS=N[,AXIS=N], got {value!r}")
  return sizes


def make_mesh(config: Any, flag: str | None):
  """(mesh, logical rules) for sampling: --mesh sizes (else the config's mesh section) over
  every device, the config's logical rules; a size that does not fit names the flag."""
  import jax
  import ml_collections
  from stiv_jax import sharding as shd
  section = config.get("mesh") or shd.mesh_config()
  sizes = parse_mesh(flag) or {a: int(section.get(a, 1)) for a in shd.MESH_AXES}
  where = "--mesh" if flag is not None else "the run config's mesh section (override: --mesh)"
  try:
    shd.set_partitioner(section)
    mesh = shd.make_mesh(ml_collections.ConfigDict(sizes))
    rules = shd.rules_from_config(section.get("rules") or shd.default_rules())
  except ValueError as e:
    raise UserError(f"{where}: {e} ({jax.device_count()} devices here)") from e
  return mesh, rules


class Source:
  """What to sample from: config, EMA model (placed on the mesh), run record, mesh, rules,
  and a LoRA run's EMA adapters (the model is then the frozen base)."""

  def __init__(self, config: Any, model: Any, run_record: dict | None, mesh: Any, rules: Any,
               where: str, step: int | None = None, adapters: Any = None):
    self.config, self.model, self.run_record = config, model, run_record
    self.mesh, self.rules, self.where, self.step = mesh, rules, where, step
    self.adapters = adapters

  def sampler(self, scfg: Any):
    """The Sampler on this source's mesh; a LoRA source samples with its adapters unmerged
    (W + (alpha / r) A B formed inside the jitted step)."""
    from flax import nnx
    from stiv_jax import lora as lora_lib
    from stiv_jax import sampling
    if self.adapters is None:
      return sampling.Sampler(self.model, scfg, mesh=self.mesh, rules=self.rules)
    graphdef, state = nnx.split(self.model)
    return sampling.Sampler(self.model, scfg, mesh=self.mesh, rules=self.rules,
                            apply=lora_lib.make_apply_fn(graphdef, lora_lib.scale(
                                self.config.lora)),
                            params={"base": state, "adapters": self.adapters})


def _config_of(args: argparse.Namespace) -> tuple[Any, str]:
  """(the run's config, the source path) before any weights are read."""
  from stiv_jax import export_format
  from stiv_jax.train import checkpoint as ckpt_lib
  flag = "--weights" if args.weights else ("--workdir" if args.workdir else "--checkpoint")
  path = args.weights or args.workdir or args.checkpoint
  if not os.path.exists(path):
    raise UserError(f"{flag}: no such path {path}")
  try:
    if args.weights:
      return export_format.read_config(path)[0], path
    workdir, _ = ckpt_lib.resolve_checkpoint(path)
    return ckpt_lib.load_config(workdir), path
  except (FileNotFoundError, ValueError) as e:
    raise UserError(f"{flag}: {str(e).splitlines()[0]}") from e


def load_source(args: argparse.Namespace) -> Source:
  """Config, EMA model in its shardings and run record from --workdir/--checkpoint/--weights;
  a UserError when incompatible."""
  from flax import nnx
  from stiv_jax import export_format
  from stiv_jax.data import contract as contract_lib
  from stiv_jax.train import checkpoint as ckpt_lib
  config, path = _config_of(args)
  mesh, rules = make_mesh(config, args.mesh)
  step = adapters = None
  try:
    if args.weights:
      config, graphdef, state = export_format.load_sharded(path, mesh, rules, config)
      model = nnx.merge(graphdef, state)
      if export_format.has_lora(path):
        adapters = export_format.load_lora(path, config, mesh, rules)
      run_record = export_format.read_config(path)[1]
      record_where = path
    else:
      restored = ckpt_lib.restore_ema(path, mesh, rules,
                                      on_skip=lambda line: warn(line))
      config, model, step = restored.config, restored.model(), restored.step
      adapters = restored.adapters
      workdir, _ = ckpt_lib.resolve_checkpoint(path)
      run_record = contract_lib.load_run_contract(workdir)
      record_where = workdir
  except Exception as e:  # the loaders name the file / field / shape that does not fit
    msg = ckpt_lib.one_line(e) if not isinstance(e, export_format.ExportError) else str(e)
    raise UserError(f"{path} cannot be loaded: {msg}") from e
  for section in ("model", "vae", "text"):
    if section not in config:
      raise UserError(f"{path}: its config has no {section!r} section")
  if run_record and run_record.get("contract"):
    where = f"{run_record.get('data_path')} (recorded in {record_where})"
    try:
      with config.unlocked():
        contract_lib.resolve_vae(config.vae, run_record["contract"]["vae"], where)
        contract_lib.resolve_text(config.text, run_record["contract"]["text"], where)
    except contract_lib.ContractError as e:
      raise UserError(str(e)) from e
  return Source(config, model, run_record, mesh, rules, path, step, adapters)


def parse_size(value: str | None, flag: str) -> tuple[int, int] | None:
  """'HxW' -> (h, w) (positive ints), None when not given."""
  if value is None:
    return None
  parts = value.lower().split("x")
  if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
    raise UserError(f"{flag}: expected HxW with positive integers, got {value!r}")
  return int(parts[0]), int(parts[1])


def micro_defaults(args: argparse.Namespace, run_record: dict | None,
                   shape: tuple[int, int, int], spatial_factor: int
                   ) -> tuple[dict[str, float], str]:
  """Micro-conditions (without num_frames) for samples of latent `shape` [T, H, W] and where
  they came from: the training bucket of that shape (else of that spatial size, else the
  model's), overridden by --frame-stride / --orig-size."""
  from stiv_jax.data import contract as contract_lib
  micro: dict[str, float] = {}
  source = "sampling resolution (the run has no data contract)"
  if run_record:
    buckets = run_record["buckets"]
    key = "x".join(map(str, shape))
    same_hw = sorted((k for k in buckets if k.split("x")[1:] == key.split("x")[1:]),
                     key=lambda k: -buckets[k]["count"])
    pick = key if key in buckets else (same_hw[0] if same_hw else None)
    if pick is None:
      raise UserError(f"latent size {shape[1]}x{shape[2]} was never trained; trained buckets "
                      f"are {sorted(buckets)} (choose one with --bucket=HxW)")
    try:
      micro = contract_lib.bucket_micro(run_record, pick)
    except contract_lib.ContractError as e:
      raise UserError(str(e)) from e
    micro.pop("num_frames")
    source = f"training bucket {pick}"
  else:
    micro = {"orig_height": shape[1] * spatial_factor, "orig_width": shape[2] * spatial_factor,
             "crop_top": 0.0, "crop_left": 0.0, "stride": 1.0}
  if args.frame_stride is not None:
    micro["stride"] = float(args.frame_stride)
  size = parse_size(args.orig_size, "--orig-size")
  if size is not None:
    micro["orig_height"], micro["orig_width"] = map(float, size)
  return micro, source


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


def write_samples(videos: Sequence[np.ndarray], paths: Sequence[str],
                  args: argparse.Namespace) -> list[str]:
  """Writes each uint8 sample (MP4, or PNG for t2i; GIF if asked); returns the files."""
  from stiv_jax import video_io
  written = []
  for path, video in zip(paths, videos):
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
  return written


class OffsetSampler:
  """A sampler whose noise offsets start at `base`: sample i of a batch that starts at global
  index s draws the noise of sample s + i, whatever the batching."""

  def __init__(self, sampler: Any):
    self.sampler, self.base = sampler, 0

  def __call__(self, cond, null, seed: int, progress: bool = False, noise_offset: int = 0):
    return self.sampler(cond, null, seed, progress=progress,
                        noise_offset=self.base + noise_offset)


def default_batch_size(sampler: Any) -> int:
  """The fewest samples whose forward batch (samples x CFG branches) fills the mesh."""
  d, n = int(sampler.batch_divisor), int(sampler.forward_branches)
  return max(1, d // math.gcd(d, n))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Parses flags, samples, writes files; returns a summary dict (raises UserError, or
  NonFiniteOutput after writing samples that hold NaN/Inf)."""
  args = build_parser().parse_args(argv)
  check_flags(args)
  task = tasks_lib.get_task(args.task)
  prompts = read_prompts(args, task)
  inputs = load_inputs(args)
  if task.needs == "image" and inputs.image is None:
    raise UserError(f"--task={task.name} needs --image")
  try:
    check_guidance(sampler_config({}, args), args)  # flag errors before the (slow) load
  except ValueError as e:
    raise UserError(str(e)) from e
  source = load_source(args)
  config, run_record = source.config, source.run_record
  from stiv_jax.models.encoders import build_text_encoder, build_vae
  try:
    scfg = sampler_config(config, args)
  except ValueError as e:
    raise UserError(str(e)) from e
  check_guidance(scfg, args)
  t = check_frames(task, args, config.model)
  vae = build_vae(config.vae)
  text_encoder = build_text_encoder(config.text)
  warn_truncated(text_encoder, [] if task.empty_text else prompts)
  latent_hw = parse_size(args.bucket, "--bucket") or (int(config.model.latent_height),
                                                     int(config.model.latent_width))
  micro, micro_from = micro_defaults(args, run_record, (t, *latent_hw), vae.spatial_factor)
  if task.single_frame and run_record and not any(
      int(k.split("x")[0]) == 1 for k in run_record["buckets"]):
    warn(f"--task=t2i but this model never trained on images (its buckets: "
         f"{sorted(run_record['buckets'])}); expect noise")
  sampler = source.sampler(scfg)
  offset = OffsetSampler(sampler)
  runner = tasks_lib.TaskRunner(offset, text_encoder, vae, config.model, first_k=args.first_k,
                                keyframe_stride=args.keyframe_stride, resize=args.resize,
                                micro_defaults=micro, latent_size=latent_hw)
  n = len(prompts)
  batch = min(n, args.batch_size or default_batch_size(sampler))
  paths, sheet_path = output_paths(args.out, n, task.name)
  starts = range(0, n, batch)
  bar = None
  if len(starts) > 1 and not args.no_progress:
    from tqdm import tqdm
    bar = tqdm(total=n, desc=f"sampling {task.name}", unit="sample")
  from stiv_jax import video_io
  written, sheet, bad, frames_out = [], [], [], 0
  for start in starts:
    chunk = prompts[start:start + batch]
    offset.base = start if task.name != "long" else start << 16
    latents = runner.run(task.name, chunk, inputs, seed=args.seed, num_frames=t,
                         length=args.length, progress=bar is None and not args.no_progress)
    frames = runner.decode(latents)
    finite = np.isfinite(latents).reshape(len(chunk), -1).all(1) & np.isfinite(
        frames).reshape(len(chunk), -1).all(1)
    bad += [start + i for i in np.nonzero(~finite)[0]]
    videos = [video_io.to_uint8(np.nan_to_num(v)) for v in frames]
    written += write_samples(videos, paths[start:start + len(chunk)], args)
    sheet += videos[:max(0, SHEET_MAX - len(sheet))]
    frames_out = int(latents.shape[1])
    if bar is not None:
      bar.update(len(chunk))
  if bar is not None:
    bar.close()
  video_io.write_png(sheet_path, video_io.contact_sheet(sheet))
  summary = {"files": written, "contact_sheet": sheet_path, "task": task.name,
             "prompts": [""] * n if task.empty_text else prompts, "seed": args.seed,
             "steps": scfg.steps, "guidance": scfg.guidance, "frames": frames_out,
             "latent_size": list(latent_hw), "micro": {**micro, "num_frames": t},
             "micro_from": micro_from, "source": source.where, "step": source.step,
             "mesh": {k: int(v) for k, v in source.mesh.shape.items()}, "batch_size": batch,
             "lora": source.adapters is not None,
             "vae": {"scaling_factor": vae.scaling_factor, "shift_factor": vae.shift_factor}}
  if bad:
    raise NonFiniteOutput(summary, f"{len(bad)} of {n} samples hold NaN/Inf (indices "
                          f"{bad[:8]}); they were written black to {paths[bad[0]]}. The "
                          "weights or the sampler settings diverge: try fewer --steps, "
                          "another --solver, or an older checkpoint (--checkpoint)")
  return summary


def run(argv: Sequence[str] | None = None) -> None:
  """Console entry point: one JSON summary line, or a one-line error (exit 2 for a user
  error, 1 for non-finite samples or an unexpected failure; tracebacks with --verbose)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  verbose = "--verbose" in argv
  try:
    summary = main(argv)
  except (UserError, tasks_lib.TaskError) as e:
    if verbose:
      import traceback
      traceback.print_exc()
    _fail(str(e))
  except NonFiniteOutput as e:
    print(json.dumps(e.args[0]))
    _fail(e.args[1], code=1)
  except SystemExit:
    raise
  except Exception as e:  # noqa: BLE001 - one line unless --verbose
    if verbose:
      raise
    from stiv_jax.train.checkpoint import one_line
    _fail(f"{one_line(e)} (rerun with --verbose for the traceback)", code=1)
  print(json.dumps(summary, allow_nan=False))


if __name__ == "__main__":
  run()
