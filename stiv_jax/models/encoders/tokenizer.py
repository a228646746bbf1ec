"""Caption tokenizers for the text encoders, all with one interface, and a SentencePiece trainer.

`load_tokenizer` finds a tokenizer in a model folder (or at `text.tokenizer`) and returns one of:
- SentencePieceTokenizer (a .model file, e.g. T5's spiece.model): T5 conventions, pieces of the
  caption then </s> (eos), right-padded with <pad>, no BOS; truncation keeps the first
  max_length - 1 pieces so the EOS is always present.
- TokenizersTokenizer (the `tokenizers` library): a tokenizer.json, or a CLIP-style byte-level
  BPE vocab.json + merges.txt (<|startoftext|> caption <|endoftext|>); special tokens come from
  the file's post-processor, truncation keeps them, padding uses the configured pad token.
Both give `__call__(captions) -> (ids [B, L] int32, mask [B, L] bool)`, `token_lengths`,
`vocab_size`, `pad_id`, `eos_id` and `identity()` (kind, files, sha256, special ids).

Train: `python -m stiv_jax.models.encoders.tokenizer train --captions=FILE --output=PREFIX
--vocab-size=N` writes PREFIX.model and PREFIX.vocab.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import numpy as np
import sentencepiece as spm

from stiv_jax.models.encoders import identity as identity_lib

# T5's special ids: <pad>=0, </s>=1, <unk>=2, no <s>.
T5_SPECIAL_IDS = dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
SENTENCEPIECE_FILE = "spiece.model"
TOKENIZER_JSON = "tokenizer.json"
BPE_FILES = ("vocab.json", "merges.txt")
# transformers' side files naming the special tokens (pad, bos, eos, unk), read when present.
SPECIAL_TOKEN_FILES = ("tokenizer_config.json", "special_tokens_map.json")
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
# The tokenizer files looked for in a folder, per text.kind, in order.
SEARCH_ORDER = {"clip": (TOKENIZER_JSON, BPE_FILES, SENTENCEPIECE_FILE),
                "t5": (SENTENCEPIECE_FILE, TOKENIZER_JSON)}


def _check_captions(captions: Sequence[str]) -> None:
  if isinstance(captions, str):
    raise TypeError("tokenizer: expected a sequence of captions, got one str")
  for i, caption in enumerate(captions):
    if not isinstance(caption, str):
      raise TypeError(f"tokenizer: caption {i} is {type(caption).__name__}, expected str")


def _pad_rows(rows: Sequence[Sequence[int]], max_length: int,
              pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads id rows (each <= max_length) -> (ids [B, L] int32, mask [B, L] bool)."""
  ids = np.full((len(rows), max_length), pad_id, np.int32)
  mask = np.zeros((len(rows), max_length), bool)
  for i, row in enumerate(rows):
    ids[i, : len(row)] = row
    mask[i, : len(row)] = True
  return ids, mask


def _files_record(path: str, files: Sequence[str]) -> dict[str, Any]:
  """{'path', 'files', 'sha256'} of the tokenizer files actually read (content hash, cached)."""
  rec = identity_lib.weights_identity(files[0], extra=files[1:])
  return {"path": os.path.abspath(path), "files": rec["files"], "sha256": rec["sha256"]}


