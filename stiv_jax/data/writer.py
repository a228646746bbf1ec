"""Latent-shard writer: atomic TFRecord shards of a target size, index sidecars, a manifest.

Layout of a dataset directory:
  <prefix>-00000.tfrecord              records (tf.train.Example, see schema.py)
  <prefix>-00000.tfrecord.index.json   sidecar: byte offset, length, bucket, micro-conditions
                                       and caption source of every record
  manifest.json                        shards, record counts and micro-condition statistics per
                                       bucket, caption sources, schema version, CRC32C checksums
                                       of every shard and index file, and the latent contract
                                       (what made the latents: stiv_jax/data/contract.py)
  empty_prompt.npz                     the text encoder's empty prompt (the CFG null text)
Every file is written to a temporary name and renamed when complete, so a crashed writer never
leaves a file that looks finished. Several writers may fill one directory in parallel with
distinct prefixes (manifest=False) and `write_manifest(dir)` joins them afterwards.
"""
from __future__ import annotations

import json
import os
from typing import Any

import crc32c as _crc32c
import numpy as np

from stiv_jax.data import schema as schema_lib
from stiv_jax.data import tfrecord
from stiv_jax.micro import MICRO_CONDITIONS

MANIFEST_NAME = "manifest.json"
INDEX_SUFFIX = ".index.json"
SHARD_SUFFIX = ".tfrecord"
FORMAT_NAME = "stiv_jax.latent_shards"


def file_crc32c(path: str, chunk: int = 1 << 22) -> str:
  """Hex CRC32C (unmasked) of a whole file."""
  crc = 0
  with open(path, "rb") as f:
    while block := f.read(chunk):
      crc = _crc32c.crc32c(block, crc)
  return f"{crc:08x}"


