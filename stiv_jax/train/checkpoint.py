"""Orbax checkpoints of the train state and the Grain iterator; config.json; EMA model loading.

Layout: WORKDIR/config.json and WORKDIR/checkpoints/<step>/{state,data}. Saves are asynchronous
and atomic (a killed save leaves no checkpoint behind), keep the last K plus every M-th step,
and restore onto any mesh (the restore target carries the new shardings).
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


def validate_checkpoint_config(cfg: Any) -> None:
  """Raises ValueError naming the field when the `checkpoint` section is invalid."""
  if cfg.every_steps < 1:
    raise ValueError(f"checkpoint.every_steps: must be >= 1, got {cfg.every_steps}")
  if cfg.keep_last < 1:
    raise ValueError(f"checkpoint.keep_last: must be >= 1, got {cfg.keep_last}")
  if cfg.keep_every < 0:
    raise ValueError(f"checkpoint.keep_every: must be >= 0 (0 = off), got {cfg.keep_every}")


def save_config(workdir: str, config: ml_collections.ConfigDict) -> str:
  """Writes the run's config as JSON into the workdir (process 0 only); returns the path."""
  path = os.path.join(workdir, CONFIG_FILE)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      f.write(config.to_json_best_effort(indent=1, sort_keys=True))
  return path


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """Reads WORKDIR/config.json back into a ConfigDict."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no config.json; is {workdir!r} a stiv-train workdir?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


class Checkpointer:
  """CheckpointManager over WORKDIR/checkpoints with items 'state' and (optionally) 'data'."""

  def __init__(self, workdir: str, cfg: Any, *, with_data: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    self.with_data = with_data
    items = ("state", "data") if with_data else ("state",)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=int(cfg.keep_last), keep_period=int(cfg.keep_every) or None,
        enable_async_checkpointing=bool(cfg.async_save), create=True)
    self.manager = ocp.CheckpointManager(self.directory, item_names=items, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_iter: Any = None, *, force: bool = False) -> bool:
    """Starts an (async) save of state (+ iterator state); returns whether one started.

    A step that already has a checkpoint is not saved again (returns False).
    """
    if step in self.manager.all_steps():
      return False
    args = {"state": ocp.args.StandardSave(state)}
    if self.with_data:
      from stiv_jax.data import pipeline
      args["data"] = pipeline.checkpoint_save_args(data_iter)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, step: int, target: Any, data_iter: Any = None) -> Any:
    """Restores the state onto `target`'s shardings (and the iterator in place)."""
    args = {"state": ocp.args.StandardRestore(target)}
    if self.with_data and data_iter is not None:
      from stiv_jax.data import pipeline
      args["data"] = pipeline.checkpoint_restore_args(data_iter)
    return self.manager.restore(step, args=ocp.args.Composite(**args)).state

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def resolve_checkpoint(path: str) -> tuple[str, int | None]:
  """(workdir, step) from a workdir (latest step) or a WORKDIR/checkpoints/<step> path."""
  path = os.path.abspath(path)
  base = os.path.basename(path)
  if base.isdigit() and os.path.basename(os.path.dirname(path)) == CHECKPOINT_DIR:
    return os.path.dirname(os.path.dirname(path)), int(base)
  if not os.path.isdir(os.path.join(path, CHECKPOINT_DIR)):
    raise FileNotFoundError(f"{path}: neither a workdir with {CHECKPOINT_DIR}/ nor a "
                            f"{CHECKPOINT_DIR}/<step> directory")
  return path, None


def restore_state(path: str, config: ml_collections.ConfigDict | None = None,
                  mesh: Any = None) -> tuple[ml_collections.ConfigDict, Any, Any, int]:
  """(config, graphdef, train state, step) of a workdir/checkpoint, on `mesh` (default 1 device)."""
  from stiv_jax import sharding as shd
  from stiv_jax.train import optimizer as opt_lib
  from stiv_jax.train import state as state_lib
  workdir, step = resolve_checkpoint(path)
  config = config or load_config(workdir)
  if mesh is None:
    mesh = shd.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}),
                         jax.devices()[:1])
  rules = shd.rules_from_config(config.mesh.rules)
  tx = opt_lib.make_optimizer(config.optimizer)
  graphdef, target, _ = state_lib.abstract_train_state(
      lambda: state_lib.build_model(config.model, config.seed), tx, mesh, rules)
  ckpt = Checkpointer(workdir, config.checkpoint, with_data=False)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{workdir}/{CHECKPOINT_DIR}: no checkpoint saved yet")
    state = ckpt.restore(step, target)
  finally:
    ckpt.close()
  return config, graphdef, state, step


def load_ema_model(workdir_or_checkpoint: str) -> tuple[ml_collections.ConfigDict, Any]:
  """(config, STIV model holding the EMA parameters) of a workdir (latest) or checkpoint dir."""
  from stiv_jax.train import state as state_lib
  config, graphdef, state, _ = restore_state(workdir_or_checkpoint)
  return config, state_lib.ema_model(graphdef, state)
