"""The training loop, in sections (big_vision style): setup, data, state, compile, loop, finish.

`train(config, workdir)` checks the config and its data's latent contract, then resumes from the
workdir's newest good checkpoint that this config can continue (damaged ones are skipped with a
one-line reason and moved aside), and only then writes to the workdir. It compiles one step per
batch shape (bucket), saves on SIGTERM (preemption) before returning, stops after
`train.max_bad_steps` non-finite updates in a row and on a data fault, each time with a
checkpoint of the last good step.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from stiv_jax import conditioning, flow
from stiv_jax import lora as lora_lib
from stiv_jax import sharding as shd
from stiv_jax.train import checkpoint as ckpt_lib
from stiv_jax.train import metrics as metrics_lib
from stiv_jax.train import optimizer as opt_lib
from stiv_jax.train import state as state_lib
from stiv_jax.train import step as step_lib


class NonFiniteError(RuntimeError):
  """Raised after too many non-finite updates in a row (a checkpoint was saved first)."""


class DataError(RuntimeError):
  """The input pipeline failed mid-run (a checkpoint of the last good step was saved first)."""


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None,
                    process_count: int | None = None) -> None:
  """Checks every section before anything compiles; raises ValueError naming the field."""
  from stiv_jax.models.config import validate_model_config
  for section in ("model", "vae", "text", "data", "flow", "conditioning", "optimizer", "train",
                  "mesh", "checkpoint", "metrics", "init"):
    if section not in config:
      raise ValueError(f"config: section {section!r} missing")
  validate_model_config(config.model)
  flow.validate_flow_config(config.flow)
  conditioning.validate_conditioning_config(config.conditioning, config.model.num_frames)
  opt_lib.validate_optimizer_config(config.optimizer)
  ckpt_lib.validate_checkpoint_config(config.checkpoint)
  if "lora" in config:
    lora_lib.check_config(config)
  if config.model.text_dim != config.text.dim:
    raise ValueError(f"model.text_dim={config.model.text_dim} != text.dim={config.text.dim}")
  if config.vae.latent_channels is not None and (
      config.model.latent_channels != config.vae.latent_channels):
    raise ValueError(f"model.latent_channels={config.model.latent_channels} != "
                     f"vae.latent_channels={config.vae.latent_channels}")
  if config.data.batch_size < 1:
    raise ValueError(f"data.batch_size: must be >= 1 (the global batch), got "
                     f"{config.data.batch_size}")
  if config.train.num_steps < 1:
    raise ValueError(f"train.num_steps: must be >= 1, got {config.train.num_steps}")
  if config.train.max_bad_steps < 1:
    raise ValueError(f"train.max_bad_steps: must be >= 1, got {config.train.max_bad_steps}")
  if config.metrics.every_steps < 1:
    raise ValueError(f"metrics.every_steps: must be >= 1, got {config.metrics.every_steps}")
  if not config.data.path:
    raise ValueError("data.path: not set; point it to a latent-shard dataset directory")
  num_devices = jax.device_count() if num_devices is None else num_devices
  process_count = jax.process_count() if process_count is None else process_count
  if config.mesh.get("partitioner", "gspmd") not in shd.PARTITIONERS:
    raise ValueError(f"mesh.partitioner: {config.mesh.partitioner!r} unknown; expected one of "
                     f"{shd.PARTITIONERS}")
  mesh_sizes = dict(zip(shd.MESH_AXES, shd.mesh_shape(config.mesh, num_devices)))
  rules = shd.rules_from_config(config.mesh.rules)
  shd.validate_model_mesh(config.model, mesh_sizes, rules)   # token grid vs mesh.context
  split = math.prod(mesh_sizes[a] for a in rules.get("batch", ()))
  b = config.data.batch_size
  if b % split or b % process_count:
    raise ValueError(f"data.batch_size={b} must be divisible by the batch split {split} "
                     f"(mesh {mesh_sizes}, rule batch={rules.get('batch')}) and by "
                     f"{process_count} processes")


class _Preemption:
  """Sets a flag on SIGTERM so the loop saves and returns at the next step boundary."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    def handler(signum, frame):
      logging.warning("SIGTERM received: saving a checkpoint and stopping.")
      self.requested = True
    try:
      self._old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
      self._old = None
    return self

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _check_contract(config: ml_collections.ConfigDict) -> tuple[dict[str, Any], list[str]]:
  """The data's manifest, after holding the config to its latent contract (fills unset fields)."""
  from stiv_jax.data import contract as contract_lib
  from stiv_jax.data import reader
  root, manifest = reader.load_manifest(config.data.path)
  with config.unlocked():
    notes = contract_lib.resolve_train_config(config, manifest, root)
  return manifest, notes


