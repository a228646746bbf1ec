"""Stage 7, DSG-Video: caption hallucination check (spec section 4).

A question generator turns a caption into yes/no questions, one per object it mentions; a
VQA backend answers each question on N uniformly sampled frames; an object is hallucinated
when no frame answers yes. Only objects the VQA backend can check count: DSG-Video_i =
hallucinated / checked objects; DSG-Video_s = captions with a hallucinated object / captions
with a checked object. A caption with no checkable object is counted as such, and the report
says how many captions were checked ("K of N checkable"); with none, the metrics are null,
never a silent 0.0. Caption richness = unique objects per caption (checkable or not).

Backends: `RuleBasedQuestionGenerator` (English noun phrases by a small chunker: function
words and verbs split the caption, the last word of a chunk is its head noun, earlier words
its modifiers), `LLMQuestionGenerator` (any `LLM`, classify.py), `SyntheticVQA` (colors and
shapes by pixels: only the synthetic corpus's world; other objects are not checkable) and
`models.vlm.VLMYesNo` (a local VLM's yes/no answer per frame).
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

  object: str             # e.g. "red square", "blue sky"
  text: str               # e.g. "Is there a red square in the frame?"
  color: str | None = None
  shape: str | None = None
  head: str | None = None  # head noun, singular ("square", "sky")


class QuestionGenerator(Protocol):
  def questions(self, caption: str) -> list[Question]:
    ...


class VQA(Protocol):
  def can_answer(self, question: Question) -> bool:
    ...

  def answer(self, frame_rgb: np.ndarray, question: Question) -> bool:
    ...


# Words that are never part of a noun phrase: they split a caption into chunks.
_SPLIT = frozenset("""
a an the this that these those some any each every all both no another its their his her
my your our one's and or but nor so yet with without of in on at to into onto from by for
over under above below behind beside besides between among through across along around
near next toward towards against past off out up down away back while as than then there
here where when which who whom whose what next is are was were be been being am has have had
do does did can could will would shall should may might must it they he she we you i me
him them us very too also just only not left right forward backward slowly quickly fast
slow together again still camera shot video scene image frame view picture
""".split())
_NUMBERS = frozenset("""
two three four five six seven eight nine ten several many few multiple couple pair group
""".split())
_VERB_SUFFIXES = ("ing",)
_COMMON_VERBS = frozenset("""
moves move runs run walks walk sits sit stands stand flies fly swims swim jumps jump looks
look rides ride plays play holds hold shows show appears appear drives drive rolls roll
falls fall eats eat talks talk dances dance grows grow shines shine floats float spins spin
covered filled surrounded made seen shown lit
""".split())
_ADJ_SUFFIXES = ("ly",)
_FILLERS = frozenset("small big large tiny little bright dark light pale".split())


def singular(word: str) -> str:
  """A crude English singular (dogs -> dog, boxes -> box, berries -> berry, grass stays)."""
  if len(word) > 3 and word.endswith("ies"):
    return word[:-3] + "y"
  if len(word) > 3 and word.endswith(("ches", "shes", "xes", "sses")):
    return word[:-2]
  if len(word) > 2 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
    return word[:-1]
  return word


def noun_phrases(caption: str) -> list[tuple[list[str], str]]:
  """Pure core: (modifiers, head noun) of each noun phrase of an English caption."""
  words = re.findall(r"[a-z]+(?:-[a-z]+)?", caption.lower())
  chunks, cur = [], []
  for w in words:
    if (w in _SPLIT or w in _COMMON_VERBS or w.endswith(_VERB_SUFFIXES) and len(w) > 4
        or w.endswith(_ADJ_SUFFIXES) and len(w) > 4):
      if cur:
        chunks.append(cur)
      cur = []
    else:
      cur.append(w)
  if cur:
    chunks.append(cur)
  out = []
  for chunk in chunks:
    mods = [w for w in chunk[:-1] if w not in _NUMBERS and w not in _FILLERS]
    head = chunk[-1]
    if head in _NUMBERS or head.endswith(("ish", "ful", "ous")):  # no noun in the chunk
      continue
    out.append((mods, singular(head)))
  return out


class RuleBasedQuestionGenerator:
  """One question per noun phrase ("blue sky", "green plant", "red square"); a color
  modifier becomes the question's `color`, a known shape head its `shape`."""

  def __init__(self, colors: Sequence[str], shapes: Sequence[str]):
    self.colors, self.shapes = set(colors), set(shapes)

  def questions(self, caption: str) -> list[Question]:
    out, seen = [], set()
    for mods, head in noun_phrases(caption):
      color = next((m for m in reversed(mods) if m in self.colors), None)
      obj = " ".join(mods + [head])
      if obj in seen:
        continue
      seen.add(obj)
      out.append(Question(object=obj, text=f"Is there a {obj} in the frame?", color=color,
                          shape=head if head in self.shapes else None, head=head))
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

  def can_answer(self, question: Question) -> bool:
    """Only shapes (optionally with a palette color) exist in this backend's world."""
    return question.shape is not None

  def answer(self, frame_rgb: np.ndarray, question: Question) -> bool:
    if not self.can_answer(question):
      raise ValueError(f"SyntheticVQA cannot check {question.object!r} (not a shape)")
    for color, shape in self.objects(frame_rgb):
      if (question.color in (None, color)) and (question.shape in (None, shape)):
        return True
    return False


