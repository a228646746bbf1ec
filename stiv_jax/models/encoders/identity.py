"""What an encoder IS, as a JSON record: kind, sizes, and the content hash of its weight files.

The latent contract (stiv_jax/data/contract.py) stores these records in the shard manifest so
training and sampling can refuse an encoder other than the one that made the latents. Hashes are
sha256 over the files' names, sizes and bytes; they are cached per (path, size, mtime) in the
process, so checking the same weights twice reads them once.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable

# Files of a model folder that a loader may read (weights, configs, tokenizer files).
MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".model", ".txt")
_CACHE: dict[tuple, str] = {}


def _stat_key(path: str) -> tuple:
  st = os.stat(path)
  return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
  """Hex sha256 of one file's bytes (cached per path, size and mtime)."""
  key = _stat_key(path)
  if key not in _CACHE:
    h = hashlib.sha256()
    with open(path, "rb") as f:
      while block := f.read(chunk):
        h.update(block)
    _CACHE[key] = h.hexdigest()
  return _CACHE[key]


def model_files(path: str, suffixes: Iterable[str] = MODEL_FILE_SUFFIXES) -> list[str]:
  """The files an identity covers: `path` itself, or a folder's model files (sorted, top level)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file or folder")
  if os.path.isfile(path):
    return [os.path.abspath(path)]
  suffixes = tuple(suffixes)
  return sorted(os.path.join(os.path.abspath(path), n) for n in os.listdir(path)
                if n.endswith(suffixes) and os.path.isfile(os.path.join(path, n)))


def weights_identity(path: str, extra: Iterable[str] = ()) -> dict[str, Any]:
  """{'path', 'sha256', 'bytes', 'files'} of a model file or folder (plus `extra` files, e.g. a
  config.json given separately); sha256 covers each file's name, size and content."""
  files = model_files(path) + [os.path.abspath(p) for p in extra if p]
  if not files:
    raise FileNotFoundError(f"{path}: holds no model files ({', '.join(MODEL_FILE_SUFFIXES)})")
  h = hashlib.sha256()
  total = 0
  for f in files:
    size = os.path.getsize(f)
    total += size
    h.update(f"{os.path.basename(f)}\0{size}\0{file_sha256(f)}\n".encode())
  return {"path": os.path.abspath(path), "sha256": h.hexdigest(), "bytes": total,
          "files": [os.path.basename(f) for f in files]}


def same_weights(recorded: dict[str, Any] | None, path: str) -> tuple[bool, str]:
  """(whether `path` holds the weights `recorded` names, their sha256 now)."""
  now = weights_identity(path)["sha256"]
  return bool(recorded) and recorded.get("sha256") == now, now