def _null_text(config: ml_collections.ConfigDict, manifest: dict[str, Any]) -> dict[str, Any]:
  """The empty prompt's encoding: stored with the shards, else from the configured encoder."""
  from stiv_jax.data import contract as contract_lib
  from stiv_jax.data import reader
  from stiv_jax.models.encoders.base import build_text_encoder
  contract = manifest.get("contract")
  stored = None
  if contract:
    root, _ = reader.load_manifest(config.data.path)
    stored = contract_lib.load_empty_prompt(root, contract)
  if stored is not None:
    return {k: jax.numpy.asarray(v) for k, v in stored.items()}
  return step_lib.null_text_arrays(build_text_encoder(config.text))


class BucketSteps:
  """One compiled train step per batch shape: ahead of time for the buckets the data serves
  (train.compile_ahead), else on first sight; each compiled once and cached."""

  def __init__(self, config: ml_collections.ConfigDict, graphdef: Any, tx: Any, shardings: Any,
               mesh: Any, rules: Any, base: Any = None):
    self.config, self.graphdef, self.tx = config, graphdef, tx
    self.shardings, self.mesh, self.rules = shardings, mesh, rules
    self.base = base  # LoRA: the frozen base (stiv_jax.lora.Base), the step's 4th argument
    self._extra = () if base is None else (base.params,)
    self.compiled: dict[tuple[int, ...], Any] = {}
    self.compile_s: dict[str, float] = {}
    self.text_len, self.text_dim = int(config.text.max_length), int(config.model.text_dim)

  def compile(self, state: Any, latent_shape: tuple[int, ...], null_text: Any) -> Any:
    """The compiled step for global batches of `latent_shape` [T, H, W, C] latents."""
    key = tuple(int(x) for x in latent_shape)
    if key not in self.compiled:
      b = int(self.config.data.batch_size)
      batch, bshard = step_lib.abstract_batch(
          step_lib.batch_shapes(b, key, self.text_len, self.text_dim), self.mesh, self.rules)
      fn = step_lib.jit_train_step(
          self.config, self.graphdef, self.tx, self.shardings, bshard, self.mesh,
          base_shardings=None if self.base is None else self.base.param_shardings)
      t0 = time.perf_counter()
      self.compiled[key] = fn.lower(state, batch, null_text, *self._extra).compile(
          step_lib.compiler_options(self.config))
      name = "x".join(map(str, key[:3]))
      self.compile_s[name] = round(time.perf_counter() - t0, 2)
      logging.info("compiled the train step for bucket %s in %.1fs", name, self.compile_s[name])
    return self.compiled[key]

  def __call__(self, state: Any, batch: dict[str, Any], null_text: Any) -> tuple[Any, Any]:
    return self.compile(state, batch["latents"].shape[1:], null_text)(state, batch, null_text,
                                                                      *self._extra)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains until train.num_steps (or preemption); returns a summary dict."""
  # ---- 1. Setup: config and data contract checked before anything is written or compiled.
  from stiv_jax.data import contract as contract_lib
  from stiv_jax.train import stages
  stages.prepare_config(config)
  validate_config(config)
  manifest, notes = _check_contract(config)
  workdir = os.path.abspath(workdir)
  shd.set_partitioner(config.mesh)
  mesh = shd.make_mesh(config.mesh)
  rules = shd.rules_from_config(config.mesh.rules)
  is_main = jax.process_index() == 0
  if is_main:
    for note in notes:
      print(f"Data contract: {note}", flush=True)
  logging.info("mesh %s over %d devices, %d processes", dict(mesh.shape), jax.device_count(),
               jax.process_count())

  # ---- 2. Data: this process's slice of every global batch.
  from stiv_jax.data import pipeline
  local_batch = config.data.batch_size // jax.process_count()
  data_iter = pipeline.make_iterator(config.data, seed=config.data.seed,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count(), batch_size=local_batch)
  null_text = _null_text(config, manifest)
  buckets = data_iter.trained_buckets()

  # ---- 3. Train state: resume (newest good, compatible checkpoint), or fresh.
  from stiv_jax.train import resume as resume_lib
  tx = opt_lib.make_optimizer(config.optimizer)
  make_model = lambda: state_lib.build_model(config.model, config.seed)  # noqa: E731
  ckpt = ckpt_lib.Checkpointer(workdir, config.checkpoint)
  restored = None
  base = None
  if lora_lib.enabled(config.get("lora")):  # LoRA: base from init.sources (frozen), adapters
    base = lora_lib.load_base(config, mesh, rules, step_lib.compiler_options(config))
    if is_main:
      print(base.report.summary(), flush=True)
  if ckpt.all_steps():
    if base is None:
      graphdef, target, shardings = state_lib.abstract_train_state(make_model, tx, mesh, rules)
    else:
      graphdef = base.graphdef
      target, shardings = lora_lib.abstract_train_state(base, tx, config, mesh)

    def check(step: int) -> None:
      where = ckpt.step_dir(step)
      saved = ckpt_lib.config_of_step(workdir, ckpt, step)
      resume_lib.check_state_structure(saved, config, target, where)
      resume_lib.check_data_state(where, data_iter)

    restored = ckpt.restore_latest_good(target, data_iter, check=check,
                                        on_skip=lambda line: print(line, flush=True))
    state = restored.state
    logging.info("resumed from %s/%d", ckpt.directory, restored.step)
    print(f"Resumed from checkpoint step {restored.step} in {ckpt.directory}", flush=True)
  elif base is not None:
    graphdef = base.graphdef
    state, shardings = lora_lib.create_train_state(base, tx, config, mesh,
                                                   step_lib.compiler_options(config))
  else:
    graphdef, state, shardings = state_lib.create_train_state(
        make_model, tx, mesh, rules, step_lib.compiler_options(config))
    if config.init.sources:
      state, report = stages.init_from_sources(config, state, shardings)
      if is_main:
        print(report.summary(), flush=True)

  # Everything is checked: from here on the workdir changes.
  if restored is not None and restored.skipped:
    for path in ckpt.quarantine([s for s, _ in restored.skipped]):
      print(f"Moved the skipped checkpoint aside: {path}", flush=True)
  start_step = restored.step if restored is not None else 0
  run_record = contract_lib.run_contract(manifest, config.data.path)
  if is_main:
    ckpt_lib.save_config(workdir, config, start_step=start_step)
    contract_lib.save_run_contract(workdir, run_record)
  meta = {"config": json.loads(ckpt_lib.config_json(config)), "contract": run_record,
          "start_step": start_step}
  writer = metrics_lib.Writer(workdir, tensorboard=config.metrics.tensorboard,
                              jsonl=config.metrics.jsonl, enabled=is_main)
  if is_main and restored is None:
    from clu import parameter_overview
    print(parameter_overview.get_parameter_overview(
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                     state.params if base is not None else nnx.to_pure_dict(state.params)),
        include_stats=False), flush=True)

  # ---- 4. Compile: one step per bucket shape (ahead of time for every bucket the data serves).
  steps_fn = BucketSteps(config, graphdef, tx, shardings, mesh, rules, base)
  if config.train.compile_ahead:
    for shape in buckets.values():
      steps_fn.compile(state, shape, null_text)
  text_len = int(config.text.max_length)
  flops_of = {k: metrics_lib.step_flops(config.model, config.data.batch_size, *shape[:3],
                                        text_len) for k, shape in buckets.items()}
  tokens_of = {k: metrics_lib.tokens_per_example(config.model, *shape[:3])
               for k, shape in buckets.items()}
  peak, peak_src = metrics_lib.peak_flops_per_device(config.metrics.peak_flops_per_device)
  logging.info("peak FLOP/s per device %.3g (%s)", peak, peak_src)
  if is_main:
    print(f"Buckets: {', '.join(f'{k} ({steps_fn.compile_s.get(k, 0.0)} s to compile)' for k in buckets)}",
          flush=True)

  from stiv_jax.eval import during_training  # eval.every_steps: held-out loss, samples, scores
  evaluator = during_training.for_run(config, lora=base is not None)

  # ---- 5. The loop: dispatch step s, then fetch step s-1's metrics (one step in flight).
  step = int(jax.device_get(state.step))
  num_steps = int(config.train.num_steps)
  acc = metrics_lib.Accumulator()
  per_bucket = metrics_lib.BucketTimes()
  pending = None
  wait = 0.0
  interval = metrics_lib.Interval()
  first_loss = last_loss = None
  stopped = "done"
  batch = None

  def consume(item) -> None:
    nonlocal first_loss, last_loss
    s, key, m = item
    host = jax.device_get(m)
    per_bucket.tick(key)
    acc.update(host)
    if bool(host["finite"]):
      last_loss = float(host["loss"])
      first_loss = last_loss if first_loss is None else first_loss
    if int(host["bad_streak"]) >= config.train.max_bad_steps:
      ckpt.save(s, state, data_iter, meta, force=True)
      ckpt.wait()
      raise NonFiniteError(
          f"{int(host['bad_streak'])} non-finite updates in a row at step {s} "
          f"(train.max_bad_steps={config.train.max_bad_steps}); the last good parameters "
          f"are saved in {ckpt.directory}/{s}")

  with _Preemption() as preemption:
    per_bucket.start()
    while step < num_steps:
      t_wait = time.perf_counter()
      try:
        host_batch = next(data_iter)
      except Exception as e:  # a data fault: keep every finished step, then stop
        if pending is not None:
          consume(pending)
        ckpt.save(step, state, data_iter, meta, force=True)
        ckpt.wait()
        raise DataError(f"data error before step {step + 1}: {ckpt_lib.one_line(e)}; the last "
                        f"good step {step} is saved in {ckpt.directory}. Fix or remove the "
                        "bad shard (stiv-shards validate names it) or set "
                        "--config.data.bad_records=skip, then rerun to resume") from e
      batch = shd.shard_batch(host_batch, mesh, rules)
      wait += time.perf_counter() - t_wait
      key = "x".join(str(x) for x in host_batch["latents"].shape[1:4])
      state, m = steps_fn(state, batch, null_text)
      step += 1
      interval.add(flops_of.get(key, 0.0), config.data.batch_size * tokens_of.get(key, 0),
                   config.data.batch_size)
      if pending is not None:
        consume(pending)
      pending = (step, key, m)

      if step % config.metrics.every_steps == 0 or step == num_steps:
        consume(pending)
        pending = None
        jax.block_until_ready(state.step)
        scalars = acc.compute()
        scalars.update(interval.rates(wait=wait, peak=peak))
        scalars.update(per_bucket.rates(flops_of, tokens_of, config.data.batch_size, peak))
        scalars.update(data_iter.metrics())
        if evaluator is not None and evaluator.due(step, num_steps):  # after the rates: not timed
          scalars.update(evaluator.log(step, state_lib.ema_model(graphdef, state), writer.tb))
        writer.write(step, scalars)
        acc.reset()
        interval.reset()
        wait = 0.0

      preempted = preemption.requested or ckpt.reached_preemption(step)
      if step % config.checkpoint.every_steps == 0 or step == num_steps or preempted:
        ckpt.save(step, state, data_iter, meta, force=True)
      if preempted:
        stopped = "preempted"
        break
    if pending is not None:
      consume(pending)

  # ---- 6. Finish: wait for saves, say where everything is.
  ckpt.close()
  data_iter.close()
  writer.close()
  summary = {"step": step, "stopped": stopped, "first_loss": first_loss, "last_loss": last_loss,
             "checkpoints": ckpt.directory, "tensorboard": writer.tb_dir,
             "metrics": writer.jsonl_path, "buckets": sorted(buckets),
             "compile_s": dict(steps_fn.compile_s)}
  if is_main:
    print(f"Training {stopped} at step {step}: loss {first_loss} -> {last_loss}", flush=True)
    print(f"Checkpoints: {ckpt.directory}", flush=True)
    print(f"TensorBoard logs: {writer.tb_dir}  (tensorboard --logdir {writer.tb_dir})", flush=True)
    print(f"Metrics (JSONL): {writer.jsonl_path}", flush=True)
  return summary
