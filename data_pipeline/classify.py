"""Stage 6, classify: file each caption into one category of a fixed list; a distribution report.

Backends: `KeywordClassifier` (offline rules: keyword lists per category, the default) and
`LLMClassifier` (any `LLM` — `complete(prompt) -> text` — asked to answer with one category
name; `LocalLLM`, data_pipeline/models/hf.py, runs a causal LM from a local folder).
"""
from __future__ import annotations

import collections
import os
import re
from typing import Protocol, Sequence

KEYWORDS = {
    "animals": "dog cat bird horse cow animal fish lion tiger elephant bear sheep monkey insect",
    "people": "man woman person people child boy girl crowd face dancer player family",
    "nature": "tree forest mountain river ocean sea beach sky cloud sunset flower field lake snow",
    "vehicles": "car truck bus train plane airplane boat ship bicycle bike motorcycle vehicle",
    "food": "food cooking kitchen plate meal fruit vegetable cake coffee drink pizza",
    "sports": "football soccer basketball tennis running swimming surfing skiing game match sport",
    "urban": "city street building traffic road bridge skyline downtown",
    "indoor": "room office table chair bed house living indoor",
    "art_and_animation": "cartoon animation animated painting drawing illustration 3d render",
    "abstract_shapes": "square circle triangle shape shapes abstract pattern geometric",
}


class LLM(Protocol):
  """A text-completion backend."""

  def complete(self, prompt: str) -> str:
    ...


class KeywordClassifier:
  """Rule-based classifier: the category with most keyword hits; `other` when none hit."""

  name = "keyword"

  def __init__(self, categories: Sequence[str]):
    self.categories = tuple(categories)
    unknown = [c for c in self.categories if c not in KEYWORDS and c != "other"]
    if unknown:
      raise ValueError(f"classify.categories: no keywords for {unknown}; use the llm backend "
                       f"or categories from {sorted(KEYWORDS)} + other")
    self.words = {c: set(KEYWORDS[c].split()) for c in self.categories if c in KEYWORDS}

  def classify(self, caption: str) -> str:
    tokens = re.findall(r"[a-z0-9]+", caption.lower())
    tokens += [t[:-1] for t in tokens if t.endswith("s")]  # plural -> singular, crudely
    hits = {c: sum(t in words for t in tokens) for c, words in self.words.items()}
    best = max(hits, key=lambda c: (hits[c], -self.categories.index(c))) if hits else None
    return best if best and hits[best] > 0 else "other"


def classification_prompt(caption: str, categories: Sequence[str]) -> str:
  """The instruction given to the LLM backend."""
  return ("Classify the video caption into exactly one category from this list: "
          f"{', '.join(categories)}.\nCaption: {caption}\nAnswer with the category name only.\n"
          "Category:")


def parse_category(answer: str, categories: Sequence[str]) -> str:
  """Pure core: the first listed category named in the LLM's answer; 'other' if none."""
  text = answer.lower()
  found = [(text.find(c.lower()), c) for c in categories if c.lower() in text]
  if found:
    return min(found)[1]
  return "other" if "other" in categories else categories[-1]


class LLMClassifier:
  """Asks an LLM for the category and parses its answer."""

  name = "llm"

  def __init__(self, llm: LLM, categories: Sequence[str]):
    self.llm, self.categories = llm, tuple(categories)

  def classify(self, caption: str) -> str:
    return parse_category(self.llm.complete(classification_prompt(caption, self.categories)),
                          self.categories)


from data_pipeline.models.hf import LocalLLM  # noqa: E402  (re-exported: the causal-LM backend)


def build_classifier(ccfg):
  """The classifier named by `classify.backend`."""
  if ccfg.backend == "keyword":
    return KeywordClassifier(ccfg.categories)
  if ccfg.backend == "llm":
    return LLMClassifier(LocalLLM(ccfg.llm_path, ccfg.llm_max_new_tokens,
                                  field="classify.llm_path"), ccfg.categories)
  raise ValueError(f"classify.backend: unknown backend {ccfg.backend!r}; expected keyword|llm")


def distribution_report(categories: Sequence[str], rows: list[dict]) -> dict:
  """Count and fraction of clips per category (every listed category present, 0 included)."""
  counts = collections.Counter(r["category"] for r in rows if r.get("category"))
  total = sum(counts.values())
  return {"total": total,
          "counts": {c: counts.get(c, 0) for c in categories},
          "fractions": {c: (counts.get(c, 0) / total if total else 0.0) for c in categories}}
