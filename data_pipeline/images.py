"""`stiv-prep images`: a folder of images (+ caption sidecars) -> single-frame latent shards.

Same contract and buckets as the video pipeline (data_pipeline/encode.py): each image is turned
upright (EXIF orientation), assigned the `encode.buckets` resolution nearest in aspect ratio,
resized to cover it and center-cropped, encoded by `encode.vae`, its caption by `encode.text`,
and written as a [1, H, W, C] record (micro-conditions: the upright size, the crop, stride 1,
1 frame) into OUT/shards with the manifest's latent contract, so `experiments/configs/t2i.py`
trains from it. Captions come from `<stem>.txt` (the whole file) or `<stem>.json`
({"caption": ...}) next to the image; an image without one is rejected (`no_caption`) unless
`caption.fallback` names a captioner ('stub' or 'vlm'). Unreadable images are rejected with the
error; the rest completes. A rerun rewrites the shards (atomic: a temp folder, then a rename).
"""
from __future__ import annotations

import collections
import json
import os
import shutil
from typing import Any

import numpy as np

from data_pipeline import caption as caption_lib
from data_pipeline import encode as encode_lib
from data_pipeline import manifest as mf
from data_pipeline import probe as probe_lib
from stiv_jax.data import contract as contract_lib
from stiv_jax.data import schema as schema_lib
from stiv_jax.data import writer as writer_lib

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_SUFFIXES = (".txt", ".json")


def read_image(path: str) -> np.ndarray:
  """uint8 RGB [H, W, 3], turned upright by its EXIF orientation."""
  from PIL import Image, ImageOps
  with Image.open(path) as im:
    return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def sidecar_caption(path: str) -> str:
  """The caption next to an image ('' when there is none); a malformed sidecar is an error."""
  stem = os.path.splitext(path)[0]
  for suffix in CAPTION_SUFFIXES:
    side = stem + suffix
    if not os.path.exists(side):
      continue
    with open(side, encoding="utf-8") as f:
      text = f.read()
    if suffix == ".txt":
      return text.strip()
    try:
      doc = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"{side}: caption sidecar is not JSON ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("caption"), str):
      raise ValueError(f"{side}: expected an object with a 'caption' string")
    return doc["caption"].strip()
  return ""


def fallback_captioner(ccfg) -> Any:
  """The captioner `caption.fallback` names, or None ('' = reject images without captions)."""
  kind = ccfg.get("fallback", "")
  if not kind or kind == "sidecar":
    return None
  if kind == "stub":
    return caption_lib.StubCaptioner()
  if kind == "vlm":
    return caption_lib.VLMCaptioner(ccfg.vlm_path, ccfg.vlm_max_new_tokens)
  raise ValueError(f"caption.fallback: {kind!r} unknown for images; expected '', 'stub' or "
                   "'vlm'")


def caption_image(path: str, image: np.ndarray, ccfg, fallback) -> tuple[str, str]:
  """(caption, its source) of one image; ('', '') when it has none and no fallback is set."""
  text = sidecar_caption(path)
  if text:
    return text, "sidecar"
  if fallback is None:
    return "", ""
  return fallback.caption(image[None], ccfg.prompt, {"id": path, "path": path}).strip(), \
      fallback.name


def image_record(row: dict, image: np.ndarray, vae, text_out: tuple, ecfg) -> schema_lib.ClipRecord:
  """Pure core: one upright RGB image + its encoded caption -> a single-frame ClipRecord."""
  height, width = image.shape[:2]
  bucket = encode_lib.pick_bucket(height, width, ecfg.buckets)
  crop, top, left = encode_lib.resize_crop(image[None], bucket)
  latents = np.asarray(vae.encode(crop.astype(np.float32) / 127.5 - 1.0), np.float32)
  tokens, mask, pooled = text_out
  micro = dict(orig_height=int(height), orig_width=int(width), crop_top=int(top),
               crop_left=int(left), stride=1, num_frames=1)
  return schema_lib.ClipRecord(
      latents=latents, text=tokens, text_mask=mask, pooled=pooled, micro=micro,
      caption=row["caption"], clip_id=row["id"], source=row["relpath"], span=(0.0, 0.0),
      caption_source=row["caption_source"])


