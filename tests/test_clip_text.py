"""CLIP text encoder: its own byte-level BPE tokenizer (tokenizer.json or vocab.json +
merges.txt, through `tokenizers`) against transformers' CLIPTokenizer / CLIPTokenizerFast, the
tower against transformers' CLIPTextModel (random tiny weights), the paper's pairing (a T5
SentencePiece tokenizer into the CLIP tower), identity records, checkpoint variants, bad input."""
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

from stiv_jax.models.encoders import base  # noqa: E402
from stiv_jax.models.encoders import identity as identity_lib  # noqa: E402
from stiv_jax.models.encoders import tokenizer as tok_lib  # noqa: E402
from stiv_jax.models.encoders.weights import WeightImportError  # noqa: E402
from helpers import write_clip_bpe  # noqa: E402

TOL = 1e-4
MAX_LEN = 16
WIDTH = 32
# Punctuation, capitals, whitespace runs, unicode (accents, CJK, emoji), a caption longer than
# MAX_LEN tokens (truncated), the empty caption.
SENTENCES = [
    "a red dog running", "", "Hello, WORLD!! It's a dog's life... isn't it?",
    "  leading and   trailing\twhitespace\n", "café naïve résumé Ünïcödé", "東京の夜 🙂 night in Tokyo",
    "A big blue bird sitting on a rainy day, a big blue bird sitting on a rainy day, again",
    "cat", "the green car jumping over 3 rivers (quickly) & slowly"]
CAPTIONS = ["a red dog running", "", "a big blue bird sitting on a rainy day, a big blue bird "
            "sitting on a rainy day", "cat", "the green car jumping"]
def rel_err(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """BPE files, transformers tokenizers saved from them, a trained T5-style SentencePiece model,
  one tiny transformers CLIPTextModel (vocab of the BPE) saved with its tokenizer, and our two
  encoders over it: the BPE one (default tokenizer) and the paper's SentencePiece pairing."""
  root = tmp_path_factory.mktemp("clip")
  vocab = write_clip_bpe(str(root / "bpe"))
  hf_tok = transformers.CLIPTokenizer.from_pretrained(str(root / "bpe"))
  torch.manual_seed(0)
  config = transformers.CLIPTextConfig(
      vocab_size=len(vocab), hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, max_position_embeddings=MAX_LEN, bos_token_id=hf_tok.bos_token_id,
      eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id)
  m = transformers.CLIPTextModel(config).eval()
  with torch.no_grad():  # Non-trivial LayerNorms so they matter in the comparison.
    for name, p in m.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  m.save_pretrained(str(root / "clip"))
  hf_tok.save_pretrained(str(root / "clip"))  # tokenizer.json + tokenizer_config.json
  (root / "caps.txt").write_text("\n".join(f"a {c} {a} {o} on a {s} day" for c in (
      "red", "blue", "green", "big") for a in ("dog", "cat", "car", "bird") for o in (
      "running", "sitting", "jumping") for s in ("sunny", "rainy")))
  assert tok_lib.train_tokenizer_cli([f"--captions={root / 'caps.txt'}",
                                      f"--output={root / 'tok'}", "--vocab-size=30"]) == 0
  cfg = {"kind": "clip", "path": str(root / "clip"), "dim": WIDTH, "max_length": MAX_LEN,
         "batch_size": 4}
  bpe = base.build_text_encoder(cfg)
  sp_cfg = {**cfg, "tokenizer": str(root / "tok.model")}
  return dict(m=m, root=root, cfg=cfg, sp_cfg=sp_cfg, bpe=bpe,
              sp=base.build_text_encoder(sp_cfg), hf_tok=hf_tok)


@pytest.fixture(scope="module")
def encoded(world):
  return world["sp"].encode_text(CAPTIONS)


def hf_forward(m, ids, mask):
  with torch.no_grad():
    out = m(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long())
  return out.last_hidden_state.numpy(), out.pooler_output.numpy()


# --- the BPE tokenizer ---------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["model folder (tokenizer.json)", "vocab.json + merges.txt",
                                    "tokenizer.json file"])
