"""Test helpers: tiny real-architecture model files saved the way users have them, and file
fingerprints (sha256 of every file of a folder)."""
from __future__ import annotations

import hashlib
import json
import os

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from stiv_jax.models.encoders import tokenizer as tok_lib

TRAIN_TEXT = ["a red dog runs on the beach, quickly!", "the cat's toy is blue and green",
              "café naïve résumé", "tokyo at night", "a camera pans over mountains and rivers",
              "a big bird sitting on a rainy day", "hello world, it is a dog's life"] * 20


def write_clip_bpe(folder):
  """A CLIP-layout byte-level BPE vocab.json + merges.txt: 256 byte symbols, the same with
  '</w>', the merges' results, then <|startoftext|> and <|endoftext|> (merges trained here)."""
  tk = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
  tk.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
  tk.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"), "removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tk.train_from_iterator(TRAIN_TEXT, trainers.BpeTrainer(
      vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      end_of_word_suffix="</w>", show_progress=False))
  merges = json.loads(tk.to_str())["model"]["merges"]
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  vocab = {}
  for piece in alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges]:
    vocab.setdefault(piece, len(vocab))
  vocab[tok_lib.CLIP_BOS], vocab[tok_lib.CLIP_EOS] = len(vocab), len(vocab) + 1
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "vocab.json"), "w") as f:
    json.dump(vocab, f)
  with open(os.path.join(folder, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  return vocab


def tree_hashes(root: str) -> dict[str, str]:
  """{relative path: sha256} of every file under `root` (byte-identity checks)."""
  out = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out
