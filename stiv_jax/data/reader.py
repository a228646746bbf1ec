"""Opens a latent-shard dataset (manifest + index sidecars) for random access, and validates it.

`open_dataset` fails early with the path named when the dataset is missing, empty, of a newer
schema major version, or inconsistent with its indexes; `read(i)` returns the CRC-checked
record bytes of global record i; `validate_dataset` checks every byte.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import crc32c as _crc32c
import numpy as np

from stiv_jax.data import schema as schema_lib
from stiv_jax.data import tfrecord
from stiv_jax.data import writer as writer_lib


class DatasetError(ValueError):
  """A dataset directory, manifest or index is missing or inconsistent (message names the file)."""


def _manifest_path(path: str) -> tuple[str, str]:
  """(dataset root, manifest path) for a directory or manifest path; fails naming it."""
  path = str(path)
  if not path:
    raise DatasetError("data.path: empty; set it to a latent-shard dataset directory")
  if not os.path.exists(path):
    raise DatasetError(f"data.path: {path} does not exist")
  if os.path.isdir(path):
    root, manifest = path, os.path.join(path, writer_lib.MANIFEST_NAME)
  else:
    root, manifest = os.path.dirname(path) or ".", path
  if not os.path.exists(manifest):
    content = sorted(os.listdir(root))[:5] if os.path.isdir(root) else []
    raise DatasetError(f"{path}: no {writer_lib.MANIFEST_NAME} (not a latent-shard dataset, or "
                       f"an unfinished write); directory holds {content}")
  return root, manifest


def load_manifest(path: str) -> tuple[str, dict[str, Any]]:
  """(dataset root, manifest dict), refusing a newer schema major version."""
  root, manifest_path = _manifest_path(path)
  try:
    with open(manifest_path) as f:
      manifest = json.load(f)
  except json.JSONDecodeError as e:
    raise DatasetError(f"{manifest_path}: not valid JSON ({e})") from e
  if manifest.get("format") != writer_lib.FORMAT_NAME:
    raise DatasetError(f"{manifest_path}: format {manifest.get('format')!r}, expected "
                       f"{writer_lib.FORMAT_NAME!r}")
  schema_lib.check_version(manifest.get("schema_version", "?"), where=manifest_path)
  return root, manifest


@dataclasses.dataclass
class ShardedDataset:
  """All records of a dataset, addressable by a global index (shard order, then record order)."""

  root: str
  manifest: dict[str, Any]
  shard_paths: list[str]
  shard_of: np.ndarray      # [N] int32 shard number of each record
  offsets: np.ndarray       # [N] int64 byte offset within its shard
  lengths: np.ndarray       # [N] int64 data length
  bucket_of: np.ndarray     # [N] int32 index into bucket_keys
  bucket_keys: list[str]
  bucket_shapes: dict[str, tuple[int, ...]]
  check_crc: bool = True

  def __post_init__(self):
    self._fds: dict[int, int] = {}

  def __len__(self) -> int:
    return int(self.offsets.shape[0])

  def __getstate__(self) -> dict[str, Any]:
    # File descriptors stay in their process; a Grain worker reopens lazily.
    state = dict(self.__dict__)
    state["_fds"] = {}
    return state

  def location(self, i: int) -> tuple[str, int]:
    """(shard path, byte offset) of global record i."""
    return self.shard_paths[self.shard_of[i]], int(self.offsets[i])

  def _fd(self, shard: int) -> int:
    """This process's read-only descriptor of a shard (opened on first use)."""
    fd = self._fds.get(shard)
    if fd is None:
      fd = self._fds[shard] = os.open(self.shard_paths[shard], os.O_RDONLY)
    return fd

  def read(self, i: int) -> bytes:
    """CRC-checked data bytes of global record i; TFRecordError names file and offset."""
    if not 0 <= i < len(self):
      raise IndexError(f"record {i} out of range [0, {len(self)}) of {self.root}")
    shard = int(self.shard_of[i])
    return tfrecord.read_at(self._fd(shard), int(self.offsets[i]), int(self.lengths[i]),
                            path=self.shard_paths[shard], check_crc=self.check_crc)

  def decode(self, i: int) -> schema_lib.ClipRecord:
    """Decoded global record i; SchemaError messages are prefixed with file and offset."""
    data = self.read(i)
    try:
      rec = schema_lib.decode_example(data)
    except schema_lib.SchemaError as e:
      path, offset = self.location(i)
      raise schema_lib.SchemaError(f"{path}: record at byte offset {offset}: {e}") from e
    expected = self.bucket_keys[self.bucket_of[i]]
    if rec.bucket != expected:
      path, offset = self.location(i)
      raise schema_lib.SchemaError(f"{path}: record at byte offset {offset}: bucket "
                                   f"{rec.bucket!r} but the index says {expected!r}")
    return rec

  def bucket_counts(self) -> dict[str, int]:
    """Records per bucket key."""
    counts = np.bincount(self.bucket_of, minlength=len(self.bucket_keys))
    return {k: int(c) for k, c in zip(self.bucket_keys, counts)}

  def close(self) -> None:
    """Closes the open shard files of this process."""
    for fd in self._fds.values():
      os.close(fd)
    self._fds = {}


