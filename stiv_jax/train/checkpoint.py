"""Orbax checkpoints of the train state, the Grain iterator and the run's config; integrity;
fallback to the newest good checkpoint; EMA model loading.

Layout: WORKDIR/config.json (the latest start's config), WORKDIR/configs/start-NNN-step-S.json
(every start's config, the history), WORKDIR/contract.json (the data's latent contract), and
WORKDIR/checkpoints/<step>/{state,data,meta} with stiv_checksums.json (integrity.py). Saves are
asynchronous and atomic (a killed save leaves no checkpoint behind), keep the last K plus every
M-th step, and restore onto any mesh (the restore target carries the new shardings). Nothing is
created in the workdir until the first save. A restore first checks that the checkpoint was made
by a compatible config and data order (else CheckpointError naming the field and both values),
then verifies the checksums and decodes; a checkpoint that fails either is skipped with a
one-line reason and the next older one is tried.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import orbax.checkpoint as ocp

from stiv_jax.train import integrity

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
HISTORY_DIR = "configs"
QUARANTINE_PREFIX = "skipped-"


class CheckpointError(RuntimeError):
  """No usable checkpoint, or one made for another config (the message is one line)."""


def one_line(err: BaseException) -> str:
  """The innermost cause of an exception as one line (orbax wraps errors several levels deep)."""
  while err.__cause__ is not None or (err.__context__ is not None
                                      and not err.__suppress_context__):
    err = err.__cause__ or err.__context__
  text = str(err).strip().splitlines()
  return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def validate_checkpoint_config(cfg: Any) -> None:
  """Raises ValueError naming the field when the `checkpoint` section is invalid."""
  if cfg.every_steps < 1:
    raise ValueError(f"checkpoint.every_steps: must be >= 1, got {cfg.every_steps}")
  if cfg.keep_last < 1:
    raise ValueError(f"checkpoint.keep_last: must be >= 1, got {cfg.keep_last}")
  if cfg.keep_every < 0:
    raise ValueError(f"checkpoint.keep_every: must be >= 0 (0 = off), got {cfg.keep_every}")


def _atomic_write(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def config_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=1, sort_keys=True)


def save_config(workdir: str, config: ml_collections.ConfigDict, start_step: int | None = None
                ) -> str:
  """Writes WORKDIR/config.json and, with `start_step`, this start's copy under configs/
  (process 0 only); returns the config.json path."""
  path = os.path.join(workdir, CONFIG_FILE)
  if jax.process_index() == 0:
    text = config_json(config)
    _atomic_write(path, text)
    if start_step is not None:
      n = len(glob.glob(os.path.join(workdir, HISTORY_DIR, "start-*.json")))
      _atomic_write(os.path.join(workdir, HISTORY_DIR,
                                 f"start-{n:03d}-step-{start_step}.json"), text)
  return path


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """Reads WORKDIR/config.json back into a ConfigDict."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no config.json; is {workdir!r} a stiv-train workdir?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


@dataclasses.dataclass
class Restored:
  """A restore's outcome: the step, the state, and the newer checkpoints skipped (and why)."""
  step: int
  state: Any
  skipped: list[tuple[int, str]]


