"""`stiv-export`: a checkpoint's EMA weights as sharded safetensors + index, config, contract.

  stiv-export --workdir=DIR | --checkpoint=DIR/checkpoints/STEP --out=EXPORT_DIR
      [--merge] [--shard-size=2GB] [--dtype=float32|bfloat16] [--mesh=fsdp=8] [--verbose]

The folder layout and the tensor naming scheme are stiv_jax/export_format.py's. The EMA
parameters are restored alone (no optimizer state), sharded on the mesh, and fetched one
variable at a time, so the host holds at most one variable plus one output file. A LoRA run's
adapters are written beside the base weights (lora.safetensors, sampled unmerged), or folded
into them with --merge. `stiv-sample --weights=EXPORT_DIR` samples from the folder and a stage
config starts from it with `init.sources=({'path': EXPORT_DIR},)`. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from typing import Any, Sequence

import numpy as np

UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
DTYPES = ("float32", "bfloat16")


class ExportUserError(Exception):
  """A user error, printed as one line."""


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="stiv-export", description=__doc__.splitlines()[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--workdir", help="training workdir (its newest good checkpoint)")
  src.add_argument("--checkpoint", help="one checkpoint folder, WORKDIR/checkpoints/STEP")
  p.add_argument("--out", required=True, help="export folder to create (new or empty)")
  p.add_argument("--merge", action="store_true",
                 help="LoRA runs: fold the adapters into the base weights")
  p.add_argument("--shard-size", default="2GB", help="largest safetensors file (e.g. 500MB)")
  p.add_argument("--dtype", choices=DTYPES, default=None,
                 help="cast floating weights (default: as stored; bfloat16 is not bit-exact)")
  p.add_argument("--mesh", default=None, help="restore mesh, e.g. fsdp=8 (see stiv-sample)")
  p.add_argument("--verbose", action="store_true", help="print tracebacks of errors")
  return p


def parse_bytes(value: str) -> int:
  """'2GB' / '500MB' / '1048576' -> bytes (> 0)."""
  m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)B?", value.strip().upper())
  size = int(float(m.group(1)) * UNITS[m.group(2) + "B" if m.group(2) else ""]) if m else 0
  if size <= 0:
    raise ExportUserError(f"--shard-size: expected a size like 2GB or 500MB, got {value!r}")
  return size


def _prepare_out(out: str) -> str:
  """A fresh temporary folder beside --out (renamed into place when complete)."""
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ExportUserError(f"--out: {out} exists and is not an empty folder; choose a new one")
  tmp = f"{os.path.abspath(out).rstrip(os.sep)}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  return tmp


def export(path: str, out: str, *, merge: bool = False, shard_bytes: int = 2 << 30,
           dtype: str | None = None, mesh_flag: str | None = None) -> dict[str, Any]:
  """Writes the export folder of a workdir/checkpoint; returns the summary."""
  import jax
  import ml_collections
  from flax import nnx
  from stiv_jax import export_format as fmt
  from stiv_jax import lora as lora_lib
  from stiv_jax import sample as sample_lib
  from stiv_jax.data import contract as contract_lib
  from stiv_jax.train import checkpoint as ckpt_lib
  if not os.path.exists(path):
    raise ExportUserError(f"--workdir/--checkpoint: no such path {path}")
  workdir, _ = ckpt_lib.resolve_checkpoint(path)
  mesh, rules = sample_lib.make_mesh(ckpt_lib.load_config(workdir), mesh_flag)
  restored = ckpt_lib.restore_ema(path, mesh, rules,
                                  on_skip=lambda line: print(line, file=sys.stderr))
  config = restored.config
  adapters = restored.adapters
  if merge and adapters is None:
    raise ExportUserError(f"--merge: {path} is not a LoRA run (lora.rank=0): there are no "
                          "adapters to fold in; drop --merge")
  _, state = nnx.split(restored.model())
  leaves = fmt.layout(state)
  arrays = {fmt.path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
  cast = None if dtype is None else np.dtype(jax.numpy.dtype(dtype))
  folded = lora_lib.flat_adapters(adapters) if merge else {}
  lora_scale = lora_lib.scale(config.lora) if adapters is not None else 0.0

  def fetch(leaf: fmt.Leaf) -> np.ndarray:
    value = np.asarray(jax.device_get(arrays[leaf.name]))
    if leaf.name in folded:  # W + (alpha / r) A B, one kernel at a time
      ad = folded[leaf.name]
      d = lora_lib.delta(jax.device_get(ad["a"]), jax.device_get(ad["b"]), value.shape)
      value = (value.astype(np.float32) + lora_scale * np.asarray(d)).astype(value.dtype)
    if cast is not None and np.issubdtype(value.dtype, np.floating):
      value = value.astype(cast)
    return value

  if cast is not None:
    leaves = [fmt.Leaf(x.name, x.shape, cast if np.issubdtype(x.dtype, np.floating) else x.dtype,
                       x.stacked) for x in leaves]
  tmp = _prepare_out(out)
  try:
    index = fmt.write_weights(tmp, leaves, fetch, shard_bytes, metadata={
        "source": os.path.abspath(path), "step": restored.step, "weights": "ema",
        "dtype": dtype or "as stored", "merged_lora": bool(merge)})
    if adapters is not None and not merge:
      fmt.write_lora(tmp, lora_lib.abstract_base(config, mesh, rules).targets, adapters,
                     int(config.lora.rank), float(config.lora.alpha))
    out_config = config
    if merge:  # a plain model now: no adapters, no base to load
      out_config = ml_collections.ConfigDict(json.loads(ckpt_lib.config_json(config)))
      out_config.lora.rank = 0
    with open(os.path.join(tmp, fmt.CONFIG_FILE), "w") as f:
      f.write(ckpt_lib.config_json(out_config))
    record = contract_lib.load_run_contract(workdir)
    if record is not None:
      with open(os.path.join(tmp, fmt.CONTRACT_FILE), "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    if os.path.isdir(out):
      os.rmdir(out)
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  files = sorted(set(index["weight_map"].values()))
  return {"out": os.path.abspath(out), "step": restored.step, "files": files,
          "tensors": len(index["weight_map"]), "total_size": index["metadata"]["total_size"],
          "naming": fmt.NAMING_VERSION, "contract": record is not None,
          "lora": None if adapters is None else ("merged" if merge else fmt.LORA_FILE)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = build_parser().parse_args(argv)
  path = args.workdir or args.checkpoint
  return export(path, args.out, merge=args.merge, shard_bytes=parse_bytes(args.shard_size),
                dtype=args.dtype, mesh_flag=args.mesh)


def run(argv: Sequence[str] | None = None) -> None:
  """Console entry point: one JSON line, or `stiv-export: error: ...` (exit 2)."""
  from stiv_jax import export_format as fmt
  from stiv_jax import sample as sample_lib
  from stiv_jax.train import checkpoint as ckpt_lib
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    summary = main(argv)
  except (ExportUserError, sample_lib.UserError, fmt.ExportError,
          ckpt_lib.CheckpointError, FileNotFoundError) as e:
    if "--verbose" in argv:
      raise
    print(f"stiv-export: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
          file=sys.stderr)
    raise SystemExit(2)
  print(json.dumps(summary))


if __name__ == "__main__":
  run()
