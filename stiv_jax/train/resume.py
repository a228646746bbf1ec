"""Can this run continue that checkpoint? Checked before anything is restored or written.

The train state a config builds must have the same arrays (paths, shapes, dtypes) as the one the
checkpoint's own config built, and the data iterator must continue the same batch order; a
mismatch is a CheckpointError naming the config fields that differ (both values) and the first
array that no longer fits, never a fallback to an older checkpoint (it would not fit either).
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any

import jax
import ml_collections

from stiv_jax.train.checkpoint import CheckpointError

# Sections whose fields decide the train state's arrays.
STATE_SECTIONS = ("model", "optimizer", "lora")


def _flat(section: Any, prefix: str) -> dict[str, str]:
  d = section.to_dict() if hasattr(section, "to_dict") else dict(section or {})
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True, default=str)
  return out


def config_diff(saved: Any, config: Any, sections=STATE_SECTIONS) -> list[str]:
  """'field: X in the checkpoint, Y now' for every differing field of `sections`."""
  out = []
  for section in sections:
    a = _flat(saved.get(section, {}), f"{section}.")
    b = _flat(config.get(section, {}), f"{section}.")
    for key in sorted(set(a) | set(b)):
      if a.get(key) != b.get(key):
        out.append(f"{key}: {a.get(key, '(absent)')} in the checkpoint, "
                   f"{b.get(key, '(absent)')} now")
  return out


def _leaves(tree: Any) -> dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): (tuple(x.shape), str(x.dtype)) for p, x in flat}


def check_state_structure(saved_config: ml_collections.ConfigDict, config: Any, target: Any,
                          where: str) -> None:
  """CheckpointError when `target` (this config's abstract train state) differs from the state
  the checkpoint's config builds."""
  from stiv_jax import lora as lora_lib
  from stiv_jax.train import optimizer as opt_lib
  from stiv_jax.train import state as state_lib
  try:
    tx = opt_lib.make_optimizer(saved_config.optimizer)
    if lora_lib.enabled(saved_config.get("lora")):  # adapters only (stiv_jax/lora.py)
      saved = lora_lib.eval_train_state(saved_config, tx)
    else:
      saved = jax.eval_shape(lambda: state_lib.init_from_model(
          state_lib.build_model(saved_config.model, saved_config.seed), tx))
  except Exception as e:  # a config this version cannot build: compare the fields only
    saved = None
    reason = f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
  mine = _leaves(target)
  if saved is not None:
    theirs = _leaves(saved)
    if theirs == mine:
      return
    first = next((k for k in sorted(set(theirs) | set(mine)) if theirs.get(k) != mine.get(k)))
    reason = (f"first differing array {first}: {theirs.get(first, 'absent')} in the "
              f"checkpoint, {mine.get(first, 'absent')} now")
  fields = config_diff(saved_config, config)
  if saved is None and not fields:
    return
  raise CheckpointError(
      f"this config cannot resume {where}: " + ("; ".join(fields) if fields else
                                                "the train state differs")
      + f"; {reason}. Use another --workdir, or the checkpoint's values")


def data_state_file(step_dir: str) -> str:
  """This process's iterator-state file of a checkpoint; CheckpointError when the checkpoint
  was written by another number of processes."""
  want = os.path.join(step_dir, "data",
                      f"process_{jax.process_index()}-of-{jax.process_count()}.json")
  if os.path.exists(want):
    return want
  others = sorted(glob.glob(os.path.join(step_dir, "data", "process_*-of-*.json")))
  if others:
    count = os.path.basename(others[0]).split("-of-")[1].split(".")[0]
    raise CheckpointError(f"{step_dir}: written by {count} processes, this run has "
                          f"{jax.process_count()}; the per-process batch slices would differ")
  raise FileNotFoundError(f"{want}: the checkpoint has no iterator state")


def check_data_state(step_dir: str, data_iter: Any) -> None:
  """CheckpointError when the data iterator cannot continue the checkpoint's batch order."""
  with open(data_state_file(step_dir)) as f:
    state = f.read()
  try:
    data_iter.check_state(state)
  except ValueError as e:
    raise CheckpointError(f"this run cannot resume {step_dir}: {e}") from None