class Checkpointer:
  """CheckpointManager over WORKDIR/checkpoints with items 'state', 'data' (the iterator) and
  'meta' (the config and data contract of the run that saved it); seals each finished step."""

  def __init__(self, workdir: str, cfg: Any, *, with_data: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
    self.with_data = with_data
    self.cfg = cfg
    self._manager: ocp.CheckpointManager | None = None
    if os.path.isdir(self.directory):
      self._open()

  def _open(self) -> ocp.CheckpointManager:
    if self._manager is None:
      asynchronous = bool(self.cfg.async_save)
      options = ocp.CheckpointManagerOptions(
          max_to_keep=int(self.cfg.keep_last), keep_period=int(self.cfg.keep_every) or None,
          enable_async_checkpointing=asynchronous, create=True,
          async_options=ocp.AsyncOptions(post_finalization_callback=self.seal_finished)
          if asynchronous else None)
      items = ("state", "data", "meta") if self.with_data else ("state", "meta")
      self._manager = ocp.CheckpointManager(self.directory, item_names=items, options=options)
    return self._manager

  @property
  def manager(self) -> ocp.CheckpointManager:
    return self._open()

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps()) if self._manager is not None else []

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def seal_finished(self) -> None:
    """Writes the checksums of every finished, unsealed step (process 0; idempotent)."""
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return
    for name in os.listdir(self.directory):
      if name.isdigit():
        try:
          integrity.seal(os.path.join(self.directory, name))
        except OSError:   # deleted by the keep policy meanwhile
          pass

  def save(self, step: int, state: Any, data_iter: Any = None, meta: dict | None = None, *,
           force: bool = False) -> bool:
    """Starts an (async) save of state (+ iterator state, + meta); returns whether one started.

    A step that already has a checkpoint is not saved again (returns False).
    """
    manager = self.manager
    if step in manager.all_steps():
      return False
    args = {"state": ocp.args.StandardSave(state),
            "meta": ocp.args.JsonSave(dict(meta or {}))}
    if self.with_data:
      from stiv_jax.data import pipeline
      args["data"] = pipeline.checkpoint_save_args(data_iter)
    started = manager.save(step, args=ocp.args.Composite(**args), force=force)
    if not self.cfg.async_save:
      self.seal_finished()
    return started

  def read_meta(self, step: int) -> dict:
    """The 'meta' item of a step ({} for checkpoints written before it existed)."""
    if not os.path.isdir(os.path.join(self.step_dir(step), "meta")):
      return {}
    return dict(self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta or {})

  def restore(self, step: int, target: Any, data_iter: Any = None) -> Any:
    """Restores the state onto `target`'s shardings (and the iterator in place)."""
    args = {"state": ocp.args.StandardRestore(target)}
    if self.with_data and data_iter is not None:
      from stiv_jax.data import pipeline
      args["data"] = pipeline.checkpoint_restore_args(data_iter)
    return self.manager.restore(step, args=ocp.args.Composite(**args)).state

  def restore_latest_good(self, target: Any, data_iter: Any = None, *,
                          check: Callable[[int], None] | None = None,
                          on_skip: Callable[[str], None] = print,
                          steps: list[int] | None = None) -> Restored:
    """The newest checkpoint that is whole, decodes, is compatible and holds finite numbers.

    Per step, newest first: checksums (integrity.verify), then `check(step)` (compatibility:
    its CheckpointError propagates, it is not a reason to fall back), then the restore, then a
    finiteness check of the parameters. A failing step is skipped with one line; when none is
    good, CheckpointError lists every step and why.
    """
    candidates = sorted(self.all_steps() if steps is None else steps, reverse=True)
    skipped: list[tuple[int, str]] = []
    for step in candidates:
      why = integrity.verify(self.step_dir(step))
      state = None
      if why is None and check is not None:
        try:
          check(step)
        except CheckpointError:
          raise
        except Exception as e:   # an unreadable meta/iterator file: damaged
          why = one_line(e)
      if why is None:
        try:
          state = self.restore(step, target, data_iter)
        except Exception as e:
          why = one_line(e)
      if why is None:
        bad = integrity.nonfinite_leaf(getattr(state, "params", state))
        if bad is not None:
          raise CheckpointError(f"checkpoint {self.step_dir(step)}: parameter {bad}; the run "
                                "diverged before this save (resume from an older step)")
        return Restored(step, state, skipped)
      skipped.append((step, why))
      on_skip(f"Skipping checkpoint {self.step_dir(step)}: {why}")
    if not candidates:
      raise CheckpointError(f"{self.directory}: no checkpoint saved yet")
    raise CheckpointError(f"{self.directory}: no good checkpoint ("
                          + "; ".join(f"step {s}: {w}" for s, w in skipped)
                          + "); nothing was deleted")

  def quarantine(self, steps: list[int]) -> list[str]:
    """Moves skipped (damaged) step folders aside as checkpoints/skipped-<step>-<time>, so the
    run can save those steps again; nothing is deleted. Process 0; returns the new paths."""
    moved = []
    if jax.process_index() == 0:
      stamp = time.strftime("%Y%m%d-%H%M%S")
      for step in steps:
        dst = os.path.join(self.directory, f"{QUARANTINE_PREFIX}{step}-{stamp}")
        os.replace(self.step_dir(step), dst)
        moved.append(dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("stiv_quarantine")
    self.manager.reload()
    return moved

  def reached_preemption(self, step: int) -> bool:
    return self._manager is not None and self._manager.reached_preemption(step)

  def wait(self) -> None:
    if self._manager is not None:
      self._manager.wait_until_finished()
      self.seal_finished()

  def close(self) -> None:
    if self._manager is not None:
      self._manager.wait_until_finished()
      self.seal_finished()
      self._manager.close()


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


def config_of_step(workdir: str, ckpt: Checkpointer, step: int) -> ml_collections.ConfigDict:
  """The config that saved `step` (its meta item), else the workdir's config.json."""
  meta = ckpt.read_meta(step)
  if meta.get("config"):
    return ml_collections.ConfigDict(meta["config"])
  return load_config(workdir)


def restore_state(path: str, config: ml_collections.ConfigDict | None = None,
                  mesh: Any = None, on_skip: Callable[[str], None] = print
                  ) -> tuple[ml_collections.ConfigDict, Any, Any, int]:
  """(config, graphdef, train state, step) of a workdir (its newest good checkpoint) or of
  one checkpoint folder (that one, verified), on `mesh` (default one device)."""
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
    restored = ckpt.restore_latest_good(target, steps=None if step is None else [step],
                                        on_skip=on_skip)
  finally:
    ckpt.close()
  return config, graphdef, restored.state, restored.step


def load_ema_model(workdir_or_checkpoint: str) -> tuple[ml_collections.ConfigDict, Any]:
  """(config, STIV model holding the EMA parameters) of a workdir (latest good) or checkpoint."""
  from stiv_jax.train import state as state_lib
  config, graphdef, state, _ = restore_state(workdir_or_checkpoint)
  return config, state_lib.ema_model(graphdef, state)


@dataclasses.dataclass
class EmaRestore:
  """An EMA-only restore: the config that saved the step, the model graph, its EMA parameters
  and non-parameter state placed in their shardings, and the step."""
  config: ml_collections.ConfigDict
  graphdef: Any
  params: Any
  rest: Any
  step: int
  adapters: Any = None  # LoRA runs: the EMA adapters; params is then the frozen base

  def model(self) -> Any:
    """The STIV model holding the EMA parameters (a LoRA run's: the base without adapters;
    arrays stay where they are)."""
    from flax import nnx
    return nnx.merge(self.graphdef, self.params, self.rest)


def restore_ema(path: str, mesh: Any = None, rules: Any = None,
                config: ml_collections.ConfigDict | None = None,
                on_skip: Callable[[str], None] = print) -> EmaRestore:
  """EMA parameters (+ the model's non-parameter state) of a workdir's newest good checkpoint,
  or of one checkpoint folder, restored straight into their shardings on `mesh` (default one
  device) from the logical rules (default the config's mesh.rules). The optimizer state and
  raw parameters are not read (orbax partial restore); each device reads only its shards.
  Checksums and finiteness are verified as for a training restore; a damaged step is skipped
  with one line when a workdir is given."""
  from stiv_jax import sharding as shd
  workdir, step = resolve_checkpoint(path)
  ckpt = Checkpointer(workdir, load_config(workdir).checkpoint, with_data=False)
  candidates = sorted(ckpt.all_steps() if step is None else [step], reverse=True)
  if not candidates:
    raise CheckpointError(f"{ckpt.directory}: no checkpoint saved yet")
  if mesh is None:
    mesh = shd.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}),
                         jax.devices()[:1])
  skipped: list[tuple[int, str]] = []
  try:
    for step in candidates:
      why = integrity.verify(ckpt.step_dir(step))
      if why is None:
        try:
          step_config = config or config_of_step(workdir, ckpt, step)
          out = _restore_ema_step(os.path.join(ckpt.step_dir(step), "state"), step_config,
                                  mesh, rules if rules is not None
                                  else shd.rules_from_config(step_config.mesh.rules))
        except Exception as e:  # undecodable, or a structure this config does not build
          why = one_line(e)
      if why is None:
        graphdef, params, rest, adapters = out
        bad = integrity.nonfinite_leaf(params if adapters is None else adapters)
        if bad is not None:
          raise CheckpointError(f"checkpoint {ckpt.step_dir(step)}: EMA parameter {bad}; the "
                                "run diverged before this save (use an older step)")
        return EmaRestore(step_config, graphdef, params, rest, step, adapters)
      skipped.append((step, why))
      if len(candidates) > 1:
        on_skip(f"Skipping checkpoint {ckpt.step_dir(step)}: {why}")
  finally:
    ckpt.close()
  raise CheckpointError(f"{ckpt.directory}: no good checkpoint ("
                        + "; ".join(f"step {s}: {w}" for s, w in skipped) + ")")


