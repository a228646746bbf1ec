"""Caption, classification and DSG-Video on transformers backends (tiny random models the test
saves with save_pretrained, loaded from the folders as a user's are), batched; the rule-based
questions on general noun phrases; DSG reports that say how many captions were checkable;
caption sources and the no-caption rejection."""
import json
import os
import shutil

import numpy as np
import pytest

from data_pipeline import caption as caption_lib
from data_pipeline import classify as classify_lib
from data_pipeline import cli
from data_pipeline import config as config_lib
from data_pipeline import dsg as dsg_lib
from data_pipeline import manifest as mf
from data_pipeline import stages
from data_pipeline import testvideos
from data_pipeline.models import hf

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

WORDS = ("a an the is there in frame yes no answer or describe this video one detailed sentence "
         "red blue green sky plant dog man car square circle moving scene of with and category "
         "caption classify into exactly from list name only animals people nature vehicles food "
         "sports urban indoor art_and_animation abstract_shapes other every object mentioned per "
         "line as question asking whether visible lines").split()


def _tokenizer():
  from tokenizers import Tokenizer, models, pre_tokenizers
  specials = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "USER", "ASSISTANT"]
  vocab = {t: i for i, t in enumerate(specials + list(".,:?|'-/") + WORDS)}
  tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
  tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                              pre_tokenizers.Punctuation()])
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>",
                                             eos_token="</s>", pad_token="<pad>",
                                             unk_token="<unk>")
  tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
  return tok, vocab


def _text_config(vocab):
  return transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, max_position_embeddings=1024,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """Folders of a tiny causal LM and a tiny LLaVA-style VLM (random weights)."""
  root = tmp_path_factory.mktemp("hf")
  tok, vocab = _tokenizer()
  torch.manual_seed(0)
  llm_dir = str(root / "llm")
  transformers.LlamaForCausalLM(_text_config(vocab)).save_pretrained(llm_dir)
  tok.save_pretrained(llm_dir)
  vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         image_size=32, patch_size=8)
  cfg = transformers.LlavaConfig(vision_config=vision, text_config=_text_config(vocab),
                                 image_token_index=vocab["<image>"], vision_feature_layer=-1,
                                 vision_feature_select_strategy="default")
  vlm_dir = str(root / "vlm")
  transformers.LlavaForConditionalGeneration(cfg).save_pretrained(vlm_dir)
  template = ("{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
              "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}"
              "{% endfor %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
  processor = transformers.LlavaProcessor(
      image_processor=transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                                      crop_size={"height": 32, "width": 32}),
      tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
      num_additional_image_tokens=1, chat_template=template)
  processor.save_pretrained(vlm_dir)
  return {"llm": llm_dir, "vlm": vlm_dir}


def test_llm_and_vlm_backends_run_batched(models):
  llm = hf.LocalLLM(models["llm"], max_new_tokens=4, batch_size=2)
  prompts = ["describe this video", "a red car", "the sky is blue"]
  out = llm.complete_batch(prompts)
  assert len(out) == 3 and all(isinstance(o, str) for o in out)
  assert out == llm.complete_batch(prompts)  # greedy: deterministic
  cats = config_lib.get_config().classify.categories
  assert classify_lib.LLMClassifier(llm, cats).classify("a red car") in cats
  vlm = hf.LocalVLM(models["vlm"], max_new_tokens=6, batch_size=3)
  frames = np.random.default_rng(0).integers(0, 255, (2, 40, 60, 3), dtype=np.uint8)
  texts = vlm.generate([list(frames), list(frames[:1])], ["describe this video", "a dog"])
  assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
  vqa = hf.VLMYesNo(vlm)
  qs = dsg_lib.RuleBasedQuestionGenerator(["red", "blue"], ["square"]).questions(
      "a man with a red car under a blue sky")
  answers = vqa.answer_batch(frames, qs)
  assert [q.object for q in qs] == ["man", "red car", "blue sky"]
  assert [len(a) for a in answers] == [2, 2, 2]
  assert all(isinstance(x, bool) for a in answers for x in a)
  with pytest.raises(ValueError, match="caption.vlm_path: '/nope' is not a local model folder"):
    hf.LocalVLM("/nope", field="caption.vlm_path")


def test_rule_based_questions_on_general_noun_phrases():
  qg = dsg_lib.RuleBasedQuestionGenerator(["red", "blue", "green", "white"], ["square"])
  assert [q.object for q in qg.questions("blue sky")] == ["blue sky"]
  assert [q.object for q in qg.questions("a green plant")] == ["green plant"]
  qs = qg.questions("Two dogs running on the beach under a blue sky with white clouds.")
  assert [q.object for q in qs] == ["dog", "beach", "blue sky", "white cloud"]
  assert qs[2].color == "blue" and qs[2].head == "sky" and qs[2].shape is None
  assert qg.questions("a reddish moving scene") == []


