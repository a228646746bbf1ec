"""The Grain input pipeline: latent shards -> bucketed, per-host numpy batches, resumable.

Per epoch e (a pure function of (seed, e) and the index sidecars, no record is read to plan):
  1. seeded global shuffle of all record indices;
  2. records grouped by bucket (their (T, H, W) shape); each bucket cut into GLOBAL batches of
     batch_size * process_count records (a bucket's remainder is dropped this epoch; the
     shuffle differs each epoch, so other records are dropped next time);
  3. the global batches of all buckets interleaved by their share of the data (batch k of a
     bucket with n batches sits at (k + u) / n, u a seeded offset per bucket and epoch);
  4. process p takes records [p * B, (p + 1) * B) of every global batch, so at each step all
     processes hold the same shape and their slices are disjoint and cover the global batch.
Step s is batch s % batches_per_epoch of epoch s // batches_per_epoch. The Grain MapDataset of
steps is read, decoded and stacked per step, prefetched by threads (ReadOptions) and, when
`worker_count > 0`, Grain worker processes (mp_prefetch), and repeated (num_epochs -1: forever).

Because a batch is a function of its step alone, the iterator state is just the next step; a
restored iterator (any worker count) rebuilds the pipeline from that step and yields exactly the
next batch. Checkpointing with orbax (grain's handler, `grain.checkpoint`):

  import orbax.checkpoint as ocp
  mngr = ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "data"))
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(train_state), data=pipeline.checkpoint_save_args(it)))
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=pipeline.checkpoint_restore_args(it)))
  # `it` is updated in place (restored.data is it). One JSON file per JAX process.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
import time
from typing import Any, Iterator

import grain
import ml_collections
import numpy as np

from stiv_jax.data import reader as reader_lib
from stiv_jax.data import schema as schema_lib
from stiv_jax.data import source as source_lib
from stiv_jax.data import tfrecord

BATCH_KEYS = ("latents", "text", "text_mask", "pooled", "micro")
_BAD_KEY = "_bad_records"
_STATE_FORMAT = "stiv_jax.data.pipeline"
_STATE_VERSION = 1
BAD_RECORD_POLICIES = ("fail", "skip")
HOLDOUT_SEED = 20_241_210  # fixed: the held-out split does not move with data.seed


def default_config() -> ml_collections.ConfigDict:
  """The `data` config section with its defaults (every field read by make_iterator)."""
  c = ml_collections.ConfigDict()
  c.path = ""                  # latent-shard dataset directory (holds manifest.json)
  c.shuffle = True             # seeded global shuffle per epoch
  c.num_epochs = -1            # -1: repeat forever
  c.worker_count = 0           # Grain worker processes (0: read in the main process)
  c.worker_buffer_size = 2     # batches buffered per worker process
  c.read_threads = 1           # threads per process reading/decoding batches
  c.prefetch = 2               # batches prefetched per process by those threads
  c.bad_records = "fail"       # 'fail' (stop naming file and offset) | 'skip' (count, log, refill)
  c.check_crc = True           # verify record CRCs on every read
  c.holdout = 0                # records held out of training (validation), fixed by HOLDOUT_SEED
  return c


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
  """The data config fields the pipeline reads, validated."""

  path: str
  shuffle: bool = True
  num_epochs: int = -1
  worker_count: int = 0
  worker_buffer_size: int = 2
  read_threads: int = 1
  prefetch: int = 2
  bad_records: str = "fail"
  check_crc: bool = True
  holdout: int = 0

  @classmethod
  def from_config(cls, cfg: Any) -> "PipelineOptions":
    """Reads fields from a ConfigDict / dict / PipelineOptions; missing ones take defaults."""
    if isinstance(cfg, cls):
      return cfg
    get = cfg.get if hasattr(cfg, "get") else functools.partial(getattr, cfg)
    kwargs = {}
    for f in dataclasses.fields(cls):
      value = get(f.name, None)
      if value is not None:
        kwargs[f.name] = value
    if "path" not in kwargs:
      raise ValueError("data.path: not set; point it to a latent-shard dataset directory")
    opts = cls(**kwargs)
    if opts.bad_records not in BAD_RECORD_POLICIES:
      raise ValueError(f"data.bad_records: {opts.bad_records!r}, expected one of "
                       f"{BAD_RECORD_POLICIES}")
    if opts.num_epochs == 0 or opts.num_epochs < -1:
      raise ValueError(f"data.num_epochs: {opts.num_epochs}; expected a positive count or -1 "
                       "(repeat forever)")
    for name in ("worker_count", "read_threads", "holdout"):
      if getattr(opts, name) < 0:
        raise ValueError(f"data.{name}: must be >= 0, got {getattr(opts, name)}")
    for name in ("worker_buffer_size", "prefetch"):
      if getattr(opts, name) < 1:
        raise ValueError(f"data.{name}: must be >= 1, got {getattr(opts, name)}")
    return opts


def holdout_indices(num_records: int, holdout: int) -> np.ndarray:
  """Sorted record indices held out of training: the first `holdout` of a permutation seeded by
  HOLDOUT_SEED alone (not data.seed), so every run of a dataset holds out the same records."""
  if not 0 <= holdout < num_records:
    raise ValueError(f"data.holdout: {holdout} must be in [0, {num_records}) (the dataset's "
                     "record count; at least one record must stay for training)")
  perm = np.random.default_rng(HOLDOUT_SEED).permutation(num_records)
  return np.sort(perm[:holdout])


def training_buckets(bucket_of: np.ndarray, holdout: int) -> np.ndarray:
  """bucket_of with the held-out records set to -1 (no bucket: never planned into a batch)."""
  out = np.array(bucket_of, np.int32, copy=True)
  if holdout:
    out[holdout_indices(out.shape[0], holdout)] = -1
  return out


def epoch_plan(bucket_of: np.ndarray, num_buckets: int, *, seed: int, epoch: int,
               global_batch: int, shuffle: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """One epoch's global batches: ([num_batches, global_batch] record indices, [num_batches]
  bucket ids), each batch from one bucket, buckets interleaved by their share."""
  rng = np.random.default_rng([int(seed), int(epoch)])
  n = bucket_of.shape[0]
  order = rng.permutation(n) if shuffle else np.arange(n)
  batches, keys, ids = [], [], []
  offsets = rng.random(num_buckets)
  shuffled_buckets = bucket_of[order]
  for b in range(num_buckets):
    members = order[shuffled_buckets == b]
    nb = members.shape[0] // global_batch
    if nb == 0:
      continue
    batches.append(members[: nb * global_batch].reshape(nb, global_batch))
    keys.append((np.arange(nb) + offsets[b]) / nb)
    ids.append(np.full(nb, b, np.int32))
  if not batches:
    return np.zeros((0, global_batch), np.int64), np.zeros((0,), np.int32)
  keys_all = np.concatenate(keys)
  perm = np.argsort(keys_all, kind="stable")
  return np.concatenate(batches)[perm].astype(np.int64), np.concatenate(ids)[perm]


def batches_per_epoch(bucket_of: np.ndarray, num_buckets: int, global_batch: int) -> int:
  """Global batches per epoch (the same every epoch: it depends only on bucket sizes); records
  of bucket -1 (held out) do not count."""
  counts = np.bincount(bucket_of[bucket_of >= 0], minlength=num_buckets)
  return int((counts // global_batch).sum())


class _StepIndices:
  """Maps a global step to this process's record indices (picklable, per-epoch cache)."""

  def __init__(self, bucket_of: np.ndarray, num_buckets: int, *, seed: int, batch_size: int,
               process_index: int, process_count: int, shuffle: bool):
    self.bucket_of = bucket_of
    self.num_buckets = num_buckets
    self.seed = seed
    self.batch_size = batch_size
    self.process_index = process_index
    self.global_batch = batch_size * process_count
    self.shuffle = shuffle
    self.batches_per_epoch = batches_per_epoch(bucket_of, num_buckets, self.global_batch)
    self._cache: tuple[int, np.ndarray] | None = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_cache"] = None
    return state

  def global_batch_indices(self, step: int) -> np.ndarray:
    """All processes' record indices of a step: [global_batch]."""
    epoch, k = divmod(int(step), self.batches_per_epoch)
    if self._cache is None or self._cache[0] != epoch:
      plan, _ = epoch_plan(self.bucket_of, self.num_buckets, seed=self.seed, epoch=epoch,
                           global_batch=self.global_batch, shuffle=self.shuffle)
      self._cache = (epoch, plan)
    return self._cache[1][k]

  def __call__(self, step: int, _element: Any = None) -> np.ndarray:
    lo = self.process_index * self.batch_size
    return self.global_batch_indices(step)[lo: lo + self.batch_size]


