"""Shared builder of the paper's training stages (STIV_SPEC.md section 2), one config per stage.

Every stage file (t2i.py, t2v.py, ...) calls `stage_config(name, arg, ...)`. The argument is a
comma-separated list: a model size (XL, XXL, M; default XL), `local` (a CPU run of the demo-sized
model on the demo shards, a few steps), `tiny` (local with the unit-test model: latents
[4, 8, 8, 4], text dim 16), `root=PATH` (the folder of all stage workdirs; each stage's workdir
is ROOT/<stage>_<size> and its `init.sources` point at the previous stages' workdirs there; a
`local`/`tiny` run starts from them only when `root=` is given, else from scratch), and
stage-specific flags a file allows (e.g. `512` in t2i.py).

On top of the `stiv-train` schema (stiv_jax/config_schema.py) a config carries `stage`:
  stage.name        the stage's name (t2v256, stiv512, ...)
  stage.size        model size name
  stage.workdir     canonical workdir of this stage (ROOT/<name>_<size>); the launcher's default
  stage.starts_from names of the stages whose checkpoints `init.sources` reads ('' = scratch)
  stage.topology    target slice for stiv-compile / launcher (v5e-256, v5p-128, h100-64, ...)
  stage.resolution, stage.frames, stage.frame_stride, stage.data_spec   what data.path holds
  stage.prep_command  (local runs) the stiv-prep command that writes matching synthetic shards
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import ml_collections

from stiv_jax import config_schema as schema
from stiv_jax import sharding

SIZES = ("XL", "XXL", "M")
DEFAULT_ROOT = "workdir/stiv"
# Temporal-attention parameters live under this path part in the model (stiv_jax/models/blocks.py).
TEMPORAL_REGEX = r".*temporal.*"


@dataclasses.dataclass(frozen=True)
class StageArgs:
  """The parsed config argument."""
  size: str = "XL"
  local: bool = False
  tiny: bool = False
  root: str = DEFAULT_ROOT
  root_given: bool = False
  flags: frozenset[str] = frozenset()


def parse_arg(file: str, arg: str | None, allowed_flags: Iterable[str] = ()) -> StageArgs:
  """Parses 'XL,local,root=PATH,<flag>' and fails naming the file and the bad token."""
  allowed = set(allowed_flags)
  size, local, tiny, root, flags = "XL", False, False, DEFAULT_ROOT, set()
  for tok in filter(None, (t.strip() for t in (arg or "").split(","))):
    if tok in SIZES:
      size = tok
    elif tok in ("local", "runlocal"):
      local = True
    elif tok == "tiny":
      local = tiny = True
    elif tok.startswith("root="):
      root = tok[len("root="):]
      if not root:
        raise ValueError(f"{file}: config argument 'root=' needs a path")
    elif tok in allowed:
      flags.add(tok)
    else:
      raise ValueError(
          f"{file}: unknown config argument {tok!r}; expected a size {SIZES}, 'local', 'tiny', "
          f"'root=PATH'" + (f" or one of {sorted(allowed)}" if allowed else ""))
  return StageArgs(size=size, local=local, tiny=tiny, root=root.rstrip("/"),
                   root_given=root != DEFAULT_ROOT, flags=frozenset(flags))


def stage_workdir(root: str, name: str, size: str) -> str:
  """Canonical workdir of a stage: ROOT/<name>_<size>."""
  return f"{root}/{name}_{size}"


def source(path: str, include: str = ".*", exclude: str = "", use_ema: bool = True
           ) -> dict:
  """One `init.sources` entry (stiv_jax/train/stages.py): parameters copied from a workdir."""
  return {"path": path, "include": include, "exclude": exclude, "use_ema": use_ema}


# Paper-scale mesh and remat per (size, slice); set with `stiv-compile` (experiments/MEMORY_PLAN.md).
# Key: (size, chip kind) -> (fsdp, tensor, remat). data = all remaining chips.
PAPER_MESH = {
    ("XL", "v5e"): (16, 1, "save_self_attn"),
    ("XXL", "v5e"): (32, 1, "full"),
    ("M", "v5e"): (64, 4, "full"),
    ("XL", "v5p"): (8, 1, "save_self_attn"),
    ("XXL", "v5p"): (8, 1, "save_self_attn"),
    ("M", "v5p"): (32, 1, "save_self_attn"),
}
DEFAULT_TOPOLOGY = {"XL": "v5e-256", "XXL": "v5e-256", "M": "v5p-256"}


def _paper_sections(c: ml_collections.ConfigDict, size: str, topology: str) -> None:
  """Pod defaults: bf16 compute, mesh/remat from PAPER_MESH, checkpoint/metrics cadence."""
  kind = topology.split("-")[0]
  fsdp, tensor, remat = PAPER_MESH.get((size, kind), (8, 1, "save_self_attn"))
  c.mesh = sharding.mesh_config(data=-1, fsdp=fsdp, tensor=tensor)
  # Cross-attention k/v kernels are [layers, text_embed, heads, kv]: without this they stay
  # replicated (330 MB per device for XL); 1280 divides every fsdp size used here.
  c.mesh.rules.text_embed = "fsdp"
  c.model.remat = remat
  c.model.dtype = "bfloat16"
  c.data.worker_count = 4
  c.checkpoint.every_steps = 2000
  c.checkpoint.keep_last = 3
  c.checkpoint.keep_every = 50_000
  c.metrics.every_steps = 100


def _local_sections(c: ml_collections.ConfigDict, tiny: bool, frames: int, scale: int) -> None:
  """A CPU run: the demo-sized model (or the unit-test model with `tiny`), a few steps.

  `frames` is the local latent frame count (the caller maps the stage's 20 / 40 frames to 16 / 32
  for the demo model, 4 / 8 for tiny, 1 for images); `scale` is 2 for 512-px stages.
  """
  preset = "tiny" if tiny else "demo"
  side = schema.CPU_PRESETS[preset][2] * scale
  c.model, c.vae, c.text = schema.cpu_preset(preset, num_frames=frames, latent_height=side,
                                             latent_width=side)
  c.optimizer.min_dim_size_to_factor = 16 if tiny else 64
  c.mesh = sharding.mesh_config(data=-1, fsdp=1, tensor=1)
  c.data.batch_size = 8
  c.data.worker_count = 0
  c.optimizer.warmup_steps = 2
  c.optimizer.ema_decay = 0.999
  c.optimizer.ema_warmup = True
  c.train.num_steps = 6
  c.checkpoint.every_steps = 2
  c.checkpoint.keep_last = 2
  c.checkpoint.keep_every = 0
  c.checkpoint.async_save = False
  c.metrics.every_steps = 2


def stage_config(
    name: str, arg: str | None, *, file: str,
    resolution: int = 256, frames: int = 20, frame_stride: int = 3,
    tasks: dict[str, float], batch_size: int, num_steps: int, lr: float = 2e-4,
    mask_ratio: float = 0.5, data_name: str, starts_from: Sequence[tuple[str, str, str]] = (),
    rope_from: str = "", allow_missing: str = "", image: bool = False,
    allowed_flags: Iterable[str] = (), k: int = 4, stride: int = 2,
    text_dropout: float = 0.1, image_dropout: float = 0.08,
) -> ml_collections.ConfigDict:
  """A full `stiv-train` config for one stage.

  starts_from: (stage name, include regex, exclude regex) triples; each becomes an
  `init.sources` entry reading that stage's EMA weights from its canonical workdir.
  rope_from: a stage whose model sizes set the RoPE interpolation factors ('' = none).
  """
  a = parse_arg(file, arg, allowed_flags)
  c = schema.train_config()
  c.stage = ml_collections.ConfigDict()
  # What data.path must hold; on a pod the shards come from the video pipeline (stiv-prep run).
  c.stage.data_spec = (f"{resolution}px, {1 if image else frames} frames at stride "
                       f"{frame_stride}" + (" (images)" if image else ""))
  c.stage.prep_command = ""
  c.model = schema.model_config(a.size)
  c.vae = schema.vae_config("kl", spatial_factor=8, latent_channels=8)  # the paper's VAE
  c.text = schema.text_config("clip", dim=1280, max_length=77)
  topology = DEFAULT_TOPOLOGY[a.size]

  latent_frames = 1 if image else frames
  if image:   # T2I: an image model (no temporal attention, temporal patch 1)
    c.model.num_frames, c.model.patch_t, c.model.temporal_attention = 1, 1, False
  else:
    c.model.num_frames = frames
  c.model.latent_height = c.model.latent_width = resolution // 8
  c.model.mask_ratio = mask_ratio

  c.data.batch_size = batch_size
  c.data.path = f"{a.root}/data/{data_name}"
  c.train.num_steps = num_steps
  c.optimizer.lr = lr
  c.conditioning.tasks = ml_collections.ConfigDict(dict(tasks))
  c.conditioning.k, c.conditioning.stride = k, stride
  c.conditioning.text_dropout, c.conditioning.image_dropout = text_dropout, image_dropout

  if a.local:
    # Demo data: 16 latent frames of 16x16 at 64 px (stands for 20 frames at 256 px); the
    # 40-frame / 512-px stages double the frames / side so their shapes differ as in the paper.
    local_frames = 1 if image else max(2, 16 * frames // 20)
    if a.tiny:
      local_frames = 1 if image else max(2, 4 * frames // 20)
    _local_sections(c, a.tiny, local_frames, 2 if resolution >= 512 else 1)
    if image:
      c.model.patch_t, c.model.temporal_attention = 1, False
    c.model.mask_ratio = mask_ratio
    px = 4 * c.model.latent_height
    local_name = f"{'tiny' if a.tiny else 'demo'}_{px}px_{c.model.num_frames}f"
    c.data.path = f"workdir/stage_data/{local_name}/shards"
    c.stage.prep_command = (
        f"stiv-prep synth-shards --output=workdir/stage_data/{local_name} --num-videos=32 "
        f"--size={px} --frames={c.model.num_frames} --vae-factor=4 --latent-channels=4 "
        f"--text-dim={c.text.dim} --text-len={c.text.max_length}")
    topology = "cpu-8"
  else:
    _paper_sections(c, a.size, topology)

  # A local run starts from the previous stages only when chained explicitly (`root=`); on
  # its own it trains from scratch, so it needs no other stage's workdir.
  chained = not a.local or a.root_given
  c.init.sources = tuple(source(stage_workdir(a.root, src, a.size), inc, exc)
                         for src, inc, exc in starts_from) if chained else ()
  c.init.rope_from_config = (stage_workdir(a.root, rope_from, a.size)
                             if rope_from and chained else "")
  c.init.allow_missing = allow_missing

  c.stage.name = name
  c.stage.size = a.size
  c.stage.workdir = stage_workdir(a.root, name, a.size)
  c.stage.starts_from = ",".join(s[0] for s in starts_from)
  c.stage.topology = topology
  c.stage.resolution = resolution
  c.stage.frames = latent_frames
  c.stage.frame_stride = frame_stride
  c.stage.local = a.local
  c.stage.flags = ",".join(sorted(a.flags))
  return c


def has_flag(file: str, arg: str | None, flag: str, allowed: Iterable[str]) -> bool:
  """Whether the stage-specific `flag` is in the argument (validated like stage_config)."""
  return flag in parse_arg(file, arg, allowed).flags
