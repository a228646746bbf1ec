"""The latent-shard record schema: one clip as a standard `tf.train.Example`, versioned.

The proto classes are the `tf.train.Example` copies shipped with tensorflow-datasets (package
`tensorflow_copy`, same field numbers, so the bytes are a standard `tf.train.Example`); no
TensorFlow is needed.

Schema 1.x holds the PRECOMPUTED text token embeddings and their padding mask (the frozen text
encoder ran offline), not token ids; the train step never runs the text encoder.

Features (all keys fixed; arrays stored as raw little-endian bytes plus dtype and shape):
  schema_version  bytes  "MAJOR.MINOR"
  latents         bytes  [T, H, W, C] in `latents_dtype` ("float16" or "bfloat16")
  latents_dtype   bytes;  latents_shape int64[4]
  text            bytes  [L, D] token embeddings in `text_dtype`
  text_dtype      bytes;  text_shape int64[2]
  text_mask       int64[L]  1 = real token, 0 = padding
  pooled          bytes  [D] pooled text embedding in `text_dtype`
  micro/<name>    int64  for name in MICRO_CONDITIONS (orig_height, orig_width, crop_top,
                         crop_left, stride, num_frames)
  caption, clip_id, source   bytes (utf-8);  span  float[2] (start, end seconds in the source)
  caption_source  bytes  where the caption came from (sidecar, vlm, stub, ...); since 1.1
  bucket          bytes  "TxHxW" of the latents (the batch-shape key)
Serialisation is deterministic (sorted map keys), so the same clip always gives the same bytes.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_dtypes
import numpy as np

from stiv_jax.micro import MICRO_CONDITIONS

try:
  from tensorflow_datasets.proto import tf_example_generated_pb2 as _example_pb2
except ImportError as e:  # pragma: no cover - tensorflow-datasets is a core dependency
  raise ImportError("stiv_jax.data.schema needs tensorflow-datasets (for the tf.train.Example "
                    "proto classes); install it (it does not pull in TensorFlow)") from e

Example = _example_pb2.Example

SCHEMA_MAJOR = 1
SCHEMA_MINOR = 1
SCHEMA_VERSION = f"{SCHEMA_MAJOR}.{SCHEMA_MINOR}"


STORAGE_DTYPES = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16),
                  "float32": np.dtype(np.float32)}


class SchemaError(ValueError):
  """A record does not follow the schema this reader understands."""


def bucket_key(shape: tuple[int, ...]) -> str:
  """The batch-shape key "TxHxW" of a latent video of shape [T, H, W, C]."""
  if len(shape) != 4:
    raise SchemaError(f"latents: expected shape [T, H, W, C], got {tuple(shape)}")
  return "x".join(str(int(s)) for s in shape[:3])


def parse_version(version: str) -> tuple[int, int]:
  """"MAJOR.MINOR" -> (major, minor), with a clear error for malformed strings."""
  try:
    major, minor = (int(p) for p in str(version).split("."))
  except ValueError:
    raise SchemaError(f"schema_version: malformed value {version!r}; expected 'MAJOR.MINOR'")
  return major, minor


def check_version(version: str, *, where: str = "record") -> None:
  """Refuses a schema version with another major version than this reader's (newer or older)."""
  major, _ = parse_version(version)
  if major > SCHEMA_MAJOR:
    raise SchemaError(
        f"{where}: schema_version {version} is newer than this reader's {SCHEMA_VERSION} "
        f"(major {major} > {SCHEMA_MAJOR}); upgrade stiv_jax to read these shards")
  if major < SCHEMA_MAJOR:
    raise SchemaError(
        f"{where}: schema_version {version} is older than this reader's {SCHEMA_VERSION} "
        f"(major {major} < {SCHEMA_MAJOR}) and has no migration; rewrite the shards")