def _restore_ema_step(state_dir: str, config: ml_collections.ConfigDict, mesh: Any,
                      rules: Any) -> tuple[Any, Any, Any, Any]:
  """(graphdef, EMA params State, rest State, None) of one step's 'state' item, partially
  restored with sharded restore args (ema_params and rest only). A LoRA run's checkpoint holds
  adapters: (graphdef, frozen base params from init.sources, rest, EMA adapters)."""
  from flax import nnx
  from stiv_jax import lora as lora_lib
  from stiv_jax import sharding as shd
  from stiv_jax.train import state as state_lib
  if lora_lib.enabled(config.get("lora")):
    base = lora_lib.load_base(config, mesh, rules)
    abstract = lora_lib.abstract_train_state(base, _optimizer(config), config, mesh)[0]
    restored = _partial_restore(state_dir, {"ema_params": abstract.ema_params})
    return base.graphdef, base.params, base.rest, restored["ema_params"]
  abstract = nnx.eval_shape(lambda: state_lib.build_model(config.model, config.seed))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  pspecs = shd.param_specs(params, mesh, rules)
  shardings = {"ema_params": shd.named(mesh, pspecs),
               "rest": shd.named(mesh, shd.derived_specs(rest, params, pspecs))}
  values = {"ema_params": params, "rest": rest}
  item = {k: jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          values[k], shardings[k]) for k in values if jax.tree.leaves(values[k])}
  restored = _partial_restore(state_dir, item)
  return graphdef, restored["ema_params"], restored.get("rest", rest), None


def _partial_restore(state_dir: str, item: dict) -> dict:
  """Restores only `item`'s subtrees (ShapeDtypeStructs with shardings) of a state folder."""
  restore_args = jax.tree.map(
      lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype),
      item)
  return ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True))


def _optimizer(config: ml_collections.ConfigDict) -> Any:
  from stiv_jax.train import optimizer as opt_lib
  return opt_lib.make_optimizer(config.optimizer)
