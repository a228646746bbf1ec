"""T5-style SentencePiece tokenizer (local .model file) and an offline trainer for captions.

T5 conventions: pieces of the caption, then </s> (eos), right-padded with <pad>; no BOS.
Truncation keeps the first max_length - 1 pieces so the EOS is always present, which the text
encoder pools. Train: `python -m stiv_jax.models.encoders.tokenizer train --captions=FILE
--output=PREFIX --vocab-size=N` writes PREFIX.model and PREFIX.vocab.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np
import sentencepiece as spm

# T5's special ids: <pad>=0, </s>=1, <unk>=2, no <s>.
T5_SPECIAL_IDS = dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1)


class SentencePieceTokenizer:
  """Captions -> (ids [B, L] int32, mask [B, L] bool) with a fixed max length."""

  def __init__(self, model_path: str, max_length: int, pad_id: int | None = None):
    if not model_path or not os.path.isfile(model_path):
      raise FileNotFoundError(f"tokenizer: SentencePiece model not found: {model_path!r}")
    if max_length < 2:
      raise ValueError(f"text.max_length: must be >= 2 (a token and </s>), got {max_length}")
    self.path = model_path
    self.sp = spm.SentencePieceProcessor()
    try:
      self.sp.Load(model_path)
    except (OSError, RuntimeError) as e:
      raise ValueError(f"tokenizer: {model_path} is not a SentencePiece model ({e})") from e
    self.max_length = int(max_length)
    self.vocab_size = int(self.sp.GetPieceSize())
    self.eos_id = int(self.sp.eos_id())
    if self.eos_id < 0:
      raise ValueError(f"tokenizer: {model_path} defines no </s> (eos) piece; the text encoder "
                       "pools the EOS token")
    self.pad_id = int(self.sp.pad_id()) if pad_id is None else int(pad_id)
    if self.pad_id < 0:
      raise ValueError(f"tokenizer: {model_path} defines no <pad> piece; set text.pad_id")

  def encode_ids(self, caption: str) -> list[int]:
    """Ids of one caption, truncated to max_length - 1, plus </s>."""
    return list(self.sp.EncodeAsIds(caption))[: self.max_length - 1] + [self.eos_id]

  def __call__(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(captions, str):
      raise TypeError("tokenizer: expected a sequence of captions, got one str")
    ids = np.full((len(captions), self.max_length), self.pad_id, np.int32)
    mask = np.zeros((len(captions), self.max_length), bool)
    for i, caption in enumerate(captions):
      if not isinstance(caption, str):
        raise TypeError(f"tokenizer: caption {i} is {type(caption).__name__}, expected str")
      row = self.encode_ids(caption)
      ids[i, : len(row)] = row
      mask[i, : len(row)] = True
    return ids, mask

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ids (stops at </s>; for debugging)."""
    ids = list(ids)
    if self.eos_id in ids:
      ids = ids[: ids.index(self.eos_id)]
    return self.sp.DecodeIds([int(i) for i in ids if i != self.pad_id])


def train_tokenizer(captions: str, output: str, vocab_size: int, *,
                    model_type: str = "unigram", character_coverage: float = 1.0,
                    hard_vocab_limit: bool = True) -> str:
  """Trains a T5-convention SentencePiece model on a caption file (one per line) -> .model path."""
  if not os.path.isfile(captions):
    raise FileNotFoundError(f"train-tokenizer: captions file not found: {captions}")
  with open(captions, encoding="utf-8") as f:
    if not any(line.strip() for line in f):
      raise ValueError(f"train-tokenizer: {captions} has no non-empty caption lines")
  if vocab_size < 8:
    raise ValueError(f"train-tokenizer: --vocab-size must be >= 8, got {vocab_size}")
  if model_type not in ("unigram", "bpe", "word", "char"):
    raise ValueError(f"train-tokenizer: --model-type {model_type!r} not in "
                     "unigram/bpe/word/char")
  out_dir = os.path.dirname(os.path.abspath(output))
  os.makedirs(out_dir, exist_ok=True)
  try:
    spm.SentencePieceTrainer.Train(
        input=captions, model_prefix=output, vocab_size=vocab_size, model_type=model_type,
        character_coverage=character_coverage, hard_vocab_limit=hard_vocab_limit,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", minloglevel=2,
        **T5_SPECIAL_IDS)
  except RuntimeError as e:
    raise ValueError(f"train-tokenizer: SentencePiece failed on {captions} with vocab size "
                     f"{vocab_size}: {e} (use a smaller --vocab-size or "
                     "--no-hard-vocab-limit)") from e
  return output + ".model"


def train_tokenizer_cli(argv: Sequence[str]) -> int:
  """`train --captions=FILE --output=PREFIX --vocab-size=N` (argv without the program name;
  a leading 'train' is accepted). Returns a process exit code."""
  argv = list(argv)
  if argv and argv[0] == "train":
    argv = argv[1:]
  p = argparse.ArgumentParser(prog="train-tokenizer",
                              description="Train a T5-style SentencePiece tokenizer on captions.")
  p.add_argument("--captions", required=True, help="text file, one caption per line")
  p.add_argument("--output", required=True, help="output prefix (writes PREFIX.model)")
  p.add_argument("--vocab-size", type=int, required=True)
  p.add_argument("--model-type", default="unigram")
  p.add_argument("--character-coverage", type=float, default=1.0)
  p.add_argument("--hard-vocab-limit", action=argparse.BooleanOptionalAction, default=True)
  args = p.parse_args(argv)
  try:
    path = train_tokenizer(args.captions, args.output, args.vocab_size,
                           model_type=args.model_type,
                           character_coverage=args.character_coverage,
                           hard_vocab_limit=args.hard_vocab_limit)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(path)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Module entry: `python -m stiv_jax.models.encoders.tokenizer train ...`."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] != "train":
    print("usage: python -m stiv_jax.models.encoders.tokenizer train --captions=FILE "
          "--output=PREFIX --vocab-size=N", file=sys.stderr)
    return 2
  return train_tokenizer_cli(argv[1:])


if __name__ == "__main__":
  sys.exit(main())