class _LoadBatch:
  """Reads, decodes and stacks the records of one step; applies the bad-record policy."""

  def __init__(self, src: source_lib.LatentShardSource, policy: str):
    self.src = src
    self.policy = policy

  def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    examples, bad = [], 0
    for i in indices:
      try:
        examples.append(schema_lib.to_example_arrays(self.src.decode(int(i))))
      except (tfrecord.TFRecordError, schema_lib.SchemaError) as e:
        if self.policy == "fail":
          raise
        path, offset = self.src.dataset.location(int(i))
        print(f"data.bad_records='skip': skipped record {int(i)} at {path} byte offset "
              f"{offset}: {str(e).splitlines()[0]}", file=sys.stderr, flush=True)
        examples.append(None)
        bad += 1
    good = [e for e in examples if e is not None]
    if not good:
      path, offset = self.src.dataset.location(int(indices[0]))
      raise reader_lib.DatasetError(f"{path}: every record of a batch is bad (first at byte "
                                    f"offset {offset}); data.bad_records='skip' cannot refill it")
    # Skip policy: a bad record's slot is refilled with a good record of the same batch, so
    # the batch keeps its size (SIMPLIFIED: duplicates stand in; they are counted).
    filled = [e if e is not None else good[j % len(good)] for j, e in enumerate(examples)]
    batch = {k: np.stack([e[k] for e in filled]) for k in BATCH_KEYS}
    batch[_BAD_KEY] = np.asarray(bad, np.int64)
    return batch