def evaluate_caption(caption: str, frames_rgb: np.ndarray, qgen: QuestionGenerator,
                     vqa: VQA) -> dict:
  """Pure core: questions, per-frame answers and hallucinated objects for one caption.

  Objects the VQA backend cannot check are listed (checked False) and not answered; a VQA
  with `answer_batch(frames, questions) -> [Q][F] bools` answers all at once."""
  questions = qgen.questions(caption)
  checkable = [q for q in questions if vqa.can_answer(q)]
  if checkable and hasattr(vqa, "answer_batch"):
    answers = vqa.answer_batch(frames_rgb, checkable)
  else:
    answers = [[bool(vqa.answer(f, q)) for f in frames_rgb] for q in checkable]
  by_q = {id(q): [bool(a) for a in ans] for q, ans in zip(checkable, answers)}
  objects = []
  for q in questions:
    ans = by_q.get(id(q))
    objects.append(dict(object=q.object, question=q.text, checked=ans is not None,
                        answers=ans or [], hallucinated=ans is not None and not any(ans)))
  n_bad = sum(o["hallucinated"] for o in objects)
  return dict(dsg_objects=objects, dsg_num_objects=len(checkable),
              dsg_num_unchecked=len(questions) - len(checkable),
              dsg_num_unique_objects=len({q.object for q in questions}),
              dsg_num_hallucinated=n_bad, dsg_hallucinated=n_bad > 0,
              dsg_checkable=bool(checkable))


def dsg_report(rows: list[dict]) -> dict:
  """DSG-Video_i / _s over the checkable captions, and caption richness over all."""
  n_obj = sum(r["dsg_num_objects"] for r in rows)
  n_bad = sum(r["dsg_num_hallucinated"] for r in rows)
  n_cap = sum(bool(r.get("dsg_checkable", r["dsg_num_objects"] > 0)) for r in rows)
  n_cap_bad = sum(bool(r["dsg_hallucinated"]) for r in rows)
  unique = sum(r.get("dsg_num_unique_objects", r["dsg_num_objects"]) for r in rows)
  return dsg_metrics(n_obj, n_bad, n_cap, n_cap_bad, total_captions=len(rows),
                     unique_objects=unique)


def dsg_metrics(n_obj: int, n_bad: int, n_cap: int, n_cap_bad: int, *,
                total_captions: int | None = None, unique_objects: int | None = None) -> dict:
  """DSG-Video_i and DSG-Video_s from the totals (None when nothing was checkable)."""
  total = n_cap if total_captions is None else total_captions
  out = {"dsg_video_i": n_bad / n_obj if n_obj else None,
         "dsg_video_s": n_cap_bad / n_cap if n_cap else None,
         "objects": n_obj, "hallucinated_objects": n_bad, "captions": total,
         "checkable_captions": n_cap, "hallucinated_captions": n_cap_bad,
         "checked": f"{n_cap} of {total} checkable"}
  if unique_objects is not None:
    out["caption_richness"] = unique_objects / total if total else None
  return out


def build_question_generator(dcfg):
  """The generator named by `dsg.question_backend`."""
  if dcfg.question_backend == "rules":
    return RuleBasedQuestionGenerator(list(dcfg.palette.keys()), dcfg.shapes)
  if dcfg.question_backend == "llm":
    from data_pipeline.models.hf import LocalLLM
    return LLMQuestionGenerator(LocalLLM(dcfg.llm_path, dcfg.llm_max_new_tokens,
                                         field="dsg.llm_path"))
  raise ValueError(f"dsg.question_backend: unknown {dcfg.question_backend!r}; expected rules|llm")


def build_vqa(dcfg) -> VQA:
  """The VQA backend named by `dsg.vqa_backend`: 'synthetic', 'vlm' (dsg.vlm_path) or
  'module:factory(dcfg)'."""
  if dcfg.vqa_backend == "synthetic":
    return SyntheticVQA(dcfg)
  if dcfg.vqa_backend == "vlm":
    from data_pipeline.models import hf
    return hf.VLMYesNo(hf.LocalVLM(dcfg.vlm_path, 1, field="dsg.vlm_path"))
  if ":" in dcfg.vqa_backend:
    mod, fn = dcfg.vqa_backend.split(":", 1)
    return getattr(importlib.import_module(mod), fn)(dcfg)
  raise ValueError(f"dsg.vqa_backend: unknown {dcfg.vqa_backend!r}; expected "
                   "synthetic|vlm|module:fn")