class SentencePieceTokenizer:
  """Captions -> (ids [B, L] int32, mask [B, L] bool) with a fixed max length (T5 conventions)."""

  kind = "sentencepiece"

  def __init__(self, model_path: str, max_length: int, pad_id: int | None = None):
    if not model_path or not os.path.isfile(model_path):
      raise FileNotFoundError(f"tokenizer: SentencePiece model not found: {model_path!r}")
    if max_length < 2:
      raise ValueError(f"text.max_length: must be >= 2 (a token and </s>), got {max_length}")
    self.path = model_path
    self.files = [os.path.abspath(model_path)]
    self.sp = spm.SentencePieceProcessor()
    try:
      self.sp.Load(model_path)
    except (OSError, RuntimeError) as e:
      raise ValueError(f"tokenizer: {model_path} is not a SentencePiece model ({e})") from e
    self.max_length = int(max_length)
    self.vocab_size = int(self.sp.GetPieceSize())
    self.bos_id = None  # T5 adds no BOS
    self.eos_id = int(self.sp.eos_id())
    if self.eos_id < 0:
      raise ValueError(f"tokenizer: {model_path} defines no </s> (eos) piece; the text encoder "
                       "ends every caption with it")
    self.pad_id = int(self.sp.pad_id()) if pad_id is None else int(pad_id)
    if self.pad_id < 0:
      raise ValueError(f"text.pad_id: the tokenizer {model_path} defines no <pad> piece; set "
                       "text.pad_id")
    if self.pad_id >= self.vocab_size:
      raise ValueError(f"text.pad_id: {self.pad_id} is not an id of the tokenizer {model_path} "
                       f"({self.vocab_size} pieces)")

  def encode_ids(self, caption: str) -> list[int]:
    """Ids of one caption, truncated to max_length - 1, plus </s>."""
    return list(self.sp.EncodeAsIds(caption))[: self.max_length - 1] + [self.eos_id]

  def token_lengths(self, captions: Sequence[str]) -> list[int]:
    """Untruncated token counts with </s> (compare with max_length to see what is cut)."""
    _check_captions(captions)
    return [len(self.sp.EncodeAsIds(c)) + 1 for c in captions]

  def __call__(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    _check_captions(captions)
    return _pad_rows([self.encode_ids(c) for c in captions], self.max_length, self.pad_id)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ids (stops at </s>; for debugging)."""
    ids = list(ids)
    if self.eos_id in ids:
      ids = ids[: ids.index(self.eos_id)]
    return self.sp.DecodeIds([int(i) for i in ids if i != self.pad_id])

  def identity(self) -> dict[str, Any]:
    """The tokenizer part of the text encoder's latent-contract record."""
    return {"kind": self.kind, **_files_record(self.path, self.files),
            "vocab_size": self.vocab_size, "pad_id": self.pad_id, "bos_id": self.bos_id,
            "eos_id": self.eos_id}


def _token_name(value: Any) -> str | None:
  """A special token as transformers writes it: a str or an AddedToken dict {'content': ...}."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) and value else None


def _special_tokens(folder: str) -> tuple[dict[str, str], list[str]]:
  """({'pad_token': ..., 'bos_token': ..., ...}, files read) from a folder's transformers side
  files; tokenizer_config.json wins over special_tokens_map.json."""
  out: dict[str, str] = {}
  read = []
  for name in reversed(SPECIAL_TOKEN_FILES):
    f = os.path.join(folder, name)
    if not os.path.isfile(f):
      continue
    try:
      with open(f, encoding="utf-8") as fh:
        conf = json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"tokenizer: {f} is not valid JSON ({e})") from e
    if not isinstance(conf, dict):
      raise ValueError(f"tokenizer: {f} is not a JSON object")
    read.append(os.path.abspath(f))
    for key in ("pad_token", "bos_token", "eos_token", "unk_token"):
      token = _token_name(conf.get(key))
      if token:
        out[key] = token
  return out, sorted(read)


def _clip_bpe(vocab_file: str, merges_file: str, specials: dict[str, str]):
  """A `tokenizers` Tokenizer with CLIP's pipeline over vocab.json + merges.txt: NFC, collapsed
  whitespace, lower case; CLIP's word regex; byte-level BPE with '</w>' word ends; BOS/EOS."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
  from tokenizers import processors
  from tokenizers.models import BPE

  bos = specials.get("bos_token", CLIP_BOS)
  eos = specials.get("eos_token", CLIP_EOS)
  unk = specials.get("unk_token", eos)
  try:
    model = BPE.from_file(vocab_file, merges_file, dropout=None, continuing_subword_prefix="",
                          end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk)
  except Exception as e:  # tokenizers raises its own Exception type for bad files.
    raise ValueError(f"tokenizer: cannot read BPE files {vocab_file} + {merges_file} "
                     f"({type(e).__name__}: {e})") from e
  tok = Tokenizer(model)
  for name, token in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk)):
    if tok.token_to_id(token) is None:
      raise ValueError(f"tokenizer: {vocab_file} has no {name} {token!r} (set it in "
                       f"{SPECIAL_TOKEN_FILES[0]} beside it)")
  tok.normalizer = normalizers.Sequence(
      [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
  words = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(words), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                          for t in dict.fromkeys([bos, eos, unk])])
  tok.post_processor = processors.RobertaProcessing(
      (eos, tok.token_to_id(eos)), (bos, tok.token_to_id(bos)), trim_offsets=False,
      add_prefix_space=False)
  return tok