def _ensure_absl_flags_parsed() -> None:
  """Grain worker processes read absl flags; mark them parsed when no absl app did."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class BatchIterator:
  """Iterator of per-host batches with a checkpointable state (the next step).

  get_state()/set_state() use JSON bytes, the form grain's orbax CheckpointHandler stores.
  """

  def __init__(self, src: source_lib.LatentShardSource, opts: PipelineOptions, *, seed: int,
               process_index: int, process_count: int, batch_size: int):
    self.src = src
    self.opts = opts
    self.seed = int(seed)
    self.process_index = int(process_index)
    self.process_count = int(process_count)
    self.batch_size = int(batch_size)
    ds = src.dataset
    self.steps = _StepIndices(training_buckets(ds.bucket_of, opts.holdout), len(ds.bucket_keys),
                              seed=self.seed,
                              batch_size=self.batch_size, process_index=self.process_index,
                              process_count=self.process_count, shuffle=opts.shuffle)
    if self.steps.batches_per_epoch == 0:
      raise reader_lib.DatasetError(
          f"{ds.root}: no bucket has a full global batch of {self.steps.global_batch} records "
          f"(batch_size {batch_size} x {process_count} processes); buckets: {ds.bucket_counts()}")
    self.next_step = 0
    self.bad_records = 0
    self._it: Iterator | None = None
    self.fingerprint = dataset_fingerprint(ds.manifest)

  @property
  def batches_per_epoch(self) -> int:
    """Steps per epoch (all processes take the same number)."""
    return self.steps.batches_per_epoch

  def trained_buckets(self) -> dict[str, tuple[int, ...]]:
    """{bucket key: latent shape [T, H, W, C]} of the buckets that give at least one global
    batch per epoch (the batch shapes the train step will see)."""
    ds = self.src.dataset
    trained = self.steps.bucket_of
    counts = np.bincount(trained[trained >= 0], minlength=len(ds.bucket_keys))
    return {k: tuple(ds.bucket_shapes[k]) for k, c in zip(ds.bucket_keys, counts)
            if c >= self.steps.global_batch}

  @property
  def epoch(self) -> float:
    """Fractional epoch of the next batch."""
    return self.next_step / self.batches_per_epoch

  def _num_steps(self) -> int:
    """Total steps: num_epochs * batches_per_epoch, or sys.maxsize to repeat forever."""
    if self.opts.num_epochs == -1:
      return sys.maxsize
    return self.opts.num_epochs * self.batches_per_epoch

  def dataset(self, start: int = 0) -> grain.IterDataset:
    """The Grain pipeline from step `start` on."""
    steps = grain.MapDataset.range(self._num_steps())[start:]
    ds = steps.map(self.steps).map(_LoadBatch(self.src, self.opts.bad_records))
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=self.opts.read_threads,
                                                 prefetch_buffer_size=self.opts.prefetch))
    if self.opts.worker_count > 0:
      _ensure_absl_flags_parsed()
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self.opts.worker_count, per_worker_buffer_size=self.opts.worker_buffer_size))
    return it_ds

  def start_prefetch(self) -> None:
    """Starts the underlying Grain iterator (and its workers) if not running."""
    if self._it is None:
      self._it = iter(self.dataset(self.next_step))

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    """The next per-host batch (dict of numpy arrays, the Batches contract)."""
    self.start_prefetch()
    batch = next(self._it)
    self.bad_records += int(batch.pop(_BAD_KEY))
    self.next_step += 1
    return batch

  def metrics(self) -> dict[str, float]:
    """Counters for the train metrics: bad records skipped so far, epoch."""
    return {"data/bad_records": float(self.bad_records), "data/epoch": float(self.epoch)}

  def get_state(self) -> bytes:
    """JSON bytes: the next step plus what must match on restore."""
    return json.dumps({
        "format": _STATE_FORMAT, "version": _STATE_VERSION, "next_step": self.next_step,
        "bad_records": self.bad_records, "seed": self.seed, "batch_size": self.batch_size,
        "process_index": self.process_index, "process_count": self.process_count,
        "shuffle": self.opts.shuffle, "holdout": self.opts.holdout,
        "dataset": self.fingerprint}, indent=1).encode()

  def check_state(self, state: bytes | str | dict) -> dict:
    """The parsed state if this iterator can continue it; ValueError naming the field and both
    values when it was made with another seed, batch, process layout, holdout or dataset."""
    if isinstance(state, (bytes, str)):
      state = json.loads(state)
    if state.get("format") != _STATE_FORMAT or state.get("version") != _STATE_VERSION:
      raise ValueError(f"data iterator state: format {state.get('format')!r} version "
                       f"{state.get('version')!r}, expected {_STATE_FORMAT!r} {_STATE_VERSION}")
    mine = json.loads(self.get_state())
    fields = {"seed": "data.seed", "batch_size": "the per-process batch (data.batch_size)",
              "process_index": "the process index", "process_count": "the process count",
              "shuffle": "data.shuffle", "holdout": "data.holdout",
              "dataset": "the dataset (shard list and checksums)"}
    for key, name in fields.items():
      if state.get(key, 0 if key == "holdout" else None) != mine[key]:
        raise ValueError(f"data iterator state: {name} is {state.get(key)!r} in the checkpoint "
                         f"but {mine[key]!r} in this run; the batch order would differ")
    return state

  def set_state(self, state: bytes | str | dict) -> None:
    """Restores from get_state() output; refuses a state of another seed, batch or dataset."""
    state = self.check_state(state)
    self.close()
    self.next_step = int(state["next_step"])
    self.bad_records = int(state["bad_records"])

  def close(self) -> None:
    """Stops Grain workers and threads."""
    if self._it is not None:
      close = getattr(self._it, "close", None)
      if close is not None:
        close()
      self._it = None


def dataset_fingerprint(manifest: dict[str, Any]) -> str:
  """Short hash of the shard list and checksums: a state restores only onto the same data."""
  key = json.dumps([(s["file"], s["num_records"], s["crc32c"]) for s in manifest["shards"]])
  return hashlib.sha256(key.encode()).hexdigest()[:16]


def make_iterator(data_cfg: Any, *, seed: int, process_index: int = 0, process_count: int = 1,
                  batch_size: int) -> BatchIterator:
  """Opens the dataset (failing early, naming data.path) and returns the batch iterator.

  batch_size is the PER-HOST batch; process_index/count are jax.process_index()/count().
  """
  opts = PipelineOptions.from_config(data_cfg)
  if batch_size < 1:
    raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, process_count={process_count})")
  src = source_lib.LatentShardSource(opts.path, check_crc=opts.check_crc)
  return BatchIterator(src, opts, seed=seed, process_index=process_index,
                       process_count=process_count, batch_size=batch_size)


def held_out_batches(data_cfg: Any, *, batch_size: int,
                     max_batches: int | None = None) -> list[dict[str, np.ndarray]]:
  """The held-out records (data.holdout) as batches, fixed across runs: the Batches contract
  plus 'caption' [B] (str), grouped by bucket in index order, `batch_size` each (a bucket's
  last batch may be smaller), at most `max_batches`. Empty when data.holdout is 0."""
  opts = PipelineOptions.from_config(data_cfg)
  if batch_size < 1:
    raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
  if not opts.holdout:
    return []
  src = source_lib.LatentShardSource(opts.path, check_crc=opts.check_crc)
  ds = src.dataset
  idx = holdout_indices(len(ds), opts.holdout)
  out = []
  for b in range(len(ds.bucket_keys)):
    members = idx[ds.bucket_of[idx] == b]
    for lo in range(0, members.shape[0], batch_size):
      if max_batches is not None and len(out) >= max_batches:
        return out
      records = [src.decode(int(i)) for i in members[lo: lo + batch_size]]
      examples = [schema_lib.to_example_arrays(r) for r in records]
      batch = {k: np.stack([e[k] for e in examples]) for k in BATCH_KEYS}
      batch["caption"] = np.asarray([r.caption for r in records])
      out.append(batch)
  return out


def checkpoint_save_args(it: BatchIterator):
  """orbax save args for the iterator (grain's CheckpointHandler, one JSON per process)."""
  import grain.checkpoint  # registers the handler with orbax
  return grain.checkpoint.CheckpointSave(item=it)


def checkpoint_restore_args(it: BatchIterator):
  """orbax restore args; restoring updates `it` in place."""
  import grain.checkpoint
  return grain.checkpoint.CheckpointRestore(item=it)


def loader_examples_per_s(data_cfg: Any, *, batch_size: int, num_batches: int = 50,
                          warmup_batches: int = 3, seed: int = 0) -> float:
  """Examples per second the pipeline delivers (after warm-up), on this host."""
  it = make_iterator(data_cfg, seed=seed, batch_size=batch_size)
  try:
    for _ in range(warmup_batches):
      next(it)
    start = time.perf_counter()
    for _ in range(num_batches):
      next(it)
    elapsed = time.perf_counter() - start
  finally:
    it.close()
  return num_batches * batch_size / elapsed
