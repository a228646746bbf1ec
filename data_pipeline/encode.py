"""Stage 8, encode: clip frames -> VAE latents, caption -> text embeddings, into latent shards.

Per clip: `num_frames` frames `stride` apart from the span start (the stride shrinks when the
clip is too short for it), decoded at display geometry (rotation and non-square pixels
applied), resized to cover the bucket resolution nearest in DISPLAY aspect ratio and
center-cropped; the micro-conditions (orig_height, orig_width = the displayed size, crop_top,
crop_left, stride, num_frames) are recorded. Crop offsets are in the resized frame's pixels (as
in SDXL). Shards are written per bucket (file prefix = bucket key) through stiv_jax's
ShardWriter, records sorted by clip id, with the latent contract (the encoders' identity and the
empty prompt, cached by the encode workers) in the manifest, so reruns produce identical shards.
"""
from __future__ import annotations

import json
import math
import os
import shutil

import cv2
import numpy as np

from stiv_jax import video_io
from stiv_jax.data import schema as schema_lib
from stiv_jax.data import writer as writer_lib
from stiv_jax.micro import MICRO_CONDITIONS


def pick_bucket(height: int, width: int, buckets) -> tuple[int, int]:
  """The (h, w) bucket whose aspect ratio is nearest (in log space) to the clip's."""
  if not buckets:
    raise ValueError("encode.buckets: empty bucket list")
  target = math.log(height / width)
  return tuple(min(buckets, key=lambda b: abs(math.log(b[0] / b[1]) - target)))