class TokenizersTokenizer:
  """Captions -> (ids [B, L] int32, mask [B, L] bool) through the `tokenizers` library.

  `source` is a tokenizer.json file or a (vocab.json, merges.txt) pair (CLIP byte-level BPE);
  special tokens are those the post-processor adds; truncation to max_length keeps them. The
  pad id: `pad_id`, else the pad token of tokenizer_config.json / special_tokens_map.json, else
  tokenizer.json's padding, else the EOS token (CLIP's usual pad).
  """

  def __init__(self, source: str | tuple[str, str], max_length: int, pad_id: int | None = None):
    from tokenizers import Tokenizer

    if max_length < 2:
      raise ValueError(f"text.max_length: must be >= 2, got {max_length}")
    files = [source] if isinstance(source, str) else list(source)
    for f in files:
      if not os.path.isfile(f):
        raise FileNotFoundError(f"tokenizer: file not found: {f}")
    folder = os.path.dirname(os.path.abspath(files[0]))
    specials, side_files = _special_tokens(folder)
    self.path = files[0] if len(files) == 1 else folder
    self.files = [os.path.abspath(f) for f in files] + side_files
    saved_pad = None
    if isinstance(source, str):
      try:
        with open(source, encoding="utf-8") as fh:
          spec = json.load(fh)
        tok = Tokenizer.from_str(json.dumps(spec))
      except Exception as e:  # JSON errors and tokenizers' own Exception type.
        raise ValueError(f"tokenizer: {source} is not a tokenizers JSON file "
                         f"({type(e).__name__}: {e})") from e
      model_type = str((spec.get("model") or {}).get("type", "")).lower()
      self.kind = model_type or "tokenizers"
      saved_pad = (spec.get("padding") or {}).get("pad_id")
    else:
      tok = _clip_bpe(files[0], files[1], specials)
      self.kind = "bpe"
    tok.no_truncation()
    tok.no_padding()
    self._full = tok  # untruncated, for token_lengths
    self.max_length = int(max_length)
    vocab = tok.get_vocab(with_added_tokens=True)
    self.vocab_size = max(vocab.values()) + 1 if vocab else 0
    self.bos_id = tok.token_to_id(specials["bos_token"]) if "bos_token" in specials else None
    self.eos_id = tok.token_to_id(specials["eos_token"]) if "eos_token" in specials else None
    if not isinstance(source, str) and self.bos_id is None:
      self.bos_id, self.eos_id = tok.token_to_id(CLIP_BOS), tok.token_to_id(CLIP_EOS)
    empty = tok.encode("").ids
    if not empty:
      raise ValueError(f"tokenizer: {self.path} adds no special tokens to a caption (no "
                       "post_processor); the text encoder needs at least an end token")
    if self.eos_id is None:
      self.eos_id = empty[-1]
    if pad_id is not None:
      self.pad_id = int(pad_id)
    elif "pad_token" in specials:
      self.pad_id = tok.token_to_id(specials["pad_token"])
      if self.pad_id is None:
        raise ValueError(f"tokenizer: pad_token {specials['pad_token']!r} of {side_files} is "
                         f"not in {self.path}")
    elif saved_pad is not None:
      self.pad_id = int(saved_pad)
    else:
      self.pad_id = int(self.eos_id)
    if not 0 <= self.pad_id < self.vocab_size:
      raise ValueError(f"text.pad_id: {self.pad_id} is not an id of the tokenizer {self.path} "
                       f"(ids 0..{self.vocab_size - 1})")
    if len(empty) > self.max_length:
      raise ValueError(f"text.max_length: {max_length} is shorter than the {len(empty)} special "
                       f"tokens {self.path} adds")
    self._tok = Tokenizer.from_str(tok.to_str())
    self._tok.enable_truncation(self.max_length)

  def token_lengths(self, captions: Sequence[str]) -> list[int]:
    """Untruncated token counts with the special tokens."""
    _check_captions(captions)
    return [len(e.ids) for e in self._full.encode_batch(list(captions))]

  def __call__(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    _check_captions(captions)
    rows = [e.ids for e in self._tok.encode_batch(list(captions))]
    return _pad_rows(rows, self.max_length, self.pad_id)

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ids without special tokens (for debugging)."""
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def identity(self) -> dict[str, Any]:
    """The tokenizer part of the text encoder's latent-contract record."""
    return {"kind": self.kind, **_files_record(self.path, self.files),
            "vocab_size": self.vocab_size, "pad_id": self.pad_id, "bos_id": self.bos_id,
            "eos_id": self.eos_id}


CaptionTokenizer = SentencePieceTokenizer | TokenizersTokenizer


def _tokenizer_folder_candidates(model_path: str) -> list[str]:
  """Folders searched when text.tokenizer is '': the model's folder, then a diffusers pipeline's
  sibling tokenizer folder (text_encoder -> tokenizer, text_encoder_2 -> tokenizer_2)."""
  folder = model_path if os.path.isdir(model_path) else os.path.dirname(model_path) or "."
  folder = os.path.abspath(folder)
  out = [folder]
  base = os.path.basename(folder)
  if base.startswith("text_encoder"):
    out.append(os.path.join(os.path.dirname(folder), "tokenizer" + base[len("text_encoder"):]))
  return out


def _from_folder(folder: str, kind: str, max_length: int,
                 pad_id: int | None) -> CaptionTokenizer | None:
  for entry in SEARCH_ORDER[kind]:
    names = entry if isinstance(entry, tuple) else (entry,)
    paths = [os.path.join(folder, n) for n in names]
    if all(os.path.isfile(p) for p in paths):
      if names == (SENTENCEPIECE_FILE,):
        return SentencePieceTokenizer(paths[0], max_length, pad_id=pad_id)
      return TokenizersTokenizer(paths[0] if len(paths) == 1 else tuple(paths), max_length,
                                 pad_id=pad_id)
  return None


def _searched(kind: str) -> str:
  return ", ".join(" + ".join(e) if isinstance(e, tuple) else e for e in SEARCH_ORDER[kind])


def load_tokenizer(tokenizer: str, model_path: str, kind: str, max_length: int,
                   pad_id: int | None = None) -> CaptionTokenizer:
  """The tokenizer of a text encoder: `tokenizer` ('' = found beside the weights at
  `model_path`; else a .model file, a tokenizer.json, or a folder with tokenizer files)."""
  if kind not in SEARCH_ORDER:
    raise ValueError(f"text.kind: no tokenizer convention for {kind!r}; expected one of "
                     f"{sorted(SEARCH_ORDER)}")
  if tokenizer:
    if os.path.isdir(tokenizer):
      tok = _from_folder(tokenizer, kind, max_length, pad_id)
      if tok is None:
        raise FileNotFoundError(f"text.tokenizer: {tokenizer} holds no tokenizer files; looked "
                                f"for {_searched(kind)}")
      return tok
    if tokenizer.endswith(".model"):
      return SentencePieceTokenizer(tokenizer, max_length, pad_id=pad_id)
    if tokenizer.endswith(".json"):
      if os.path.basename(tokenizer) == BPE_FILES[0]:
        return TokenizersTokenizer(
            (tokenizer, os.path.join(os.path.dirname(tokenizer), BPE_FILES[1])), max_length,
            pad_id=pad_id)
      return TokenizersTokenizer(tokenizer, max_length, pad_id=pad_id)
    if not os.path.exists(tokenizer):
      raise FileNotFoundError(f"text.tokenizer: not found: {tokenizer}")
    raise ValueError(f"text.tokenizer: {tokenizer} is neither a SentencePiece .model, a "
                     "tokenizer.json / vocab.json, nor a folder")
  folders = _tokenizer_folder_candidates(model_path)
  for folder in folders:
    if os.path.isdir(folder):
      tok = _from_folder(folder, kind, max_length, pad_id)
      if tok is not None:
        return tok
  raise FileNotFoundError(f"text.tokenizer: none set and no tokenizer beside the weights; looked "
                          f"in {', '.join(folders)} for {_searched(kind)}; set "
                          "--config.text.tokenizer=FILE_OR_FOLDER")


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
