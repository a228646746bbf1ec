"""Tokenizers: the T5-style SentencePiece one (trainer CLI, T5 conventions, padding/mask,
token lengths, identity, errors) and `load_tokenizer`'s choice of file per text.kind."""
import os
import subprocess
import sys

import shutil

import numpy as np
import pytest
import sentencepiece as spm

from stiv_jax.models.encoders import tokenizer as tok_lib

CAPTIONS = [f"a {c} {a} {o} in the {s}" for c in ("red", "blue", "green", "tiny", "huge")
            for a in ("dog", "cat", "horse", "bird") for o in ("running", "sleeping", "eating")
            for s in ("park", "snow", "city")]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
  root = tmp_path_factory.mktemp("tok")
  (root / "caps.txt").write_text("\n".join(CAPTIONS) + "\n")
  rc = tok_lib.train_tokenizer_cli(["train", f"--captions={root / 'caps.txt'}",
                                    f"--output={root / 'sub' / 'tok'}", "--vocab-size=32"])
  assert rc == 0
  return str(root / "sub" / "tok.model")


def test_trained_model_has_t5_special_ids(model_path):
  sp = spm.SentencePieceProcessor(model_file=model_path)
  assert sp.GetPieceSize() == 32
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
  assert sp.IdToPiece(0) == "<pad>" and sp.IdToPiece(1) == "</s>"


def test_ids_padding_and_mask(model_path):
  tok = tok_lib.SentencePieceTokenizer(model_path, max_length=40)
  sp = spm.SentencePieceProcessor(model_file=model_path)
  caps = ["a red dog running in the park", "", "cat"]
  ids, mask = tok(caps)
  assert ids.shape == (3, 40) and ids.dtype == np.int32 and mask.dtype == bool
  for i, cap in enumerate(caps):
    want = sp.EncodeAsIds(cap) + [1]  # Reference: sentencepiece itself, then </s>.
    n = len(want)
    assert mask[i].sum() == n and mask[i, :n].all()
    np.testing.assert_array_equal(ids[i, :n], want)
    assert (ids[i, n:] == 0).all()
  assert tok.decode(ids[0]) == caps[0]


def test_truncation_keeps_eos(model_path):
  tok = tok_lib.SentencePieceTokenizer(model_path, max_length=5)
  ids, mask = tok(["a huge horse sleeping in the snow a huge horse sleeping"])
  assert mask.all() and ids[0, -1] == 1
  sp = spm.SentencePieceProcessor(model_file=model_path)
  np.testing.assert_array_equal(ids[0, :4], sp.EncodeAsIds(
      "a huge horse sleeping in the snow a huge horse sleeping")[:4])


def test_module_entry_point(tmp_path, model_path):
  (tmp_path / "c.txt").write_text("\n".join(CAPTIONS))
  env = {**os.environ, "PYTHONPATH": os.getcwd()}
  out = subprocess.run([sys.executable, "-m", "stiv_jax.models.encoders.tokenizer", "train",
                        f"--captions={tmp_path / 'c.txt'}", f"--output={tmp_path / 'm'}",
                        "--vocab-size=28"], capture_output=True, text=True, env=env)
  assert out.returncode == 0, out.stderr
  assert os.path.isfile(tmp_path / "m.model")
  assert tok_lib.SentencePieceTokenizer(str(tmp_path / "m.model"), 8).vocab_size == 28


def test_trainer_errors(tmp_path, capsys):
  assert tok_lib.train_tokenizer_cli([f"--captions={tmp_path / 'none.txt'}",
                                      f"--output={tmp_path / 'x'}", "--vocab-size=30"]) == 1
  assert "none.txt" in capsys.readouterr().err
  (tmp_path / "small.txt").write_text("a b c\n")
  assert tok_lib.train_tokenizer_cli([f"--captions={tmp_path / 'small.txt'}",
                                      f"--output={tmp_path / 'x'}", "--vocab-size=5000"]) == 1
  assert "Vocabulary size too high" in capsys.readouterr().err
  (tmp_path / "empty.txt").write_text("\n\n")
  with pytest.raises(ValueError, match="empty.txt has no non-empty caption"):
    tok_lib.train_tokenizer(str(tmp_path / "empty.txt"), str(tmp_path / "x"), 30)
  assert tok_lib.main(["bogus"]) == 2


