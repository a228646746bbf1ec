"""Stage 7, DSG-Video: caption hallucination check (spec section 4).

A question generator turns a caption into yes/no questions, one per object it mentions; a
VQA backend answers each question on N uniformly sampled frames; an object is hallucinated
when no frame answers yes. DSG-Video_i = hallucinated objects / all objects; DSG-Video_s =
captions with a hallucinated object / all captions.

Offline backends: `RuleBasedQuestionGenerator` (objects = shape nouns with their color
adjective, from the configured vocabulary) and `SyntheticVQA` (answers questions about
colors and shapes by looking at pixels; it only knows the synthetic corpus's world).
`LLMQuestionGenerator` wraps any `LLM` (see classify.py) for real captions.
"""
from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Protocol, Sequence

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class Question:
  """One yes/no question about one object of a caption."""

  object: str             # e.g. "red square"
  text: str               # e.g. "Is there a red square?"
  color: str | None = None
  shape: str | None = None


class QuestionGenerator(Protocol):
  def questions(self, caption: str) -> list[Question]:
    ...


class VQA(Protocol):
  def answer(self, frame_rgb: np.ndarray, question: Question) -> bool:
    ...


class RuleBasedQuestionGenerator:
  """Objects = each shape noun, with the color adjective right before it (fillers skipped)."""

  FILLERS = frozenset("small big large tiny little bright dark light pale".split())

  def __init__(self, colors: Sequence[str], shapes: Sequence[str]):
    self.colors, self.shapes = set(colors), set(shapes)

  def questions(self, caption: str) -> list[Question]:
    words = re.findall(r"[a-z]+", caption.lower())
    out = []
    for i, w in enumerate(words):
      shape = w[:-1] if w.endswith("s") and w[:-1] in self.shapes else w
      if shape not in self.shapes:
        continue
      color, j = None, i - 1
      while j >= 0 and words[j] in self.FILLERS:
        j -= 1
      if j >= 0 and words[j] in self.colors:
        color = words[j]
      obj = f"{color} {shape}" if color else shape
      out.append(Question(object=obj, text=f"Is there a {obj} in the frame?", color=color,
                          shape=shape))
    return out


class LLMQuestionGenerator:
  """Asks an LLM for 'object | question' lines (one per object in the caption)."""

  def __init__(self, llm):
    self.llm = llm

  def questions(self, caption: str) -> list[Question]:
    prompt = ("List every object mentioned in the caption, one per line, as "
              "'object | yes/no question asking whether the object is visible'.\n"
              f"Caption: {caption}\nLines:\n")
    out = []
    for line in self.llm.complete(prompt).splitlines():
      if "|" in line:
        obj, q = (p.strip() for p in line.split("|", 1))
        if obj and q:
          out.append(Question(object=obj, text=q))
    return out


class SyntheticVQA:
  """Pixel-level VQA for the synthetic corpus: finds blobs of a palette color and their shape.

  A blob's shape comes from its fill ratio (area / bounding-box area: square ~1, circle ~0.79,
  triangle ~0.5) and bounding-box aspect. Knows nothing beyond the configured colors/shapes.
  """

  def __init__(self, dcfg):
    self.cfg = dcfg
    self.names = list(dcfg.palette.keys())
    self.rgb = np.array([dcfg.palette[n] for n in self.names], np.float32)

  def objects(self, frame_rgb: np.ndarray) -> set[tuple[str, str | None]]:
    """(color, shape or None) of every blob in the frame."""
    f = np.asarray(frame_rgb, np.float32)
    dist = np.linalg.norm(f[..., None, :] - self.rgb, axis=-1)  # [H, W, K]
    nearest, close = dist.argmin(-1), dist.min(-1) < self.cfg.color_tolerance
    found = set()
    total = f.shape[0] * f.shape[1]
    for k, name in enumerate(self.names):
      mask = ((nearest == k) & close).astype(np.uint8)
      if mask.sum() < self.cfg.min_object_area:
        continue
      n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
      for x, y, w, h, area in stats[1:n]:
        if area < self.cfg.min_object_area or area > self.cfg.max_object_area_frac * total:
          continue
        found.add((name, self._shape(w, h, area)))
    return found

  def _shape(self, w: int, h: int, area: int) -> str | None:
    if max(w, h) > self.cfg.max_aspect * min(w, h):
      return None
    fill = area / float(w * h)
    if fill >= self.cfg.square_min_fill:
      return "square"
    if self.cfg.circle_fill[0] <= fill < self.cfg.circle_fill[1]:
      return "circle"
    if self.cfg.triangle_fill[0] <= fill < self.cfg.triangle_fill[1]:
      return "triangle"
    return None

  def answer(self, frame_rgb: np.ndarray, question: Question) -> bool:
    if question.color is None and question.shape is None:
      return False  # not a question this backend understands
    for color, shape in self.objects(frame_rgb):
      if (question.color in (None, color)) and (question.shape in (None, shape)):
        return True
    return False


def evaluate_caption(caption: str, frames_rgb: np.ndarray, qgen: QuestionGenerator,
                     vqa: VQA) -> dict:
  """Pure core: questions, per-frame answers and hallucinated objects for one caption."""
  objects = []
  for q in qgen.questions(caption):
    answers = [bool(vqa.answer(f, q)) for f in frames_rgb]
    objects.append(dict(object=q.object, question=q.text, answers=answers,
                        hallucinated=not any(answers)))
  n_bad = sum(o["hallucinated"] for o in objects)
  return dict(dsg_objects=objects, dsg_num_objects=len(objects), dsg_num_hallucinated=n_bad,
              dsg_hallucinated=n_bad > 0)


def dsg_report(rows: list[dict]) -> dict:
  """DSG-Video_i and DSG-Video_s over evaluated captions."""
  n_obj = sum(r["dsg_num_objects"] for r in rows)
  n_bad = sum(r["dsg_num_hallucinated"] for r in rows)
  n_cap = len(rows)
  n_cap_bad = sum(bool(r["dsg_hallucinated"]) for r in rows)
  return dsg_metrics(n_obj, n_bad, n_cap, n_cap_bad)


def dsg_metrics(n_obj: int, n_bad: int, n_cap: int, n_cap_bad: int) -> dict:
  """DSG-Video_i and DSG-Video_s from the four totals."""
  return {"dsg_video_i": n_bad / n_obj if n_obj else 0.0,
          "dsg_video_s": n_cap_bad / n_cap if n_cap else 0.0,
          "objects": n_obj, "hallucinated_objects": n_bad, "captions": n_cap,
          "hallucinated_captions": n_cap_bad}


def build_question_generator(dcfg):
  """The generator named by `dsg.question_backend`."""
  if dcfg.question_backend == "rules":
    return RuleBasedQuestionGenerator(list(dcfg.palette.keys()), dcfg.shapes)
  if dcfg.question_backend == "llm":
    from data_pipeline.classify import LocalLLM
    return LLMQuestionGenerator(LocalLLM(dcfg.llm_path))
  raise ValueError(f"dsg.question_backend: unknown {dcfg.question_backend!r}; expected rules|llm")


def build_vqa(dcfg) -> VQA:
  """The VQA backend named by `dsg.vqa_backend` ('synthetic' or 'module:factory(dcfg)')."""
  if dcfg.vqa_backend == "synthetic":
    return SyntheticVQA(dcfg)
  if ":" in dcfg.vqa_backend:
    mod, fn = dcfg.vqa_backend.split(":", 1)
    return getattr(importlib.import_module(mod), fn)(dcfg)
  raise ValueError(f"dsg.vqa_backend: unknown {dcfg.vqa_backend!r}; expected synthetic|module:fn")