@dataclasses.dataclass
class ClipRecord:
  """One training clip: latents, precomputed text embeddings, micro-conditions, provenance."""

  latents: np.ndarray          # [T, H, W, C]
  text: np.ndarray             # [L, D] token embeddings
  text_mask: np.ndarray        # [L] bool
  pooled: np.ndarray           # [D]
  micro: dict[str, int]        # keys MICRO_CONDITIONS
  caption: str = ""
  clip_id: str = ""
  source: str = ""
  span: tuple[float, float] = (0.0, 0.0)
  caption_source: str = ""
  schema_version: str = SCHEMA_VERSION

  @property
  def bucket(self) -> str:
    """The batch-shape key of this clip."""
    return bucket_key(self.latents.shape)

  def micro_vector(self) -> np.ndarray:
    """[6] float32 in MICRO_CONDITIONS order."""
    return np.array([self.micro[k] for k in MICRO_CONDITIONS], np.float32)

  def micro_list(self) -> list[int]:
    """The micro-conditions as ints in MICRO_CONDITIONS order (the index sidecar's form)."""
    return [int(self.micro[k]) for k in MICRO_CONDITIONS]


def _bytes(ex, key: str, value: bytes) -> None:
  """Appends a bytes value to feature `key`."""
  ex.features.feature[key].bytes_list.value.append(value)


def _ints(ex, key: str, values) -> None:
  """Appends int64 values to feature `key`."""
  ex.features.feature[key].int64_list.value.extend(int(v) for v in values)


def _floats(ex, key: str, values) -> None:
  """Appends float values to feature `key`."""
  ex.features.feature[key].float_list.value.extend(float(v) for v in values)


def _array_bytes(name: str, array: np.ndarray, dtype: str) -> bytes:
  """Casts to the storage dtype and returns little-endian bytes; refuses non-finite values."""
  if dtype not in STORAGE_DTYPES:
    raise SchemaError(f"{name}_dtype: unknown storage dtype {dtype!r}; "
                      f"expected one of {sorted(STORAGE_DTYPES)}")
  array = np.asarray(array, np.float32)
  if not np.all(np.isfinite(array)):
    raise SchemaError(f"{name}: contains NaN or Inf values")
  # Native order; every supported host (x86, ARM, TPU VM) is little-endian, as the schema says.
  return np.ascontiguousarray(array.astype(STORAGE_DTYPES[dtype])).tobytes()


def encode_example(rec: ClipRecord, *, latents_dtype: str = "float16",
                   text_dtype: str = "float16") -> bytes:
  """Serialises a ClipRecord into `tf.train.Example` bytes (schema SCHEMA_VERSION)."""
  latents = np.asarray(rec.latents)
  text = np.asarray(rec.text)
  mask = np.asarray(rec.text_mask).astype(bool)
  pooled = np.asarray(rec.pooled)
  if latents.ndim != 4:
    raise SchemaError(f"latents: expected [T, H, W, C], got shape {latents.shape}")
  if text.ndim != 2 or mask.shape != text.shape[:1]:
    raise SchemaError(f"text/text_mask: expected [L, D] and [L], got {text.shape} and {mask.shape}")
  if pooled.shape != text.shape[1:]:
    raise SchemaError(f"pooled: expected [{text.shape[1]}], got {pooled.shape}")
  missing = [k for k in MICRO_CONDITIONS if k not in rec.micro]
  if missing:
    raise SchemaError(f"micro: missing micro-conditions {missing} (clip {rec.clip_id!r})")
  ex = Example()
  _bytes(ex, "schema_version", SCHEMA_VERSION.encode())
  _bytes(ex, "latents", _array_bytes("latents", latents, latents_dtype))
  _bytes(ex, "latents_dtype", latents_dtype.encode())
  _ints(ex, "latents_shape", latents.shape)
  _bytes(ex, "text", _array_bytes("text", text, text_dtype))
  _bytes(ex, "text_dtype", text_dtype.encode())
  _ints(ex, "text_shape", text.shape)
  _ints(ex, "text_mask", mask.astype(np.int64))
  _bytes(ex, "pooled", _array_bytes("pooled", pooled, text_dtype))
  for k in MICRO_CONDITIONS:
    _ints(ex, f"micro/{k}", [rec.micro[k]])
  _bytes(ex, "caption", rec.caption.encode("utf-8"))
  _bytes(ex, "clip_id", rec.clip_id.encode("utf-8"))
  _bytes(ex, "source", rec.source.encode("utf-8"))
  _floats(ex, "span", rec.span)
  _bytes(ex, "caption_source", rec.caption_source.encode("utf-8"))
  _bytes(ex, "bucket", bucket_key(latents.shape).encode())
  return ex.SerializeToString(deterministic=True)