def atomic_write_text(path: str, text: str) -> None:
  """Writes a text file through a temporary name and an atomic rename."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class ShardWriter:
  """Writes ClipRecords into TFRecord shards of about `target_shard_bytes` each.

  Use as a context manager; on a clean exit the last shard is finished and (unless
  manifest=False) the manifest written. On an exception, the unfinished shard is deleted.
  """

  def __init__(self, output_dir: str, *, target_shard_bytes: int = 256 << 20,
               prefix: str = "shard", latents_dtype: str = "float16",
               text_dtype: str = "float16", metadata: dict[str, Any] | None = None,
               manifest: bool = True, overwrite: bool = False,
               contract: dict[str, Any] | None = None,
               empty_prompt: tuple[Any, Any, Any] | None = None):
    if target_shard_bytes <= 0:
      raise ValueError(f"target_shard_bytes: must be > 0, got {target_shard_bytes}")
    if not prefix or "/" in prefix:
      raise ValueError(f"prefix: must be a non-empty file-name prefix, got {prefix!r}")
    self.output_dir = str(output_dir)
    os.makedirs(self.output_dir, exist_ok=True)
    manifest_path = os.path.join(self.output_dir, MANIFEST_NAME)
    if os.path.exists(manifest_path) and not overwrite:
      raise FileExistsError(f"{manifest_path}: dataset already exists; pass overwrite=True "
                            "or use an empty directory")
    self.target_shard_bytes = int(target_shard_bytes)
    self.prefix = prefix
    self.latents_dtype = latents_dtype
    self.text_dtype = text_dtype
    self.metadata = dict(metadata or {})
    self.contract = contract
    self.empty_prompt = empty_prompt
    self.manifest = manifest
    self._shard_index = 0
    self._f = None
    self._reset_shard_state()
    self.num_records = 0
    self.shards: list[str] = []
    self.written_manifest: dict[str, Any] | None = None  # set by close()

  def _reset_shard_state(self) -> None:
    """Starts the bookkeeping of a new shard."""
    self._offsets: list[int] = []
    self._lengths: list[int] = []
    self._buckets: list[str] = []
    self._micro: list[list[int]] = []
    self._caption_sources: list[str] = []
    self._shapes: dict[str, list[int]] = {}
    self._pos = 0
    self._crc = 0

  def _shard_name(self) -> str:
    """File name of the current shard."""
    return f"{self.prefix}-{self._shard_index:05d}{SHARD_SUFFIX}"

  def _tmp_path(self) -> str:
    """Temporary path the current shard is written to until it is finished."""
    return os.path.join(self.output_dir, self._shard_name() + f".tmp-{os.getpid()}")

  def write(self, rec: schema_lib.ClipRecord) -> None:
    """Encodes and appends one clip."""
    data = schema_lib.encode_example(rec, latents_dtype=self.latents_dtype,
                                     text_dtype=self.text_dtype)
    self.write_encoded(data, rec.bucket, list(rec.latents.shape), rec.micro_list(),
                       rec.caption_source)

  def write_encoded(self, data: bytes, bucket: str, shape: list[int], micro: list[int],
                    caption_source: str = "") -> None:
    """Appends one already-encoded record with its bucket key, latent shape, micro-conditions
    (MICRO_CONDITIONS order) and caption source (the index sidecar keeps them)."""
    if len(micro) != len(MICRO_CONDITIONS):
      raise ValueError(f"micro: expected {len(MICRO_CONDITIONS)} values {MICRO_CONDITIONS}, "
                       f"got {micro}")
    if self._f is None:
      self._f = open(self._tmp_path(), "wb")
    framed = tfrecord.frame(data)
    self._f.write(framed)
    self._offsets.append(self._pos)
    self._lengths.append(len(data))
    self._buckets.append(bucket)
    self._micro.append([int(v) for v in micro])
    self._caption_sources.append(str(caption_source))
    prev = self._shapes.setdefault(bucket, list(shape))
    if prev != list(shape):
      raise ValueError(f"bucket {bucket!r}: latent shape {shape} differs from {prev} "
                       "(channels must agree within a dataset)")
    self._pos += len(framed)
    self._crc = _crc32c.crc32c(framed, self._crc)
    self.num_records += 1
    if self._pos >= self.target_shard_bytes:
      self._finish_shard()

  def _finish_shard(self) -> None:
    """Closes, fsyncs and renames the current shard, then writes its index sidecar."""
    if self._f is None:
      return
    self._f.flush()
    os.fsync(self._f.fileno())
    self._f.close()
    self._f = None
    name = self._shard_name()
    final = os.path.join(self.output_dir, name)
    os.replace(self._tmp_path(), final)
    index = {"format": FORMAT_NAME, "shard": name, "schema_version": schema_lib.SCHEMA_VERSION,
             "num_records": len(self._offsets), "bytes": self._pos,
             "crc32c": f"{self._crc:08x}", "offsets": self._offsets, "lengths": self._lengths,
             "buckets": self._buckets, "shapes": self._shapes, "micro": self._micro,
             "caption_sources": self._caption_sources}
    atomic_write_text(final + INDEX_SUFFIX, json.dumps(index))
    self.shards.append(name)
    self._shard_index += 1
    self._reset_shard_state()

  def abort(self) -> None:
    """Deletes the unfinished shard (finished shards stay; no manifest is written)."""
    if self._f is not None:
      self._f.close()
      self._f = None
      os.remove(self._tmp_path())

  def close(self) -> dict[str, Any] | None:
    """Finishes the last shard and writes the manifest (if enabled); returns the manifest."""
    self._finish_shard()
    if self.manifest:
      self.written_manifest = write_manifest(self.output_dir, metadata=self.metadata,
                                             contract=self.contract,
                                             empty_prompt=self.empty_prompt)
    return self.written_manifest

  def __enter__(self) -> "ShardWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def micro_stats(rows: list[list[int]]) -> dict[str, dict[str, int]]:
  """{name: {'mode', 'min', 'max'}} of per-record micro-conditions (the mode is what sampling
  uses by default: the value training saw most; ties go to the smallest)."""
  arr = np.asarray(rows, np.int64).reshape(-1, len(MICRO_CONDITIONS))
  out = {}
  for j, name in enumerate(MICRO_CONDITIONS):
    values, counts = np.unique(arr[:, j], return_counts=True)
    out[name] = {"mode": int(values[np.argmax(counts)]), "min": int(arr[:, j].min()),
                 "max": int(arr[:, j].max())}
  return out


EMPTY_PROMPT_NAME = "empty_prompt.npz"


def write_empty_prompt(output_dir: str, arrays: tuple[Any, Any, Any]) -> dict[str, str]:
  """Writes the empty prompt's (tokens [1, L, D], mask [1, L], pooled [1, D]) atomically;
  -> its manifest entry {'file', 'crc32c'}."""
  tokens, mask, pooled = (np.asarray(a) for a in arrays)
  path = os.path.join(output_dir, EMPTY_PROMPT_NAME)
  write_npz(path, text=tokens.reshape(tokens.shape[-2:]).astype(np.float32),
            text_mask=mask.reshape(mask.shape[-1:]).astype(bool),
            pooled=pooled.reshape(pooled.shape[-1:]).astype(np.float32))
  return {"file": EMPTY_PROMPT_NAME, "crc32c": file_crc32c(path)}


def write_npz(path: str, **arrays: np.ndarray) -> None:
  """An .npz (np.load reads it) with fixed timestamps, so equal arrays give equal bytes; atomic."""
  import io
  import zipfile
  tmp = f"{path}.tmp-{os.getpid()}"
  with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
    for name, a in sorted(arrays.items()):
      buf = io.BytesIO()
      np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)
      z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())
  os.replace(tmp, path)


def write_manifest(output_dir: str, *, metadata: dict[str, Any] | None = None,
                   contract: dict[str, Any] | None = None,
                   empty_prompt: tuple[Any, Any, Any] | None = None) -> dict[str, Any]:
  """Builds manifest.json from every shard index sidecar in `output_dir` (atomic write).

  `contract` is the encoders' record (stiv_jax/data/contract.py encoders_record); with
  `empty_prompt` (the text encoder's encoding of "") it is stored beside the shards.
  """
  output_dir = str(output_dir)
  index_files = sorted(f for f in os.listdir(output_dir) if f.endswith(SHARD_SUFFIX + INDEX_SUFFIX))
  shards, buckets, total = [], {}, 0
  micro: dict[str, list[list[int]]] = {}
  captions: dict[str, int] = {}
  for index_name in index_files:
    index_path = os.path.join(output_dir, index_name)
    with open(index_path) as f:
      index = json.load(f)
    shard_path = os.path.join(output_dir, index["shard"])
    if not os.path.exists(shard_path):
      raise FileNotFoundError(f"{index_path}: names shard {index['shard']!r}, which is missing")
    for key, shape in index["shapes"].items():
      entry = buckets.setdefault(key, {"count": 0, "shape": shape})
      if entry["shape"] != shape:
        raise ValueError(f"{index_path}: bucket {key!r} shape {shape} != {entry['shape']}")
    rows = index.get("micro") or [None] * len(index["buckets"])
    for key, row in zip(index["buckets"], rows):
      buckets[key]["count"] += 1
      if row is not None:
        micro.setdefault(key, []).append(row)
    for src in index.get("caption_sources") or ["unknown"] * len(index["buckets"]):
      captions[src or "unknown"] = captions.get(src or "unknown", 0) + 1
    total += index["num_records"]
    shards.append({"file": index["shard"], "index": index_name,
                   "num_records": index["num_records"], "bytes": index["bytes"],
                   "crc32c": index["crc32c"], "index_crc32c": file_crc32c(index_path)})
  for key, rows in micro.items():
    if len(rows) == buckets[key]["count"]:
      buckets[key]["micro"] = micro_stats(rows)
  manifest = {"format": FORMAT_NAME, "schema_version": schema_lib.SCHEMA_VERSION,
              "num_records": total, "num_shards": len(shards),
              "buckets": dict(sorted(buckets.items())),
              "captions": dict(sorted(captions.items())), "shards": shards,
              "metadata": dict(metadata or {})}
  if contract is not None:
    manifest["contract"] = dict(contract)
    if empty_prompt is not None:
      manifest["contract"]["empty_prompt"] = write_empty_prompt(output_dir, empty_prompt)
  atomic_write_text(os.path.join(output_dir, MANIFEST_NAME), json.dumps(manifest, indent=1))
  return manifest