@pytest.mark.parametrize("reference", ["CLIPTokenizer", "CLIPTokenizerFast"])
def test_bpe_ids_match_transformers(world, source, reference):
  root = world["root"]
  spec = {"model folder (tokenizer.json)": "", "vocab.json + merges.txt": str(root / "bpe"),
          "tokenizer.json file": str(root / "clip" / "tokenizer.json")}[source]
  ours = tok_lib.load_tokenizer(spec, str(root / "clip"), "clip", MAX_LEN)
  ref = getattr(transformers, reference).from_pretrained(
      str(root / ("bpe" if source.startswith("vocab") else "clip")))
  want = ref(SENTENCES, padding="max_length", truncation=True, max_length=MAX_LEN)
  ids, mask = ours(SENTENCES)
  np.testing.assert_array_equal(ids, np.array(want["input_ids"]))
  np.testing.assert_array_equal(mask, np.array(want["attention_mask"], bool))
  assert ours.token_lengths(SENTENCES) == [len(r) for r in ref(SENTENCES)["input_ids"]]
  assert (ours.kind, ours.bos_id, ours.eos_id) == ("bpe", ref.bos_token_id, ref.eos_token_id)
  assert ours.pad_id == ref.pad_token_id == ref.eos_token_id  # CLIP pads with <|endoftext|>
  last = mask.sum(axis=1) - 1
  assert (ids[:, 0] == ours.bos_id).all() and (ids[np.arange(len(ids)), last] == ours.eos_id).all()
  assert max(ours.token_lengths(SENTENCES)) > MAX_LEN and mask.all(axis=1).any()  # truncated
  assert mask[1].sum() == 2  # the empty caption: BOS, EOS


def test_bpe_configured_pad_and_override(world, tmp_path):
  """A tokenizer whose configured pad is not EOS (as SDXL's second CLIP pads with '!')."""
  root = world["root"]
  ref = transformers.CLIPTokenizer.from_pretrained(str(root / "bpe"), pad_token="!")
  ref.save_pretrained(str(tmp_path))
  ours = tok_lib.load_tokenizer(str(tmp_path), "", "clip", MAX_LEN)
  assert ours.pad_id == ref.pad_token_id != ref.eos_token_id
  want = ref(SENTENCES, padding="max_length", truncation=True, max_length=MAX_LEN)
  np.testing.assert_array_equal(ours(SENTENCES)[0], np.array(want["input_ids"]))
  over = tok_lib.load_tokenizer(str(tmp_path), "", "clip", MAX_LEN, pad_id=5)
  ids, mask = over(["cat"])
  assert (ids[~mask] == 5).all() and over.identity()["pad_id"] == 5
  with pytest.raises(ValueError, match="text.pad_id: 100000 is not an id of the tokenizer"):
    tok_lib.load_tokenizer(str(tmp_path), "", "clip", MAX_LEN, pad_id=100000)


def test_bpe_encoder_matches_transformers(world):
  enc, m = world["bpe"], world["m"]
  tokens, mask, pooled = enc.encode_text(SENTENCES[:8])  # two chunks of 4 (one compile)
  ids, mask2 = enc.tokenizer(SENTENCES[:8])
  np.testing.assert_array_equal(mask, mask2)
  want_tokens, want_pooled = hf_forward(m, ids, mask)  # HF pools the first EOS id
  assert rel_err(tokens, want_tokens) <= TOL
  assert rel_err(pooled, want_pooled) <= TOL
  assert enc.dim == WIDTH and enc.max_length == MAX_LEN and enc.pooling == "eos"
  assert isinstance(enc, base.TextEncoder)