def _get(feats, key: str, kind: str) -> Any:
  """The non-empty value list of feature `key` of the given kind; SchemaError otherwise."""
  if key not in feats:
    raise SchemaError(f"feature {key!r} missing")
  values = getattr(feats[key], kind).value
  if not len(values):
    raise SchemaError(f"feature {key!r}: expected a {kind}, found none")
  return values


def _array(feats, key: str, dtype_key: str, shape) -> np.ndarray:
  """A stored array feature as float32, checking its dtype name and byte size."""
  dtype_name = _get(feats, dtype_key, "bytes_list")[0].decode()
  if dtype_name not in STORAGE_DTYPES:
    raise SchemaError(f"feature {dtype_key!r}: unknown dtype {dtype_name!r}")
  raw = _get(feats, key, "bytes_list")[0]
  dtype = STORAGE_DTYPES[dtype_name]
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(raw) != expected:
    raise SchemaError(f"feature {key!r}: {len(raw)} bytes, expected {expected} for shape "
                      f"{tuple(shape)} {dtype_name}")
  return np.frombuffer(raw, dtype).reshape(shape).astype(np.float32)


def decode_example(data: bytes) -> ClipRecord:
  """Parses `tf.train.Example` bytes into a ClipRecord (float32 arrays); SchemaError if invalid."""
  ex = Example()
  try:
    ex.ParseFromString(data)
  except Exception as e:  # protobuf's DecodeError
    raise SchemaError(f"not a tf.train.Example: {e}") from e
  feats = ex.features.feature
  version = _get(feats, "schema_version", "bytes_list")[0].decode()
  check_version(version)
  lshape = tuple(_get(feats, "latents_shape", "int64_list"))
  tshape = tuple(_get(feats, "text_shape", "int64_list"))
  if len(lshape) != 4 or len(tshape) != 2:
    raise SchemaError(f"latents_shape {lshape} / text_shape {tshape}: expected 4 and 2 dims")
  latents = _array(feats, "latents", "latents_dtype", lshape)
  text = _array(feats, "text", "text_dtype", tshape)
  pooled = _array(feats, "pooled", "text_dtype", tshape[1:])
  mask = np.asarray(_get(feats, "text_mask", "int64_list"), np.int64).astype(bool)
  if mask.shape != tshape[:1]:
    raise SchemaError(f"text_mask: length {mask.shape[0]}, expected {tshape[0]}")
  micro = {k: int(_get(feats, f"micro/{k}", "int64_list")[0]) for k in MICRO_CONDITIONS}
  bucket = _get(feats, "bucket", "bytes_list")[0].decode()
  if bucket != bucket_key(lshape):
    raise SchemaError(f"bucket: {bucket!r} does not match latents_shape {lshape}")
  span = tuple(float(v) for v in _get(feats, "span", "float_list"))
  source = feats["caption_source"].bytes_list.value if "caption_source" in feats else []
  return ClipRecord(latents=latents, text=text, text_mask=mask, pooled=pooled, micro=micro,
                    caption=_get(feats, "caption", "bytes_list")[0].decode("utf-8"),
                    clip_id=_get(feats, "clip_id", "bytes_list")[0].decode("utf-8"),
                    source=_get(feats, "source", "bytes_list")[0].decode("utf-8"),
                    span=span, caption_source=source[0].decode("utf-8") if source else "",
                    schema_version=version)


def to_example_arrays(rec: ClipRecord) -> dict[str, np.ndarray]:
  """The per-example training arrays of the Batches contract (without the batch axis)."""
  return {"latents": rec.latents, "text": rec.text, "text_mask": rec.text_mask,
          "pooled": rec.pooled, "micro": rec.micro_vector()}