def test_tokenizer_errors(model_path, tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.model"):
    tok_lib.SentencePieceTokenizer(str(tmp_path / "missing.model"), 8)
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(ValueError, match="junk.model is not a SentencePiece model"):
    tok_lib.SentencePieceTokenizer(str(tmp_path / "junk.model"), 8)
  with pytest.raises(ValueError, match="max_length: must be >= 2"):
    tok_lib.SentencePieceTokenizer(model_path, 1)
  tok = tok_lib.SentencePieceTokenizer(model_path, 8)
  with pytest.raises(TypeError, match="caption 1 is int"):
    tok(["ok", 3])
  with pytest.raises(TypeError, match="one str"):
    tok("a caption")


def test_token_lengths_and_identity(model_path):
  tok = tok_lib.SentencePieceTokenizer(model_path, max_length=5)
  sp = spm.SentencePieceProcessor(model_file=model_path)
  caps = ["a huge horse sleeping in the snow", "", "cat"]
  assert tok.token_lengths(caps) == [len(sp.EncodeAsIds(c)) + 1 for c in caps]
  assert tok.token_lengths(caps)[0] > 5 and tok(caps)[1][0].all()  # cut at max_length
  rec = tok.identity()
  assert rec == {"kind": "sentencepiece", "path": os.path.abspath(model_path),
                 "files": ["tok.model"], "sha256": rec["sha256"], "vocab_size": 32, "pad_id": 0,
                 "bos_id": None, "eos_id": 1}
  assert len(rec["sha256"]) == 64 and tok_lib.SentencePieceTokenizer(
      model_path, 8).identity()["sha256"] == rec["sha256"]
  with pytest.raises(ValueError, match="text.pad_id: 99 is not an id of the tokenizer"):
    tok_lib.SentencePieceTokenizer(model_path, 8, pad_id=99)


def test_load_tokenizer_choice(model_path, tmp_path):
  folder = tmp_path / "model"
  folder.mkdir()
  (folder / "model.safetensors").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match=r"looked in .*model for spiece.model, "
                     "tokenizer.json"):
    tok_lib.load_tokenizer("", str(folder / "model.safetensors"), "t5", 8)
  shutil.copy(model_path, folder / "spiece.model")
  for kind in ("t5", "clip"):  # clip: the paper's pairing when the folder holds only spiece
    tok = tok_lib.load_tokenizer("", str(folder), kind, 8)
    assert isinstance(tok, tok_lib.SentencePieceTokenizer) and tok.path.endswith("spiece.model")
  tok = tok_lib.load_tokenizer(model_path, str(folder), "clip", 8)  # an explicit file wins
  assert tok.path == model_path
  assert isinstance(tok_lib.load_tokenizer(str(folder), "", "t5", 8),
                    tok_lib.SentencePieceTokenizer)
  (tmp_path / "vocab.bin").write_bytes(b"")
  with pytest.raises(ValueError, match="vocab.bin is neither a SentencePiece .model"):
    tok_lib.load_tokenizer(str(tmp_path / "vocab.bin"), "", "clip", 8)
  with pytest.raises(FileNotFoundError, match=r"text.tokenizer: .*empty holds no tokenizer "
                     r"files; looked for tokenizer.json, vocab.json \+ merges.txt, spiece.model"):
    (tmp_path / "empty").mkdir()
    tok_lib.load_tokenizer(str(tmp_path / "empty"), "", "clip", 8)
  with pytest.raises(ValueError, match="text.kind: no tokenizer convention for 'hash'"):
    tok_lib.load_tokenizer(model_path, "", "hash", 8)