def list_images(input_dir: str) -> list[str]:
  """Relative paths of the images under input_dir, sorted (a clear error if there are none)."""
  rels = probe_lib.list_videos(input_dir, IMAGE_EXTENSIONS)
  if not rels:
    raise FileNotFoundError(f"--input: {input_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
  return rels


def prepare_images(input_dir: str, out_dir: str, cfg) -> dict[str, Any]:
  """Runs the whole image path; writes OUT/images.jsonl, OUT/shards and OUT/images_report.json."""
  from stiv_jax.models.encoders import build_text_encoder, build_vae
  ecfg = cfg.encode
  rels = list_images(input_dir)
  fallback = fallback_captioner(cfg.caption)
  rows, images = [], {}
  for rel in rels:
    path = os.path.join(os.path.abspath(input_dir), rel)
    row = {"id": probe_lib.video_id(rel), "relpath": rel, "path": path, "reject": None}
    try:
      image = read_image(path)
      text, source = caption_image(path, image, cfg.caption, fallback)
    except Exception as e:  # PIL raises many types for broken files
      rows.append({**row, "reject": "undecodable", "error": f"{path}: {type(e).__name__}: {e}"})
      continue
    h, w = image.shape[:2]
    row.update(height=h, width=w, caption=text, caption_source=source)
    if not text:
      row.update(reject="no_caption", error=f"{path}: no caption sidecar "
                 f"({'/'.join(CAPTION_SUFFIXES)}) and caption.fallback is ''")
    elif min(h, w) < int(cfg.filter.min_height):
      row.update(reject="too_small", error=f"{path}: {w}x{h} below filter.min_height")
    else:
      images[row["id"]] = image
    rows.append(row)
  kept = [r for r in rows if not r["reject"]]
  if not kept:
    raise ValueError(f"--input: none of the {len(rows)} images of {input_dir} can be used; "
                     f"reasons: {dict(collections.Counter(r['reject'] for r in rows))}")
  vae, text_encoder = build_vae(ecfg.vae), build_text_encoder(ecfg.text)
  tokens, mask, pooled = text_encoder.encode_text([r["caption"] for r in kept])
  final = os.path.join(out_dir, "shards")
  tmp = final + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  with writer_lib.ShardWriter(
      tmp, prefix="images", target_shard_bytes=int(ecfg.target_shard_mb * (1 << 20)),
      metadata={"source": "data_pipeline.images", "vae": ecfg.vae.to_dict(),
                "text": ecfg.text.to_dict()},
      contract=contract_lib.encoders_record(vae, text_encoder),
      empty_prompt=text_encoder.encode_text([""])) as w:
    for i, row in enumerate(kept):
      rec = image_record(row, images[row["id"]], vae, (tokens[i], mask[i], pooled[i]), ecfg)
      row.update(bucket=rec.bucket, latents_shape=list(rec.latents.shape), micro=rec.micro)
      w.write(rec)
  shutil.rmtree(final, ignore_errors=True)
  os.replace(tmp, final)
  mf.write_jsonl_atomic(os.path.join(out_dir, "images.jsonl"), rows)
  report = {"stage": "images", "images": len(rows), "records": len(kept),
            "rejected_by_reason": dict(sorted(collections.Counter(
                r["reject"] for r in rows if r["reject"]).items())),
            "buckets": {k: v["count"] for k, v in w.written_manifest["buckets"].items()},
            "captions": w.written_manifest["captions"], "shards": final}
  mf.write_json_atomic(os.path.join(out_dir, "images_report.json"), report)
  return report