def frame_indices(start: int, end: int, num_frames: int, stride: int) -> tuple[list[int], int]:
  """`num_frames` indices `stride` apart from `start` (stride reduced to fit); (indices, stride)."""
  length = end - start
  if length < num_frames:
    raise ValueError(f"span [{start}, {end}) has {length} frames < encode.num_frames {num_frames}")
  if num_frames > 1:
    stride = max(1, min(int(stride), (length - 1) // (num_frames - 1)))
  return [start + k * stride for k in range(num_frames)], stride


def resize_crop(frames: np.ndarray, bucket: tuple[int, int]) -> tuple[np.ndarray, int, int]:
  """Resizes RGB frames [N, H, W, 3] to cover `bucket` and center-crops; -> (frames, top, left)."""
  bh, bw = bucket
  h, w = frames.shape[1:3]
  scale = max(bh / h, bw / w)
  rh, rw = max(bh, int(math.ceil(h * scale - 1e-6))), max(bw, int(math.ceil(w * scale - 1e-6)))
  top, left = (rh - bh) // 2, (rw - bw) // 2
  interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
  out = np.stack([cv2.resize(f, (rw, rh), interpolation=interp)[top:top + bh, left:left + bw]
                  for f in frames])
  return out, top, left


def display_size(row: dict) -> tuple[int, int]:
  """(height, width) the clip is shown at (rotation applied; probe's display_* fields)."""
  return int(row.get("display_height", row["height"])), int(row.get("display_width", row["width"]))


def encode_clip(row: dict, frames_rgb: np.ndarray, stride: int, vae, text_encoder,
                ecfg) -> schema_lib.ClipRecord:
  """Pure core: RGB frames at display geometry + caption of one clip -> a ClipRecord."""
  height, width = display_size(row)
  bucket = pick_bucket(height, width, ecfg.buckets)
  crop, top, left = resize_crop(frames_rgb, bucket)
  x = crop.astype(np.float32) / 127.5 - 1.0
  bs = int(ecfg.batch_frames)
  latents = np.concatenate([np.asarray(vae.encode(x[i:i + bs]), np.float32)
                            for i in range(0, len(x), bs)])
  tokens, mask, pooled = text_encoder.encode_text([row.get("caption", "")])
  micro = dict(orig_height=height, orig_width=width, crop_top=int(top),
               crop_left=int(left), stride=int(stride), num_frames=int(len(frames_rgb)))
  return schema_lib.ClipRecord(
      latents=latents, text=np.asarray(tokens[0]), text_mask=np.asarray(mask[0]),
      pooled=np.asarray(pooled[0]), micro=micro, caption=row.get("caption", ""),
      clip_id=row["id"], source=row.get("relpath", row["path"]),
      span=(float(row["start_seconds"]), float(row["end_seconds"])),
      caption_source=row.get("caption_source", ""))


def decode_for_encode(row: dict, ecfg) -> tuple[np.ndarray, int]:
  """Decodes the frames of one clip that encode uses at display geometry (rotation and sample
  aspect applied, presentation-order indices as scene detection counted them);
  -> (RGB frames, stride used)."""
  idx, stride = frame_indices(int(row["start"]), int(row["end"]), int(ecfg.num_frames),
                              int(ecfg.stride))
  return video_io.read_display_frames(row["path"], idx, rotation=row.get("rotation"),
                                      sample_aspect=row.get("sample_aspect")), stride


def example_path(out_dir: str, clip_id: str) -> str:
  """Where the encoded example of a clip is cached between encode and shard writing."""
  return os.path.join(out_dir, "encoded", f"{clip_id}.example")


def save_example(path: str, data: bytes) -> None:
  """Atomic write of one encoded example."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "wb") as fh:
    fh.write(data)
  os.replace(tmp, path)


def write_bucket_shards(shard_dir: str, bucket: str, items: list[tuple[str, bytes, dict]],
                        target_shard_bytes: int) -> list[str]:
  """Writes one bucket's (clip id, example bytes, encode row) items, sorted by id."""
  prefix = "bucket-" + bucket
  with writer_lib.ShardWriter(shard_dir, prefix=prefix, manifest=False,
                              target_shard_bytes=target_shard_bytes, overwrite=True) as w:
    for _, data, row in sorted(items, key=lambda t: t[0]):
      w.write_encoded(data, bucket, list(row["latents_shape"]),
                      [int(row["micro"][k]) for k in MICRO_CONDITIONS],
                      row.get("caption_source", ""))
  return w.shards


ENCODERS_FILE = "_encoders.json"
EMPTY_PROMPT_FILE = "_empty_prompt.npz"


def save_encoders(out_dir: str, vae, text_encoder) -> None:
  """Caches the encoders' contract record and the empty prompt's encoding beside the encoded
  examples (every encode process writes the same bytes; the shard writer reads them)."""
  from stiv_jax.data import contract as contract_lib
  d = os.path.join(out_dir, "encoded")
  os.makedirs(d, exist_ok=True)
  record = json.dumps(contract_lib.encoders_record(vae, text_encoder), sort_keys=True)
  writer_lib.atomic_write_text(os.path.join(d, ENCODERS_FILE), record)
  tokens, mask, pooled = text_encoder.encode_text([""])
  writer_lib.write_npz(os.path.join(d, EMPTY_PROMPT_FILE), tokens=tokens, mask=mask,
                       pooled=pooled)


def load_encoders(out_dir: str) -> tuple[dict | None, tuple | None]:
  """(contract record, empty prompt arrays) saved by `save_encoders`, or (None, None)."""
  d = os.path.join(out_dir, "encoded")
  path = os.path.join(d, ENCODERS_FILE)
  if not os.path.exists(path):
    return None, None
  with open(path) as f:
    record = json.load(f)
  with np.load(os.path.join(d, EMPTY_PROMPT_FILE)) as z:
    empty = (z["tokens"], z["mask"], z["pooled"])
  return record, empty


def write_all_shards(out_dir: str, rows: list[dict], ecfg, metadata: dict | None = None) -> dict:
  """Builds `<out_dir>/shards` from the cached examples of `rows` (atomic: temp dir + rename)."""
  final = os.path.join(out_dir, "shards")
  tmp = final + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  groups: dict[str, list] = {}
  for r in rows:
    with open(example_path(out_dir, r["id"]), "rb") as fh:
      groups.setdefault(r["bucket"], []).append((r["id"], fh.read(), r))
  target = int(ecfg.target_shard_mb * (1 << 20))
  for bucket, items in sorted(groups.items()):
    write_bucket_shards(tmp, bucket, items, target)
  contract, empty = load_encoders(out_dir)
  manifest = writer_lib.write_manifest(tmp, metadata=metadata or {}, contract=contract,
                                       empty_prompt=empty)
  shutil.rmtree(final, ignore_errors=True)
  os.replace(tmp, final)
  return manifest
