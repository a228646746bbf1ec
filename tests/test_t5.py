"""T5 encoder: relative-position buckets and the last hidden state against transformers'
T5EncoderModel (v1.1 gated-GELU, original ReLU) and UMT5EncoderModel on tiny random models saved
with save_pretrained, a full T5ForConditionalGeneration checkpoint (decoder ignored), its
SentencePiece tokenizer against transformers' T5Tokenizer, bf16, identity, bad input."""
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import sentencepiece as spm  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from stiv_jax.models.encoders import base  # noqa: E402
from stiv_jax.models.encoders import t5 as t5_lib  # noqa: E402
from stiv_jax.models.encoders import tokenizer as tok_lib  # noqa: E402
from stiv_jax.models.encoders.weights import WeightImportError  # noqa: E402

TOL = 1e-4
MAX_LEN = 24
WIDTH = 32
SENTENCES = ["A red dog is running in the park, slowly.", "", "Héllo, WORLD!  two  spaces",
             "The blue cat is sleeping in the snow, slowly. " * 4, "東京 🙂 café at night",
             "  lead and trail  ", "One green horse"]
CORPUS = [f"{c} {a} is {o} in the {s}, slowly." for c in ("A red", "The blue", "One green",
                                                        "a tiny", "Huge")
          for a in ("dog", "cat", "horse", "bird", "car")
          for o in ("running", "sleeping", "eating", "jumping")
          for s in ("park", "snow", "city", "café at night")]
# name -> (transformers classes, feed_forward_proj)
VARIANTS = {"t5": ("T5EncoderModel", "T5Config", "gated-gelu"),
            "umt5": ("UMT5EncoderModel", "UMT5Config", "gated-gelu"),
            "t5_relu": ("T5EncoderModel", "T5Config", "relu")}


