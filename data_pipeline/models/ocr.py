"""Text area from PP-OCRv4 text detection (DBNet), the ONNX model rapidocr-onnxruntime ships.

Per frame: the detector's text-probability map at `short_side` px (multiple of 32), binarised
at `thresh` (and dilated 2x2, as PaddleOCR), contours -> min-area boxes scored by the mean
probability inside (kept at >= `box_thresh`), each box grown by DB's unclip offset
(area * unclip_ratio / perimeter) and rasterised; the text area is the covered fraction of
the frame (overlaps counted once). Only the detector runs (no recognition).
"""
from __future__ import annotations

import importlib.metadata
import os

import cv2
import numpy as np

PACKAGE = "rapidocr-onnxruntime"
DET_MODEL = "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"


def shipped_det_model() -> str:
  """The PP-OCRv4 det ONNX file inside the installed rapidocr-onnxruntime package."""
  try:
    path = str(importlib.metadata.distribution(PACKAGE).locate_file(DET_MODEL))
  except importlib.metadata.PackageNotFoundError as err:
    raise ValueError(f"features.ocr_backend 'ppocr' needs the {PACKAGE}==1.4.4 package (its "
                     "ONNX models), which is not installed") from err
  if not os.path.isfile(path):
    raise ValueError(f"{PACKAGE}: model file {path} is missing")
  return path


def det_input_size(height: int, width: int, short_side: int) -> tuple[int, int]:
  """(h, w) with the short side near `short_side`, both multiples of 32 (the net's stride)."""
  scale = short_side / min(height, width)
  return (max(32, int(round(height * scale / 32)) * 32),
          max(32, int(round(width * scale / 32)) * 32))


def boxes_from_probability(prob: np.ndarray, thresh: float, box_thresh: float,
                           unclip_ratio: float, max_candidates: int = 1000) -> list[np.ndarray]:
  """Pure core: DB post-processing of one [H, W] probability map -> box corners [4, 2]."""
  bitmap = (prob > thresh).astype(np.uint8)
  bitmap = cv2.dilate(bitmap, np.ones((2, 2), np.uint8))
  contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
  out = []
  for contour in contours[:max_candidates]:
    rect = cv2.minAreaRect(contour)
    (cx, cy), (w, h), angle = rect
    if min(w, h) < 3:
      continue
    mask = np.zeros_like(bitmap)
    cv2.fillPoly(mask, [contour.reshape(-1, 2)], 1)
    if float(prob[mask.astype(bool)].mean()) < box_thresh:
      continue
    grow = w * h * unclip_ratio / (2 * (w + h))  # DB's unclip distance for this box
    box = cv2.boxPoints(((cx, cy), (w + 2 * grow, h + 2 * grow), angle))
    out.append(box.astype(np.float32))
  return out


class TextAreaDetector:
  """RGB uint8 frames [N, H, W, 3] -> mean fraction of the frame covered by detected text."""

  name = "ppocr_v4_det"

  def __init__(self, model_path: str = "", short_side: int = 320, thresh: float = 0.3,
               box_thresh: float = 0.5, unclip_ratio: float = 1.6, threads: int = 1):
    import onnxruntime as ort
    self.model_path = model_path or shipped_det_model()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    self.session = ort.InferenceSession(self.model_path, sess_options=opts,
                                        providers=["CPUExecutionProvider"])
    self.input_name = self.session.get_inputs()[0].name
    self.short_side, self.thresh = int(short_side), float(thresh)
    self.box_thresh, self.unclip_ratio = float(box_thresh), float(unclip_ratio)

  def probability(self, frames_rgb: np.ndarray) -> np.ndarray:
    """Text-probability maps [N, h, w] at the detector's input size (one batched call)."""
    frames_rgb = np.asarray(frames_rgb)
    h, w = det_input_size(frames_rgb.shape[1], frames_rgb.shape[2], self.short_side)
    # PaddleOCR models take BGR, scaled to [-1, 1] (mean 0.5, std 0.5), NCHW.
    x = np.stack([cv2.resize(np.ascontiguousarray(f[..., ::-1]), (w, h),
                             interpolation=cv2.INTER_LINEAR) for f in frames_rgb])
    x = (x.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)
    return self.session.run(None, {self.input_name: x})[0][:, 0]

  def areas(self, frames_rgb: np.ndarray) -> list[float]:
    """Per-frame covered fraction."""
    out = []
    for prob in self.probability(frames_rgb):
      mask = np.zeros(prob.shape, np.uint8)
      boxes = boxes_from_probability(prob, self.thresh, self.box_thresh, self.unclip_ratio)
      if boxes:
        cv2.fillPoly(mask, [np.round(b).astype(np.int32) for b in boxes], 1)
      out.append(float(mask.mean()))
    return out

  def __call__(self, frames_rgb: np.ndarray) -> float:
    return float(np.mean(self.areas(frames_rgb)))