def test_dsg_report_counts_checkable_captions_and_never_a_silent_zero():
  cfg = config_lib.get_config().dsg
  qgen = dsg_lib.build_question_generator(cfg)
  vqa = dsg_lib.build_vqa(cfg)  # synthetic: only shapes are checkable
  frames = np.zeros((2, 32, 32, 3), np.uint8)
  rows = [dsg_lib.evaluate_caption(c, frames, qgen, vqa)
          for c in ("blue sky", "a green plant", "a reddish moving scene")]
  assert [r["dsg_checkable"] for r in rows] == [False, False, False]
  assert rows[0]["dsg_objects"][0]["checked"] is False
  rep = dsg_lib.dsg_report(rows)
  assert rep["checked"] == "0 of 3 checkable"
  assert rep["dsg_video_i"] is None and rep["dsg_video_s"] is None
  assert rep["caption_richness"] == pytest.approx(2 / 3)
  mixed = dsg_lib.dsg_report(rows + [dsg_lib.evaluate_caption("a red square", frames, qgen,
                                                               vqa)])
  assert mixed["checked"] == "1 of 4 checkable" and mixed["dsg_video_i"] == 1.0


def test_no_caption_is_rejected_with_the_reason_unless_a_fallback_is_named(tmp_path):
  src = testvideos.real_clip_path("carphone")
  path = str(tmp_path / "carphone.mp4")
  shutil.copy(src, path)
  row = {"id": "c", "path": path, "start": 0, "end": 40, "height": 144, "width": 193,
         "rotation": 0, "sample_aspect": [128, 117]}
  cfg = config_lib.get_config()
  out = stages.CaptionWorker(cfg)(row)[0]
  assert out["reject"] == "no_caption" and out["caption_source"] is None
  assert path in out["error"] and "sidecar" in out["error"] and "missing" in out["error"]
  cfg.caption.fallback = "stub"
  out = stages.CaptionWorker(cfg)(row)[0]
  assert out["reject"] is None and out["caption_source"] == "stub"
  with open(str(tmp_path / "carphone.json"), "w") as fh:
    json.dump({"caption": "a man in a car"}, fh)
  out = stages.CaptionWorker(cfg)(row)[0]
  assert (out["caption"], out["caption_source"]) == ("a man in a car", "sidecar")
  assert caption_lib.build_captioner(cfg.caption).name == "sidecar+stub"


def test_prep_run_with_model_backends_end_to_end(models, tmp_path):
  videos = tmp_path / "videos"
  videos.mkdir()
  shutil.copy(testvideos.real_clip_path("carphone"), videos / "carphone.mp4")
  out = str(tmp_path / "out")
  sets = [f"caption.backend=vlm", f"caption.vlm_path={models['vlm']}",
          "caption.vlm_max_new_tokens=6", "caption.num_frames=3",
          "classify.backend=llm", f"classify.llm_path={models['llm']}",
          "dsg.question_backend=llm", f"dsg.llm_path={models['llm']}",
          "dsg.llm_max_new_tokens=8", "dsg.vqa_backend=vlm", f"dsg.vlm_path={models['vlm']}",
          "scenes.detectors=('content','adaptive','threshold')", "features.ocr_backend=proxy",
          "filter.min_motion=0.0", "filter.min_sharpness=0.0", "scenes.max_clip_frames=60"]
  assert cli.main(["run", f"--input={videos}", f"--output={out}", "--no-progress"]
                  + [f"--set={s}" for s in sets]) == 0
  captioned = mf.read_stage(out, "caption")
  assert captioned and all(r["caption_backend"] == "vlm" for r in captioned)
  assert all(r["caption_source"] == "vlm" for r in captioned if not r["reject"])
  ok = [r for r in mf.read_stage(out, "classify") if stages.ok(r)]
  cats = config_lib.get_config().classify.categories
  assert ok and all(r["category"] in cats and r["classify_backend"] == "llm" for r in ok)
  with open(os.path.join(out, "dsg_report.json")) as fh:
    rep = json.load(fh)
  assert rep["checked"].endswith(f"of {rep['captions']} checkable") and rep["captions"] == len(ok)
  with open(os.path.join(out, "cuts_report.json")) as fh:
    cuts = json.load(fh)
  assert cuts["videos"]["carphone.mp4"] == [] and cuts["detectors"] == [
      "content", "adaptive", "threshold"]
