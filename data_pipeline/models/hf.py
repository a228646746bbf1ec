"""Language and vision-language models from LOCAL transformers folders (never downloaded).

`LocalLLM`: a causal LM (AutoModelForCausalLM + its tokenizer), greedy, batched with left
padding: classification and DSG question generation. `LocalVLM`: an image-text-to-text model
(AutoModelForImageTextToText + AutoProcessor and its chat template): captions from several
frames in one prompt, and yes/no answers per (frame, question) read from the next-token
logits of "yes" vs "no" (one batched forward, no sampling).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np


def _check_folder(path: str, field: str) -> None:
  if not path or not os.path.isdir(path):
    raise ValueError(f"{field}: {path!r} is not a local model folder")
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise ValueError(f"{field}: {path} has no config.json (expected a transformers "
                     "save_pretrained folder)")


def _chunks(items: Sequence, n: int):
  for i in range(0, len(items), max(1, n)):
    yield items[i:i + max(1, n)]


class LocalLLM:
  """A causal LM from a local folder; `complete(prompt)` / `complete_batch(prompts)`."""

  def __init__(self, path: str, max_new_tokens: int = 8, batch_size: int = 8,
               field: str = "llm_path"):
    _check_folder(path, field)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    self.torch = torch
    self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    self.tokenizer.padding_side = "left"
    if self.tokenizer.pad_token is None:
      self.tokenizer.pad_token = self.tokenizer.eos_token
    self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    self.max_new_tokens, self.batch_size = int(max_new_tokens), int(batch_size)
    self.path = path

  def complete_batch(self, prompts: Sequence[str]) -> list[str]:
    """Greedy continuations of `prompts` (batched, left-padded)."""
    out = []
    for chunk in _chunks(list(prompts), self.batch_size):
      enc = self.tokenizer(list(chunk), return_tensors="pt", padding=True)
      with self.torch.no_grad():
        ids = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)
      out.extend(self.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:],
                                             skip_special_tokens=True))
    return [str(o) for o in out]

  def complete(self, prompt: str) -> str:
    return self.complete_batch([prompt])[0]


class LocalVLM:
  """An image-text-to-text model from a local folder (processor with a chat template)."""

  def __init__(self, path: str, max_new_tokens: int = 64, batch_size: int = 8,
               field: str = "vlm_path"):
    _check_folder(path, field)
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    self.torch = torch
    self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    tok = self.processor.tokenizer
    tok.padding_side = "left"
    if tok.pad_token is None:
      tok.pad_token = tok.eos_token
    self.model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()
    self.max_new_tokens, self.batch_size = int(max_new_tokens), int(batch_size)
    self.yes_ids = self._first_ids(("yes", "Yes", " yes", " Yes"))
    self.no_ids = self._first_ids(("no", "No", " no", " No"))
    if not self.yes_ids or not self.no_ids:
      raise ValueError(f"{field}: {path}: the tokenizer has no 'yes' / 'no' token")
    self.path = path

  def _first_ids(self, words) -> list[int]:
    tok = self.processor.tokenizer
    ids = set()
    for w in words:
      enc = tok.encode(w, add_special_tokens=False)
      if enc and enc[0] != tok.unk_token_id:
        ids.add(int(enc[0]))
    return sorted(ids)

  def _inputs(self, images: Sequence[Sequence[np.ndarray]], texts: Sequence[str]):
    from PIL import Image
    prompts = []
    for ims, text in zip(images, texts):
      content = [{"type": "image"} for _ in ims] + [{"type": "text", "text": text}]
      prompts.append(self.processor.apply_chat_template(
          [{"role": "user", "content": content}], add_generation_prompt=True))
    flat = [Image.fromarray(np.asarray(im)) for ims in images for im in ims]
    return self.processor(images=flat, text=prompts, return_tensors="pt", padding=True)

  def generate(self, images: Sequence[Sequence[np.ndarray]], texts: Sequence[str]) -> list[str]:
    """One greedy answer per (images, text) prompt, batched."""
    out = []
    pairs = list(zip(images, texts))
    for chunk in _chunks(pairs, self.batch_size):
      enc = self._inputs([c[0] for c in chunk], [c[1] for c in chunk])
      with self.torch.no_grad():
        ids = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                  pad_token_id=self.processor.tokenizer.pad_token_id)
      out.extend(self.processor.batch_decode(ids[:, enc["input_ids"].shape[1]:],
                                             skip_special_tokens=True))
    return [str(o).strip() for o in out]

  def yes_no(self, frames: Sequence[np.ndarray], questions: Sequence[str]) -> list[bool]:
    """For each (frame, question) pair: is 'yes' likelier than 'no' as the next token."""
    answers = []
    pairs = list(zip(frames, questions))
    for chunk in _chunks(pairs, self.batch_size):
      enc = self._inputs([[f] for f, _ in chunk], [f"{q} Answer yes or no." for _, q in chunk])
      with self.torch.no_grad():
        logits = self.model(**enc).logits[:, -1].float()
      yes = logits[:, self.yes_ids].max(dim=-1).values
      no = logits[:, self.no_ids].max(dim=-1).values
      answers.extend(bool(v) for v in (yes > no).tolist())
    return answers


class VLMYesNo:
  """DSG-Video VQA backend: a local VLM answers every question on every sampled frame."""

  name = "vlm"

  def __init__(self, vlm: LocalVLM):
    self.vlm = vlm

  def can_answer(self, question) -> bool:
    return True

  def answer(self, frame_rgb: np.ndarray, question) -> bool:
    return self.vlm.yes_no([frame_rgb], [question.text])[0]

  def answer_batch(self, frames_rgb: np.ndarray, questions) -> list[list[bool]]:
    """[Q][F] answers from one batched call over all (question, frame) pairs."""
    frames = list(frames_rgb)
    flat = self.vlm.yes_no([f for _ in questions for f in frames],
                           [q.text for q in questions for _ in frames])
    n = len(frames)
    return [flat[i * n:(i + 1) * n] for i in range(len(questions))]
