"""Progressive training: initialise a stage's parameters from other stages' checkpoints.

config.init.sources is a list of {path, include, exclude, use_ema}: each source's (EMA)
parameters (a workdir, a checkpoint folder or a `stiv-export` folder) whose names match
`include` and not `exclude` (regexes on 'a/b/kernel' names) are copied into the fresh state,
later sources overriding earlier ones. Covers T2I -> T2V (2D patch kernel inflated,
final-layer outputs copied per frame, temporal attention left fresh), T2V -> STIV, masked ->
unmasked fine-tune, and spatial-from-one / temporal-from-another. config.init.rope_from_config
sets the RoPE factors from the source model's token grid (256px/20 frames -> 512px/40
frames). Every target parameter not loaded must match init.allow_missing; shape mismatches
are errors; all are listed by name.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from stiv_jax.train import checkpoint as ckpt_lib

PATCH_KERNEL = "patch/kernel"
# The final layer predicts a (pt, ps, ps, C) patch volume, pt outermost: an image model's output
# weights are copied to every frame of the cube, so a static video decodes like the image.
FINAL_OUTPUTS = ("final/linear/kernel", "final/linear/bias")


def inflate_final_output(value: np.ndarray, patch_t: int) -> np.ndarray:
  """[..., ps*ps*C] image output weights -> [..., pt*ps*ps*C] (copied per frame)."""
  return np.tile(value, (1,) * (value.ndim - 1) + (patch_t,))


@dataclasses.dataclass
class InitReport:
  """What stage init did to each parameter, by name."""
  loaded: dict[str, str] = dataclasses.field(default_factory=dict)      # name -> source
  inflated: dict[str, str] = dataclasses.field(default_factory=dict)    # name -> source
  missing: list[str] = dataclasses.field(default_factory=list)          # fresh init kept
  mismatched: list[str] = dataclasses.field(default_factory=list)       # name: shapes
  unused: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # source -> names

  def summary(self) -> str:
    lines = [f"Stage init: {len(self.loaded)} parameters loaded, {len(self.inflated)} inflated, "
             f"{len(self.missing)} freshly initialised, {len(self.mismatched)} mismatched."]
    lines += [f"  inflated {n} from {s}" for n, s in sorted(self.inflated.items())]
    lines += [f"  fresh    {n}" for n in self.missing]
    lines += [f"  MISMATCH {n}" for n in self.mismatched]
    for src, names in self.unused.items():
      lines += [f"  unused in {src}: {n}" for n in names]
    return "\n".join(lines)


def _name(path: tuple) -> str:
  """'a/b/kernel' from a pytree key path (dropping the Variable's trailing 'value')."""
  parts = [str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path]
  if parts and parts[-1] == "value":
    parts = parts[:-1]
  return "/".join(parts)


def _source_state_dir(path: str) -> tuple[str, str]:
  """(workdir, '<workdir>/checkpoints/<step>/state') of a workdir (latest) or step dir."""
  workdir, step = ckpt_lib.resolve_checkpoint(path)
  ckdir = os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR)
  if step is None:
    steps = [int(d) for d in os.listdir(ckdir) if d.isdigit()]
    if not steps:
      raise FileNotFoundError(f"{ckdir}: no finished checkpoint")
    step = max(steps)
  return workdir, os.path.join(ckdir, str(step), "state")


def load_source_params(path: str, use_ema: bool = True) -> dict[str, np.ndarray]:
  """{name: numpy array} of a checkpoint's EMA (or raw) parameters, or of a `stiv-export`
  folder's weights (EMA only), on the host."""
  from stiv_jax import export_format
  if export_format.is_export(path):
    if not use_ema:
      raise ValueError(f"init.sources: {path} is an export folder, which holds only EMA "
                       "weights; set use_ema=True for it")
    return export_format.load_numpy(path)
  _, state_dir = _source_state_dir(path)
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(state_dir)
  tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
  key = "ema_params" if use_ema else "params"
  sub = {key: tree[key]}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), sub)
  restored = ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(
      item=sub, restore_args=restore_args, partial_restore=True))
  flat = jax.tree_util.tree_flatten_with_path(restored[key])[0]
  return {_name(p): np.asarray(x) for p, x in flat}


def rope_scales(src_model: Any, dst_model: Any) -> tuple[float, float]:
  """RoPE factors for dst so its token positions span the source's range (interpolation)."""
  def grid(m):
    tp = max(int(m.num_frames), int(m.patch_t)) // int(m.patch_t)
    return tp, int(m.latent_height) // int(m.patch_s)
  (st, ss), (dt, ds) = grid(src_model), grid(dst_model)
  return float(src_model.rope_scale_t) * st / dt, float(src_model.rope_scale_s) * ss / ds