def open_dataset(path: str, *, check_crc: bool = True) -> ShardedDataset:
  """Opens a dataset directory (or its manifest.json); fails early naming the path."""
  root, manifest = load_manifest(path)
  if not manifest.get("num_records") or not manifest.get("shards"):
    raise DatasetError(f"{root}: the manifest lists no records; the dataset is empty")
  bucket_keys = sorted(manifest["buckets"])
  bucket_id = {k: i for i, k in enumerate(bucket_keys)}
  shard_paths, shard_of, offsets, lengths, bucket_of = [], [], [], [], []
  for s, shard in enumerate(manifest["shards"]):
    shard_path = os.path.join(root, shard["file"])
    index_path = os.path.join(root, shard["index"])
    for p in (shard_path, index_path):
      if not os.path.exists(p):
        raise DatasetError(f"{p}: listed in {root}/{writer_lib.MANIFEST_NAME} but missing")
    size = os.path.getsize(shard_path)
    if size != shard["bytes"]:
      raise DatasetError(f"{shard_path}: {size} bytes on disk, manifest says {shard['bytes']}")
    with open(index_path) as f:
      index = json.load(f)
    n = index.get("num_records")
    if n != shard["num_records"] or len(index["offsets"]) != n or len(index["buckets"]) != n \
        or len(index["lengths"]) != n:
      raise DatasetError(f"{index_path}: {n} records / {len(index['offsets'])} offsets, "
                         f"manifest says {shard['num_records']}")
    unknown = set(index["buckets"]) - set(bucket_id)
    if unknown:
      raise DatasetError(f"{index_path}: buckets {sorted(unknown)} not in the manifest")
    shard_paths.append(shard_path)
    shard_of.append(np.full(n, s, np.int32))
    offsets.append(np.asarray(index["offsets"], np.int64))
    lengths.append(np.asarray(index["lengths"], np.int64))
    bucket_of.append(np.asarray([bucket_id[b] for b in index["buckets"]], np.int32))
  ds = ShardedDataset(
      root=root, manifest=manifest, shard_paths=shard_paths,
      shard_of=np.concatenate(shard_of), offsets=np.concatenate(offsets),
      lengths=np.concatenate(lengths), bucket_of=np.concatenate(bucket_of),
      bucket_keys=bucket_keys,
      bucket_shapes={k: tuple(v["shape"]) for k, v in manifest["buckets"].items()},
      check_crc=check_crc)
  if len(ds) != manifest["num_records"]:
    raise DatasetError(f"{root}: indexes hold {len(ds)} records, manifest says "
                       f"{manifest['num_records']}")
  return ds


def validate_dataset(path: str) -> dict[str, Any]:
  """Checks manifest, index checksums, every record CRC, offset and schema; raises at the first
  problem (TFRecordError / SchemaError / DatasetError naming file and byte offset)."""
  ds = open_dataset(path)
  contract = ds.manifest.get("contract") or {}
  text = contract.get("text") or {}
  text_shape = (int(text["max_length"]), int(text["dim"])) if text else None
  micro_of: dict[int, list[int]] = {}
  for s, shard in enumerate(ds.manifest["shards"]):
    index_path = os.path.join(ds.root, shard["index"])
    crc = writer_lib.file_crc32c(index_path)
    if crc != shard["index_crc32c"]:
      raise DatasetError(f"{index_path}: checksum {crc} != manifest {shard['index_crc32c']}")
    with open(index_path) as f:
      rows = json.load(f).get("micro")
    if rows:
      micro_of.update(zip((int(i) for i in np.nonzero(ds.shard_of == s)[0]), rows))
    in_shard = np.nonzero(ds.shard_of == s)[0]
    shard_path = ds.shard_paths[s]
    file_crc, k = 0, 0
    for offset, data in tfrecord.scan(shard_path):
      if k >= len(in_shard):
        raise DatasetError(f"{shard_path}: record at byte offset {offset} not in the index")
      i = in_shard[k]
      if offset != ds.offsets[i] or len(data) != ds.lengths[i]:
        raise DatasetError(f"{shard_path}: record {k} at byte offset {offset} (length "
                           f"{len(data)}), index says offset {ds.offsets[i]} "
                           f"length {ds.lengths[i]}")
      rec = ds.decode(int(i))  # schema + bucket check, names file and offset
      _check_record(rec, ds, text_shape, shard_path, offset, micro_of.get(int(i)))
      text_shape = text_shape or tuple(rec.text.shape)
      file_crc = _crc_frame(file_crc, data)
      k += 1
    if k != len(in_shard):
      raise DatasetError(f"{shard_path}: {k} records on disk, index lists {len(in_shard)}")
    if f"{file_crc:08x}" != shard["crc32c"]:
      raise DatasetError(f"{shard_path}: file checksum {file_crc:08x} != manifest "
                         f"{shard['crc32c']}")
  ds.close()
  return {"path": ds.root, "num_records": len(ds), "num_shards": len(ds.shard_paths),
          "buckets": ds.bucket_counts(), "schema_version": ds.manifest["schema_version"]}


def _check_record(rec: schema_lib.ClipRecord, ds: ShardedDataset, text_shape, path: str,
                  offset: int, micro: list[int] | None) -> None:
  """A decoded record against what the manifest and index promise (exact latent shape with
  channels, one text shape for the whole dataset (the contract's), the indexed micro values)."""
  where = f"{path}: record at byte offset {offset}"
  want = tuple(ds.bucket_shapes[rec.bucket])
  if tuple(rec.latents.shape) != want:
    raise DatasetError(f"{where}: latents {list(rec.latents.shape)} but the manifest and index "
                       f"say bucket {rec.bucket} is {list(want)}")
  if text_shape is not None and tuple(rec.text.shape) != tuple(text_shape):
    raise DatasetError(f"{where}: text embeddings {list(rec.text.shape)} but the dataset's "
                       f"(contract or first record) are {list(text_shape)}")
  if micro is not None and rec.micro_list() != [int(v) for v in micro]:
    raise DatasetError(f"{where}: micro-conditions {rec.micro_list()} but the index says "
                       f"{micro}")


def _crc_frame(crc: int, data: bytes) -> int:
  """Extends a whole-file CRC32C (which covers the framed bytes) by one record."""
  return _crc32c.crc32c(tfrecord.frame(data), crc)
