"""Checkpoint integrity: a checksum of every file of a finished checkpoint, verified on restore.

`seal(step_dir)` writes STEP/stiv_checksums.json (CRC32C and size of every file under the step
folder) once orbax has finalised the checkpoint; `verify(step_dir)` recomputes them and returns
the first problem as one line (a missing, truncated, changed or extra file), or None. A flipped
byte anywhere in the weights, the iterator state or orbax's metadata is caught before anything
is decoded. `nonfinite_leaf(tree)` names the first parameter holding NaN or Inf.
"""
from __future__ import annotations

import json
import os
from typing import Any

import crc32c as _crc32c
import jax
import jax.numpy as jnp
import numpy as np

CHECKSUM_FILE = "stiv_checksums.json"
FORMAT = "stiv_jax.checkpoint_checksums"


def _files(step_dir: str) -> list[str]:
  """Relative paths of every regular file under a checkpoint step folder (sorted)."""
  out = []
  for root, _, names in os.walk(step_dir):
    for n in names:
      rel = os.path.relpath(os.path.join(root, n), step_dir)
      if rel != CHECKSUM_FILE and ".tmp-" not in n:
        out.append(rel)
  return sorted(out)


def _crc(path: str, chunk: int = 1 << 22) -> str:
  crc = 0
  with open(path, "rb") as f:
    while block := f.read(chunk):
      crc = _crc32c.crc32c(block, crc)
  return f"{crc:08x}"


def is_sealed(step_dir: str) -> bool:
  return os.path.exists(os.path.join(step_dir, CHECKSUM_FILE))


def seal(step_dir: str) -> bool:
  """Writes the checksums of a finished checkpoint (atomic; idempotent); True if it wrote."""
  if is_sealed(step_dir) or not os.path.isdir(step_dir):
    return False
  files = {rel: {"bytes": os.path.getsize(os.path.join(step_dir, rel)),
                 "crc32c": _crc(os.path.join(step_dir, rel))} for rel in _files(step_dir)}
  path = os.path.join(step_dir, CHECKSUM_FILE)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump({"format": FORMAT, "version": 1, "files": files}, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return True


def verify(step_dir: str) -> str | None:
  """The first integrity problem of a sealed checkpoint as one line, or None when it is whole;
  an unsealed checkpoint (written before sealing existed, or killed before it) says so."""
  path = os.path.join(step_dir, CHECKSUM_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      files = json.load(f)["files"]
  except (OSError, ValueError, KeyError) as e:
    return f"{path}: unreadable checksum file ({type(e).__name__}: {e})"
  on_disk = set(_files(step_dir))
  for rel, want in sorted(files.items()):
    full = os.path.join(step_dir, rel)
    if rel not in on_disk:
      return f"{full}: missing (the checkpoint lists it)"
    size = os.path.getsize(full)
    if size != want["bytes"]:
      return f"{full}: {size} bytes, the checksum file says {want['bytes']} (truncated?)"
    crc = _crc(full)
    if crc != want["crc32c"]:
      return f"{full}: checksum {crc} != {want['crc32c']} recorded at save (corrupted)"
  extra = sorted(on_disk - set(files))
  if extra:
    return f"{os.path.join(step_dir, extra[0])}: not part of the checkpoint as saved"
  return None


def _count_nonfinite(x: jax.Array) -> jax.Array:
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.zeros((), jnp.int32)
  return jnp.sum(~jnp.isfinite(x)).astype(jnp.int32)


def nonfinite_leaf(tree: Any) -> str | None:
  """'path (shape): n of m values non-finite' of the first leaf with NaN/Inf, or None. Counted
  on the devices (sharded arrays stay where they are; only the counts are fetched)."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  counts = jax.device_get(jax.jit(lambda leaves: [_count_nonfinite(x) for x in leaves])(
      [leaf for _, leaf in flat]))
  for (path, leaf), bad in zip(flat, counts):
    if int(bad):
      name = "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p))))
                      for p in path)
      return f"{name} {tuple(leaf.shape)}: {int(bad)} of {int(np.prod(leaf.shape))} values are NaN or Inf"
  return None