def prepare_config(config: ml_collections.ConfigDict) -> None:
  """Sets model.rope_scale_t/s from init.rope_from_config's saved config (before building)."""
  src = config.init.get("rope_from_config", "")
  if not src:
    return
  src = os.path.abspath(src)
  is_step_dir = (os.path.basename(src).isdigit()
                 and os.path.basename(os.path.dirname(src)) == ckpt_lib.CHECKPOINT_DIR)
  workdir = os.path.dirname(os.path.dirname(src)) if is_step_dir else src
  src_cfg = ckpt_lib.load_config(workdir)
  config.model.rope_scale_t, config.model.rope_scale_s = rope_scales(src_cfg.model, config.model)


def _sources(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  out = []
  for i, s in enumerate(config.init.sources):
    s = dict(s)
    if not s.get("path"):
      raise ValueError(f"init.sources[{i}].path: not set")
    unknown = set(s) - {"path", "include", "exclude", "use_ema"}
    if unknown:
      raise ValueError(f"init.sources[{i}]: unknown keys {sorted(unknown)}")
    out.append({"path": s["path"], "include": s.get("include", "") or ".*",
                "exclude": s.get("exclude", ""), "use_ema": bool(s.get("use_ema", True))})
  return out


def merge_params(target: dict[str, np.ndarray], sources: list[tuple[dict[str, Any],
                 dict[str, np.ndarray]]], *, patch_t: int, inflation: str,
                 allow_missing: str = "") -> tuple[dict[str, np.ndarray], InitReport]:
  """Pure merge of {name: array} dicts; returns (new values for loaded names, report)."""
  from stiv_jax.models.embeddings import inflate_patch_kernel
  report = InitReport()
  new: dict[str, np.ndarray] = {}
  for spec, src in sources:
    inc, exc = re.compile(spec["include"]), re.compile(spec["exclude"]) if spec["exclude"] else None
    used = set()
    for name, tval in target.items():
      if not inc.search(name) or (exc is not None and exc.search(name)):
        continue
      if name not in src:
        continue
      sval = src[name]
      used.add(name)
      if sval.shape == tval.shape:
        new[name] = sval.astype(tval.dtype)
        report.loaded[name] = spec["path"]
        report.inflated.pop(name, None)
      elif (name == PATCH_KERNEL and sval.ndim == tval.ndim and sval.shape[0] == 1
            and sval.shape[1:] == tval.shape[1:] and tval.shape[0] == patch_t):
        new[name] = np.asarray(inflate_patch_kernel(sval, patch_t, inflation), tval.dtype)
        report.inflated[name] = spec["path"]
        report.loaded.pop(name, None)
      elif (name in FINAL_OUTPUTS and sval.shape[:-1] == tval.shape[:-1]
            and sval.shape[-1] * patch_t == tval.shape[-1]):
        new[name] = inflate_final_output(sval, patch_t).astype(tval.dtype)
        report.inflated[name] = spec["path"]
        report.loaded.pop(name, None)
      else:
        report.mismatched.append(f"{name}: source {sval.shape} vs target {tval.shape} "
                                 f"({spec['path']})")
    unused = sorted(n for n in src if n not in target)
    if unused:
      report.unused[spec["path"]] = unused
  allow = re.compile(allow_missing) if allow_missing else None
  report.missing = sorted(n for n in target if n not in new)
  if report.mismatched:
    raise ValueError("init.sources: parameter shapes do not fit:\n  " +
                     "\n  ".join(report.mismatched))
  not_allowed = [n for n in report.missing if allow is None or not allow.search(n)]
  if not_allowed:
    raise ValueError("init.sources: these parameters were not found in any source and do not "
                     f"match init.allow_missing={allow_missing!r}:\n  " + "\n  ".join(not_allowed))
  return new, report


def params_from_sources(config: ml_collections.ConfigDict, params: Any,
                        param_shardings: Any) -> tuple[Any, InitReport]:
  """Fresh parameters with those the configured sources hold replaced (placed in
  `param_shardings`); also the frozen base of a LoRA run (stiv_jax/lora.py)."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  names = [_name(p) for p, _ in flat]
  target = {n: jax.ShapeDtypeStruct(x.shape, x.dtype) for n, (_, x) in zip(names, flat)}
  loaded = [(s, load_source_params(s["path"], s["use_ema"])) for s in _sources(config)]
  new, report = merge_params(target, loaded, patch_t=int(config.model.patch_t),
                             inflation=config.model.patch_inflation,
                             allow_missing=config.init.get("allow_missing", ""))
  psh = jax.tree.leaves(param_shardings)
  leaves = [jax.device_put(new[n], s) if n in new else x
            for n, (_, x), s in zip(names, flat, psh)]
  return jax.tree.unflatten(jax.tree.structure(params), leaves), report


def init_from_sources(config: ml_collections.ConfigDict, state: Any,
                      shardings: Any) -> tuple[Any, InitReport]:
  """A fresh train state with params (and EMA) replaced from the configured sources."""
  params, report = params_from_sources(config, state.params, shardings.params)
  psh = jax.tree.leaves(shardings.params)
  ema = jax.tree.unflatten(jax.tree.structure(state.params),
                           [jax.device_put(np.asarray(v), s)
                            for v, s in zip(jax.tree.leaves(params), psh)])
  return state.replace(params=params, ema_params=ema), report