def test_identity_records(world):
  root = world["root"]
  rec = world["bpe"].identity()
  assert list(rec) == ["kind", "dim", "max_length", "pooling", "weights", "tokenizer"]
  assert (rec["kind"], rec["dim"], rec["max_length"], rec["pooling"]) == ("clip", WIDTH,
                                                                          MAX_LEN, "eos")
  assert rec["weights"] == identity_lib.weights_identity(str(root / "clip"))
  tok = rec["tokenizer"]
  assert tok["kind"] == "bpe" and tok["files"] == ["tokenizer.json", "tokenizer_config.json"]
  assert tok["path"] == str(root / "clip" / "tokenizer.json")
  assert tok["sha256"] == identity_lib.weights_identity(
      str(root / "clip" / "tokenizer.json"), [str(root / "clip" / "tokenizer_config.json")])["sha256"]
  assert (tok["vocab_size"], tok["pad_id"]) == (world["m"].config.vocab_size, tok["eos_id"])
  assert json.loads(json.dumps(rec)) == rec
  sp = world["sp"].identity()
  assert sp["tokenizer"]["kind"] == "sentencepiece" and sp["tokenizer"]["files"] == ["tok.model"]
  assert sp["tokenizer"]["sha256"] != tok["sha256"] and sp["weights"] == rec["weights"]
  # Deterministic and cheap: a second build gives the same record.
  assert base.build_text_encoder(world["sp_cfg"]).identity() == sp


def test_mean_pooling_and_token_lengths(world):
  enc = base.build_text_encoder({**world["cfg"], "pooling": "mean"})
  tokens, mask, pooled = enc.encode_text(CAPTIONS[:4])
  want = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  np.testing.assert_allclose(pooled, want, rtol=1e-5, atol=1e-6)
  assert enc.identity()["pooling"] == "mean"
  lengths = enc.token_lengths(CAPTIONS)
  assert lengths[1] == 2 and lengths[2] > MAX_LEN  # the long caption would be cut
  with pytest.raises(ValueError, match="text.pooling: unknown pooling 'max'"):
    base.build_text_encoder({**world["cfg"], "pooling": "max"})


def test_diffusers_pipeline_layout(world, tmp_path):
  """text_encoder/ without tokenizer files: the sibling tokenizer/ folder is used."""
  root = world["root"]
  shutil.copytree(root / "clip", tmp_path / "text_encoder",
                  ignore=shutil.ignore_patterns("tokenizer*"))
  shutil.copytree(root / "bpe", tmp_path / "tokenizer")
  enc = base.build_text_encoder({**world["cfg"], "path": str(tmp_path / "text_encoder")})
  assert enc.tokenizer.path == str(tmp_path / "tokenizer")
  assert enc.identity()["tokenizer"]["files"] == ["vocab.json", "merges.txt"]
  np.testing.assert_array_equal(enc.tokenizer(SENTENCES)[0], world["bpe"].tokenizer(SENTENCES)[0])
  shutil.rmtree(tmp_path / "tokenizer")
  with pytest.raises(FileNotFoundError, match=r"looked in .*text_encoder, .*tokenizer for "
                     r"tokenizer.json, vocab.json \+ merges.txt, spiece.model"):
    base.build_text_encoder({**world["cfg"], "path": str(tmp_path / "text_encoder")})


# --- the paper's pairing: T5 SentencePiece ids into the CLIP tower ------------------------------


def test_protocol_shapes(world, encoded):
  enc = world["sp"]
  tokens, mask, pooled = encoded
  assert isinstance(enc, base.TextEncoder)
  assert enc.dim == WIDTH and enc.max_length == MAX_LEN
  assert tokens.shape == (5, MAX_LEN, WIDTH) and tokens.dtype == np.float32
  assert mask.shape == (5, MAX_LEN) and mask.dtype == bool
  assert pooled.shape == (5, WIDTH) and pooled.dtype == np.float32
  assert mask[1].sum() == 1 and mask[2].all()  # Empty caption is just </s>; long one truncated.


