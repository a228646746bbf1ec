"""CLIP text encoder: parity with transformers CLIPTextModel (random tiny weights) fed T5
SentencePiece ids, pooled output, empty-prompt cache, checkpoint variants, bad inputs."""
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

from stiv_jax.models.encoders import base  # noqa: E402
from stiv_jax.models.encoders import text as text_lib  # noqa: E402
from stiv_jax.models.encoders import tokenizer as tok_lib  # noqa: E402
from stiv_jax.models.encoders.weights import WeightImportError  # noqa: E402

TOL = 1e-4
MAX_LEN = 16
CAPTIONS = ["a red dog running", "", "a big blue bird sitting on a rainy day, a big blue bird "
            "sitting on a rainy day", "cat", "the green car jumping"]


def rel_err(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
  """A trained tiny T5-style tokenizer, a tiny HF CLIPTextModel (vocab from the tokenizer)
  saved with save_pretrained, and our encoder loaded from both."""
  root = tmp_path_factory.mktemp("clip")
  caps = [f"a {c} {a} {o} on a {s} day" for c in ("red", "blue", "green", "big")
          for a in ("dog", "cat", "car", "bird") for o in ("running", "sitting", "jumping")
          for s in ("sunny", "rainy")]
  (root / "caps.txt").write_text("\n".join(caps))
  assert tok_lib.train_tokenizer_cli([f"--captions={root / 'caps.txt'}",
                                      f"--output={root / 'tok'}", "--vocab-size=30"]) == 0
  vocab = tok_lib.SentencePieceTokenizer(str(root / "tok.model"), MAX_LEN).vocab_size
  torch.manual_seed(0)
  config = transformers.CLIPTextConfig(
      vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, max_position_embeddings=MAX_LEN, eos_token_id=1, pad_token_id=0,
      bos_token_id=None)
  m = transformers.CLIPTextModel(config).eval()
  with torch.no_grad():  # Non-trivial LayerNorms so they matter in the comparison.
    for name, p in m.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  m.save_pretrained(str(root / "clip"))
  cfg = {"kind": "clip", "path": str(root / "clip"), "tokenizer": str(root / "tok.model"),
         "max_length": MAX_LEN, "batch_size": 4}
  return m, root, cfg, base.build_text_encoder(cfg)


@pytest.fixture(scope="module")
def encoded(ref):
  _, _, _, enc = ref
  return enc.encode_text(CAPTIONS)


def hf_forward(m, ids, mask):
  with torch.no_grad():
    out = m(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
  return out.last_hidden_state.numpy(), out.pooler_output.numpy()


def test_protocol_shapes(ref, encoded):
  _, _, _, enc = ref
  tokens, mask, pooled = encoded
  assert isinstance(enc, base.TextEncoder)
  assert enc.dim == 64 and enc.max_length == MAX_LEN
  assert tokens.shape == (5, MAX_LEN, 64) and tokens.dtype == np.float32
  assert mask.shape == (5, MAX_LEN) and mask.dtype == bool
  assert pooled.shape == (5, 64) and pooled.dtype == np.float32
  assert mask[1].sum() == 1 and mask[2].all()  # Empty caption is just </s>; long one truncated.


def test_tokens_and_pooled_match_transformers(ref, encoded):
  m, _, _, enc = ref
  tokens, mask, pooled = encoded
  ids, mask2 = enc.tokenizer(CAPTIONS)
  np.testing.assert_array_equal(mask, mask2)
  want_tokens, want_pooled = hf_forward(m, ids, mask)  # HF pools the first eos (id 1).
  assert rel_err(tokens, want_tokens) <= TOL
  assert rel_err(pooled, want_pooled) <= TOL
  # Real tokens do not depend on the padding (causal attention).
  want_nomask, _ = hf_forward(m, ids, np.ones_like(mask))
  assert rel_err(tokens[mask], want_nomask[mask]) <= TOL


def test_pooled_is_last_real_token(encoded):
  tokens, mask, pooled = encoded
  last = mask.sum(axis=1) - 1
  np.testing.assert_array_equal(pooled, tokens[np.arange(len(last)), last])


def test_chunking_matches_single(ref, encoded):
  _, _, _, enc = ref
  tokens, _, pooled = encoded  # 5 captions at batch_size 4: chunks of 4 and 1.
  t4, _, p4 = enc.encode_text(CAPTIONS[4:])
  np.testing.assert_allclose(t4[0], tokens[4], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(p4[0], pooled[4], rtol=1e-5, atol=1e-5)


def test_empty_prompt_cached(ref, encoded):
  _, _, _, enc = ref
  tokens, mask, pooled = enc.empty_prompt()
  assert tokens.shape == (1, MAX_LEN, 64) and mask.sum() == 1
  np.testing.assert_allclose(pooled[0], encoded[2][1], rtol=1e-5, atol=1e-5)
  pooled[:] = 0  # Callers get copies: the cache is not mutated.
  assert np.abs(enc.empty_prompt()[2]).sum() > 0
  assert enc._empty is not None


def test_legacy_prefixed_full_clip_file(ref, tmp_path, encoded):
  """4.x-style `text_model.` keys with the old position_ids buffer and vision extras."""
  _, root, cfg, _ = ref
  tensors = load_file(str(root / "clip" / "model.safetensors"))
  legacy = {"text_model." + k: v for k, v in tensors.items()}
  legacy["text_model.embeddings.position_ids"] = np.arange(MAX_LEN, dtype=np.int64)[None]
  legacy["vision_model.embeddings.class_embedding"] = np.zeros((8,), np.float32)
  legacy["logit_scale"] = np.zeros((), np.float32)
  save_file(legacy, str(tmp_path / "clip.safetensors"))
  enc = text_lib.load_text_encoder({**cfg, "path": str(tmp_path / "clip.safetensors"),
                                    "config": str(root / "clip" / "config.json")})
  tokens, _, pooled = enc.encode_text(CAPTIONS)
  np.testing.assert_allclose(tokens, encoded[0], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(pooled, encoded[2], rtol=1e-6, atol=1e-6)


# --- bad input ---------------------------------------------------------------------------------


def test_unsupported_config(ref, tmp_path):
  _, root, cfg, _ = ref
  shutil.copytree(root / "clip", tmp_path / "c")
  conf = json.loads((tmp_path / "c" / "config.json").read_text())
  conf["model_type"] = "t5"
  (tmp_path / "c" / "config.json").write_text(json.dumps(conf))
  with pytest.raises(WeightImportError, match=r"c/config.json: model_type 't5'"):
    text_lib.load_text_encoder({**cfg, "path": str(tmp_path / "c")})
  conf["model_type"], conf["hidden_act"] = "clip_text_model", "relu"
  (tmp_path / "c" / "config.json").write_text(json.dumps(conf))
  with pytest.raises(WeightImportError, match="hidden_act='relu'"):
    text_lib.load_text_encoder({**cfg, "path": str(tmp_path / "c")})


def test_wrong_shape_and_missing_named(ref, tmp_path):
  _, root, cfg, _ = ref
  tensors = load_file(str(root / "clip" / "model.safetensors"))
  tensors["encoder.layers.1.mlp.fc1.weight"] = np.zeros((64, 64), np.float32)
  del tensors["final_layer_norm.bias"]
  save_file(tensors, str(tmp_path / "model.safetensors"))
  shutil.copy(root / "clip" / "config.json", tmp_path / "config.json")
  with pytest.raises(WeightImportError) as e:
    text_lib.load_text_encoder({**cfg, "path": str(tmp_path)})
  msg = str(e.value)
  assert str(tmp_path / "model.safetensors") in msg
  assert "encoder.layers.1.mlp.fc1.weight: checkpoint (64, 64), model expects (128, 64)" in msg
  assert "missing tensors (1): final_layer_norm.bias" in msg


def test_missing_files_and_limits(ref, tmp_path):
  _, root, cfg, _ = ref
  (tmp_path / "config.json").write_text((root / "clip" / "config.json").read_text())
  with pytest.raises(WeightImportError, match="no weights file"):
    text_lib.load_text_encoder({**cfg, "path": str(tmp_path)})
  with pytest.raises(ValueError, match="max_length: 32 exceeds.*max_position_embeddings 16"):
    text_lib.load_text_encoder({**cfg, "max_length": 32})
  with pytest.raises(FileNotFoundError, match="nope.model"):
    text_lib.load_text_encoder({**cfg, "tokenizer": str(tmp_path / "nope.model")})
  with pytest.raises(ValueError, match="text.tokenizer"):
    text_lib.load_text_encoder({**cfg, "tokenizer": None})


def test_tokenizer_larger_than_vocab(ref, tmp_path):
  _, root, cfg, _ = ref
  conf = json.loads((root / "clip" / "config.json").read_text())
  conf["vocab_size"] = 8
  shutil.copytree(root / "clip", tmp_path / "c")
  (tmp_path / "c" / "config.json").write_text(json.dumps(conf))
  tensors = load_file(str(root / "clip" / "model.safetensors"))
  tensors["embeddings.token_embedding.weight"] = tensors["embeddings.token_embedding.weight"][:8]
  save_file(tensors, str(tmp_path / "c" / "model.safetensors"))
  with pytest.raises(ValueError, match=r"tok.model has \d+ pieces but the encoder's vocab_size "
                     "is 8"):
    text_lib.load_text_encoder({**cfg, "path": str(tmp_path / "c")})
