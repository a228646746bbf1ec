"""Reads a PyTorch `torch.save` state dict (zip format) into numpy arrays without torch.

A restricted unpickler: only OrderedDict, tensor rebuilds and storage types resolve, so the
file cannot run code. Used for weights that registry packages ship as `.pth` (TransNetV2).
"""
from __future__ import annotations

import collections
import pickle
import zipfile

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


def _rebuild_tensor(storage, offset, size, stride, *_):
  """torch._utils._rebuild_tensor_v2 on a flat numpy storage."""
  itemsize = storage.dtype.itemsize
  if not size:
    return np.array(storage[offset])
  return np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)).copy()


class _Unpickler(pickle.Unpickler):

  def __init__(self, fh, archive: zipfile.ZipFile, prefix: str, where: str):
    super().__init__(fh)
    self.archive, self.prefix, self.where = archive, prefix, where

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch" and name in _STORAGE_DTYPES:
      return _STORAGE_DTYPES[name]
    raise pickle.UnpicklingError(f"{self.where}: refusing to load {module}.{name}")

  def persistent_load(self, pid):
    kind, dtype, key, _location, _numel = pid
    if kind != "storage":
      raise pickle.UnpicklingError(f"{self.where}: unknown persistent id {kind!r}")
    data = self.archive.read(f"{self.prefix}/data/{key}")
    return np.frombuffer(data, dtype=dtype)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """name -> numpy array for every tensor of a zip-format `.pth` file."""
  try:
    archive = zipfile.ZipFile(path)
  except (OSError, zipfile.BadZipFile) as err:
    raise ValueError(f"{path}: not a zip-format torch checkpoint ({err})") from err
  with archive:
    pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if not pkl:
      raise ValueError(f"{path}: no data.pkl inside")
    with archive.open(pkl[0]) as fh:
      out = _Unpickler(fh, archive, pkl[0].rsplit("/", 1)[0], path).load()
  if not isinstance(out, dict):
    raise ValueError(f"{path}: expected a state dict, got {type(out).__name__}")
  return dict(out)