def test_tokens_and_pooled_match_transformers(world, encoded):
  m, enc = world["m"], world["sp"]
  tokens, mask, pooled = encoded
  ids, mask2 = enc.tokenizer(CAPTIONS)
  np.testing.assert_array_equal(mask, mask2)
  want_tokens, _ = hf_forward(m, ids, mask)
  assert rel_err(tokens, want_tokens) <= TOL
  last = mask.sum(axis=1) - 1  # The SentencePiece </s> (id 1) is not the tower's EOS id.
  assert rel_err(pooled, want_tokens[np.arange(5), last]) <= TOL
  # Real tokens do not depend on the padding (causal attention).
  want_nomask, _ = hf_forward(m, ids, np.ones_like(mask))
  assert rel_err(tokens[mask], want_nomask[mask]) <= TOL


def test_pooled_is_last_real_token(encoded):
  tokens, mask, pooled = encoded
  last = mask.sum(axis=1) - 1
  np.testing.assert_array_equal(pooled, tokens[np.arange(len(last)), last])


def test_chunking_matches_single(world, encoded):
  tokens, _, pooled = encoded  # 5 captions at batch_size 4: chunks of 4 and 1.
  t4, _, p4 = world["sp"].encode_text(CAPTIONS[4:])
  np.testing.assert_allclose(t4[0], tokens[4], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(p4[0], pooled[4], rtol=1e-5, atol=1e-5)


def test_empty_prompt_cached(world, encoded):
  enc = world["sp"]
  tokens, mask, pooled = enc.empty_prompt()
  assert tokens.shape == (1, MAX_LEN, WIDTH) and mask.sum() == 1
  np.testing.assert_allclose(pooled[0], encoded[2][1], rtol=1e-5, atol=1e-5)
  pooled[:] = 0  # Callers get copies: the cache is not mutated.
  assert np.abs(enc.empty_prompt()[2]).sum() > 0
  assert enc._empty is not None


def test_legacy_prefixed_full_clip_file(world, tmp_path, encoded):
  """4.x-style `text_model.` keys with the old position_ids buffer and vision extras."""
  root = world["root"]
  tensors = load_file(str(root / "clip" / "model.safetensors"))
  legacy = {"text_model." + k: v for k, v in tensors.items()}
  legacy["text_model.embeddings.position_ids"] = np.arange(MAX_LEN, dtype=np.int64)[None]
  legacy["vision_model.embeddings.class_embedding"] = np.zeros((8,), np.float32)
  legacy["logit_scale"] = np.zeros((), np.float32)
  save_file(legacy, str(tmp_path / "clip.safetensors"))
  enc = base.build_text_encoder({**world["sp_cfg"], "path": str(tmp_path / "clip.safetensors"),
                                 "config": str(root / "clip" / "config.json")})
  tokens, _, pooled = enc.encode_text(CAPTIONS[:4])
  np.testing.assert_allclose(tokens, encoded[0][:4], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(pooled, encoded[2][:4], rtol=1e-6, atol=1e-6)
  assert enc.identity()["weights"]["files"] == ["clip.safetensors", "config.json"]


# --- bad input ---------------------------------------------------------------------------------


def test_unsupported_config(world, tmp_path):
  root, cfg = world["root"], world["sp_cfg"]
  shutil.copytree(root / "clip", tmp_path / "c")
  conf = json.loads((tmp_path / "c" / "config.json").read_text())
  conf["model_type"] = "t5"
  (tmp_path / "c" / "config.json").write_text(json.dumps(conf))
  with pytest.raises(WeightImportError, match=r"c/config.json: model_type 't5'"):
    base.build_text_encoder({**cfg, "path": str(tmp_path / "c")})
  conf["model_type"], conf["hidden_act"] = "clip_text_model", "swiglu"
  (tmp_path / "c" / "config.json").write_text(json.dumps(conf))
  with pytest.raises(WeightImportError, match="hidden_act='swiglu'"):
    base.build_text_encoder({**cfg, "path": str(tmp_path / "c")})


def test_wrong_shape_and_missing_named(world, tmp_path):
  root = world["root"]
  tensors = load_file(str(root / "clip" / "model.safetensors"))
  tensors["encoder.layers.1.mlp.fc1.weight"] = np.zeros((32, 32), np.float32)
  del tensors["final_layer_norm.bias"]
  save_file(tensors, str(tmp_path / "model.safetensors"))
  shutil.copy(root / "clip" / "config.json", tmp_path / "config.json")
  with pytest.raises(WeightImportError) as e:
    base.build_text_encoder({**world["sp_cfg"], "path": str(tmp_path)})
  msg = str(e.value)
  assert str(tmp_path / "model.safetensors") in msg
  assert "encoder.layers.1.mlp.fc1.weight: checkpoint (32, 32), model expects (64, 32)" in msg
  assert "missing tensors (1): final_layer_norm.bias" in msg


def test_missing_files_and_limits(world, tmp_path):
  root, cfg = world["root"], world["sp_cfg"]
  (tmp_path / "config.json").write_text((root / "clip" / "config.json").read_text())
  with pytest.raises(WeightImportError, match="no weights file"):
    base.build_text_encoder({**cfg, "path": str(tmp_path)})
  with pytest.raises(ValueError, match="max_length: 32 exceeds.*max_position_embeddings 16"):
    base.build_text_encoder({**cfg, "max_length": 32})
  with pytest.raises(FileNotFoundError, match="nope.model"):
    base.build_text_encoder({**cfg, "tokenizer": str(tmp_path / "nope.model")})
  with pytest.raises(FileNotFoundError, match="text.tokenizer: not found: .*nope.bin"):
    base.build_text_encoder({**cfg, "tokenizer": str(tmp_path / "nope.bin")})
  with pytest.raises(ValueError, match="text.path: required for text.kind='clip'"):
    base.build_text_encoder({**cfg, "path": ""})
  with pytest.raises(ValueError, match="text.tokenizer_path: unknown field"):
    base.build_text_encoder({**cfg, "tokenizer_path": "x"})
  with pytest.raises(ValueError, match="text.kind: unknown encoder kind 'bert'"):
    base.build_text_encoder({**cfg, "kind": "bert"})
  (tmp_path / "tokenizer.json").write_text("{not json")
  with pytest.raises(ValueError, match="tokenizer.json is not a tokenizers JSON file"):
    base.build_text_encoder({**cfg, "tokenizer": str(tmp_path / "tokenizer.json")})


def test_width_differs_from_text_dim(world):
  with pytest.raises(ValueError, match=r"text.dim: the config says 64 but the encoder at .*clip "
                     r"has width 32; set --config.text.dim=32 and --config.model.text_dim=32"):
    base.build_text_encoder({**world["cfg"], "dim": 64})


def test_tokenizer_larger_than_vocab(world, tmp_path):
  root = world["root"]
  conf = json.loads((root / "clip" / "config.json").read_text())
  conf["vocab_size"] = 300
  shutil.copytree(root / "clip", tmp_path / "c")
  (tmp_path / "c" / "config.json").write_text(json.dumps(conf))
  tensors = load_file(str(root / "clip" / "model.safetensors"))
  tensors["embeddings.token_embedding.weight"] = tensors["embeddings.token_embedding.weight"][:300]
  save_file(tensors, str(tmp_path / "c" / "model.safetensors"))
  n = world["m"].config.vocab_size
  with pytest.raises(ValueError, match=rf"text.tokenizer: the tokenizer at .*c/tokenizer.json has "
                     rf"{n} tokens but the encoder at .*c has vocab_size 300"):
    base.build_text_encoder({**world["cfg"], "path": str(tmp_path / "c")})