def rel_err(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def hf_config(name, vocab, **kw):
  _, config_cls, proj = VARIANTS[name]
  return getattr(transformers, config_cls)(
      vocab_size=vocab, d_model=WIDTH, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=1,
      num_heads=4, relative_attention_num_buckets=16, relative_attention_max_distance=20,
      feed_forward_proj=proj, **kw)


def perturb_norms(m):
  with torch.no_grad():  # Non-trivial RMS scales and position biases so they matter.
    for name, p in m.named_parameters():
      if "layer_norm" in name:
        p.add_(0.2 * torch.randn_like(p))
      if "relative_attention_bias" in name:
        p.normal_(0.0, 1.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """A trained SentencePiece model; per variant a tiny transformers encoder saved with
  save_pretrained and spiece.model beside it (as hub folders ship it); our encoders."""
  root = tmp_path_factory.mktemp("t5")
  (root / "corpus.txt").write_text("\n".join(CORPUS))
  sp_path = tok_lib.train_tokenizer(str(root / "corpus.txt"), str(root / "sp"), 100,
                                    hard_vocab_limit=False)
  vocab = spm.SentencePieceProcessor(model_file=sp_path).GetPieceSize() + 8  # + sentinels
  refs, encoders = {}, {}
  for i, name in enumerate(VARIANTS):
    torch.manual_seed(i)
    m = getattr(transformers, VARIANTS[name][0])(hf_config(name, vocab)).eval()
    perturb_norms(m)
    m.save_pretrained(str(root / name))
    shutil.copy(sp_path, root / name / "spiece.model")
    refs[name] = m
    encoders[name] = base.build_text_encoder(
        {"kind": "t5", "path": str(root / name), "dim": WIDTH, "max_length": MAX_LEN,
         "batch_size": 4})
  return dict(root=root, sp_path=sp_path, vocab=vocab, refs=refs, encoders=encoders)


def hf_hidden(m, ids, mask):
  with torch.no_grad():
    return m(input_ids=torch.from_numpy(ids).long(),
             attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()


@pytest.mark.parametrize("buckets,distance", [(32, 128), (16, 20)])
def test_buckets_match_transformers(buckets, distance):
  L = 300
  ours = t5_lib.relative_position_buckets(L, buckets, distance)
  rel = torch.arange(L)[None, :] - torch.arange(L)[:, None]
  want = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
      rel, bidirectional=True, num_buckets=buckets, max_distance=distance).numpy()
  np.testing.assert_array_equal(ours, want)
  umt5 = transformers.models.umt5.modeling_umt5.UMT5Attention(
      transformers.UMT5Config(relative_attention_num_buckets=buckets,
                              relative_attention_max_distance=distance, d_model=8, d_kv=2,
                              num_heads=4), has_relative_attention_bias=True)
  np.testing.assert_array_equal(ours, umt5._relative_position_bucket(rel).numpy())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_last_hidden_state_matches_transformers(world, name):
  enc, m = world["encoders"][name], world["refs"][name]
  tokens, mask, pooled = enc.encode_text(SENTENCES)  # 7 captions at batch 4: chunks 4 and 3
  ids, _ = enc.tokenizer(SENTENCES)
  want = hf_hidden(m, ids, mask)
  err = rel_err(tokens, want)
  print(f"t5 parity {name}: relative error {err:.2e}")
  assert err <= TOL, err
  assert rel_err(tokens[mask], want[mask]) <= TOL
  # Pooled: the mean over real tokens (T5 has no pooled output).
  want_pooled = (want * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  assert rel_err(pooled, want_pooled) <= TOL
  assert tokens.shape == (7, MAX_LEN, WIDTH) and pooled.shape == (7, WIDTH)
  assert tokens.dtype == pooled.dtype == np.float32 and mask.dtype == bool
  assert isinstance(enc, base.TextEncoder) and enc.pooling == "mean"


def test_umt5_has_a_bias_per_layer(world):
  """UMT5 stores and uses a table per layer, T5 v1.1 only layer 0's (the parity test above
  would fail if a layer used another's: every table is random)."""
  key = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"
  for name, per_layer in (("umt5", True), ("t5", False)):
    path = str(world["root"] / name)
    assert (key in load_file(path + "/model.safetensors")) == per_layer
    model = t5_lib.load_t5_encoder_model(path)
    assert model.cfg.bias_per_layer == per_layer
    assert hasattr(model.encoder.block[1].layer[0].SelfAttention,
                   "relative_attention_bias") == per_layer


def test_full_checkpoint_decoder_ignored(world, tmp_path):
  """A T5ForConditionalGeneration save (decoder, untied lm_head) gives the encoder's output."""
  torch.manual_seed(7)
  full = transformers.T5ForConditionalGeneration(
      hf_config("t5", world["vocab"], tie_word_embeddings=False)).eval()
  full.encoder.load_state_dict(world["refs"]["t5"].encoder.state_dict())
  full.shared.load_state_dict(world["refs"]["t5"].shared.state_dict())
  full.save_pretrained(str(tmp_path / "full"))
  assert any(k.startswith("decoder.") for k in load_file(str(tmp_path / "full" /
                                                              "model.safetensors")))
  enc = base.build_text_encoder({"kind": "t5", "path": str(tmp_path / "full"), "dim": WIDTH,
                                 "max_length": MAX_LEN, "batch_size": 4,
                                 "tokenizer": world["sp_path"]})
  tokens, _, pooled = enc.encode_text(SENTENCES)
  ref_tokens, _, ref_pooled = world["encoders"]["t5"].encode_text(SENTENCES)
  np.testing.assert_allclose(tokens, ref_tokens, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(pooled, ref_pooled, rtol=1e-6, atol=1e-6)


def test_legacy_tied_embedding_key(world, tmp_path):
  """Old saves name the embedding encoder.embed_tokens.weight (alone, or beside shared)."""
  tensors = load_file(str(world["root"] / "t5" / "model.safetensors"))
  shutil.copytree(world["root"] / "t5", tmp_path / "m")
  tensors["encoder.embed_tokens.weight"] = tensors.pop("shared.weight")
  save_file(tensors, str(tmp_path / "m" / "model.safetensors"))
  enc = base.build_text_encoder({"kind": "t5", "path": str(tmp_path / "m"), "dim": WIDTH,
                                 "max_length": MAX_LEN, "batch_size": 4})
  np.testing.assert_allclose(enc.encode_text(SENTENCES[:4])[0],
                             world["encoders"]["t5"].encode_text(SENTENCES[:4])[0], atol=1e-6)


def test_bfloat16_close_to_float32(world):
  root = world["root"]
  enc = base.build_text_encoder({"kind": "t5", "path": str(root / "t5"), "dim": WIDTH,
                                 "max_length": MAX_LEN, "batch_size": 4, "dtype": "bfloat16"})
  tokens, mask, pooled = enc.encode_text(SENTENCES[:4])
  ref, _, ref_pooled = world["encoders"]["t5"].encode_text(SENTENCES[:4])
  assert tokens.dtype == np.float32 and enc._state["shared"]["weight"][...].dtype.name == "bfloat16"
  assert rel_err(tokens[mask], ref[mask]) < 3e-2 and rel_err(pooled, ref_pooled) < 3e-2


def test_tokenizer_matches_transformers(world, tmp_path):
  """spiece.model (sentencepiece) and a tokenizer.json-only folder (the `tokenizers` path) give
  transformers' T5Tokenizer ids and masks (built from the same pieces and scores)."""
  sp = spm.SentencePieceProcessor(model_file=world["sp_path"])
  ref = transformers.T5Tokenizer(vocab=[(sp.IdToPiece(i), sp.GetScore(i))
                                        for i in range(sp.GetPieceSize())], extra_ids=0)
  ref.save_pretrained(str(tmp_path / "json"))
  want = ref(SENTENCES, padding="max_length", truncation=True, max_length=MAX_LEN)
  lengths = [len(r) for r in ref(SENTENCES)["input_ids"]]
  ours_sp = world["encoders"]["t5"].tokenizer
  ours_json = tok_lib.load_tokenizer("", str(tmp_path / "json"), "t5", MAX_LEN)
  assert ours_sp.kind == "sentencepiece" and ours_json.kind == "unigram"
  for ours in (ours_sp, ours_json):
    ids, mask = ours(SENTENCES)
    np.testing.assert_array_equal(ids, np.array(want["input_ids"]))
    np.testing.assert_array_equal(mask, np.array(want["attention_mask"], bool))
    assert ours.token_lengths(SENTENCES) == lengths
    assert (ours.pad_id, ours.eos_id) == (ref.pad_token_id, ref.eos_token_id) == (0, 1)
  assert max(lengths) > MAX_LEN  # one caption is truncated, its </s> kept
  assert ids[3, -1] == 1 and mask[3].all()


def test_identity_and_token_lengths(world):
  enc = world["encoders"]["umt5"]
  rec = enc.identity()
  assert list(rec) == ["kind", "dim", "max_length", "pooling", "weights", "tokenizer"]
  assert (rec["kind"], rec["dim"], rec["max_length"], rec["pooling"]) == ("t5", WIDTH, MAX_LEN,
                                                                          "mean")
  assert rec["weights"]["files"] == ["config.json", "model.safetensors", "spiece.model"]
  tok = rec["tokenizer"]
  assert (tok["kind"], tok["files"], tok["pad_id"], tok["eos_id"], tok["bos_id"]) == (
      "sentencepiece", ["spiece.model"], 0, 1, None)
  assert tok["sha256"] == world["encoders"]["t5"].identity()["tokenizer"]["sha256"]
  assert rec["weights"]["sha256"] != world["encoders"]["t5"].identity()["weights"]["sha256"]
  assert json.loads(json.dumps(rec)) == rec
  lengths = enc.token_lengths(SENTENCES)
  assert lengths[1] == 1 and lengths[3] > MAX_LEN
  eos = base.build_text_encoder({"kind": "t5", "path": str(world["root"] / "t5"), "dim": WIDTH,
                                 "max_length": MAX_LEN, "batch_size": 4, "pooling": "eos"})
  assert eos.identity()["pooling"] == "eos"


# --- bad input ---------------------------------------------------------------------------------


def test_bad_configs_named(world, tmp_path):
  shutil.copytree(world["root"] / "t5", tmp_path / "m")
  conf = json.loads((tmp_path / "m" / "config.json").read_text())
  cfg = {"kind": "t5", "path": str(tmp_path / "m"), "dim": WIDTH, "max_length": MAX_LEN}
  for field, value, message in (
      ("model_type", "bert", r"m/config.json: model_type 'bert' is not supported"),
      ("feed_forward_proj", "gated-swish", r"feed_forward_proj='gated-swish': activation "
       "'swish'"),
      ("feed_forward_proj", "double-gated-gelu", r"feed_forward_proj='double-gated-gelu' is not "
       "supported")):
    (tmp_path / "m" / "config.json").write_text(json.dumps({**conf, field: value}))
    with pytest.raises(WeightImportError, match=message):
      base.build_text_encoder(cfg)
  (tmp_path / "m" / "config.json").write_text(json.dumps(conf))
  with pytest.raises(ValueError, match=r"text.dim: the config says 64 but the encoder at .*m has "
                     r"width 32; set --config.text.dim=32 and --config.model.text_dim=32"):
    base.build_text_encoder({**cfg, "dim": 64})
  tensors = load_file(str(tmp_path / "m" / "model.safetensors"))
  del tensors["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"]
  save_file(tensors, str(tmp_path / "m" / "model.safetensors"))
  with pytest.raises(WeightImportError, match=r"m/model.safetensors: .*missing tensors \(1\): "
                     r"encoder.block.1.layer.1.DenseReluDense.wi_1.weight"):
    base.build_text_encoder(cfg)


def test_tokenizer_missing_or_too_large(world, tmp_path):
  shutil.copytree(world["root"] / "t5", tmp_path / "m")
  (tmp_path / "m" / "spiece.model").unlink()
  cfg = {"kind": "t5", "path": str(tmp_path / "m"), "dim": WIDTH, "max_length": MAX_LEN}
  with pytest.raises(FileNotFoundError, match=r"looked in .*m for spiece.model, tokenizer.json; "
                     "set --config.text.tokenizer"):
    base.build_text_encoder(cfg)
  torch.manual_seed(0)
  small = transformers.T5EncoderModel(hf_config("t5", 16))
  small.save_pretrained(str(tmp_path / "small"))
  n = spm.SentencePieceProcessor(model_file=world["sp_path"]).GetPieceSize()
  with pytest.raises(ValueError, match=rf"text.tokenizer: the tokenizer at .*sp.model has {n} "
                     rf"tokens but the encoder at .*small has vocab_size 16"):
    base.build_text_encoder({**cfg, "path": str(tmp_path / "small"),
                             "tokenizer": world["sp_path"]})
