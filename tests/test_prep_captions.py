"""Captioning backends, caption classification and the DSG-Video hallucination check."""
import json

import numpy as np
import pytest

from data_pipeline import caption as caption_lib
from data_pipeline import classify as classify_lib
from data_pipeline import config as config_lib
from data_pipeline import dsg as dsg_lib
from data_pipeline import probe as probe_lib
from data_pipeline import stages
from data_pipeline import synth


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("synth"))
  synth.write_synthetic_videos(d, num_videos=8, seed=11, size=64, frames=48, cut_fraction=0.5,
                               fade_fraction=0.25)
  cfg = config_lib.get_config("demo")  # the synthetic corpus's detector settings
  cap = stages.CaptionWorker(cfg)
  rows = []
  for rel in probe_lib.list_videos(d, cfg.run.video_extensions):
    video = probe_lib.probe_video(d, rel, cfg)
    for clip in stages.analyze_video(video, cfg)[0]:
      rows.extend(cap(clip))
  return cfg, d, rows


def test_sidecar_caption_follows_the_scene(captioned):
  _, d, rows = captioned
  assert len(rows) >= 9
  for r in rows:
    with open(r["path"].replace(".mp4", ".json")) as fh:
      truth = json.load(fh)
    scene = [s for s in truth["scenes"] if s["start_frame"] <= r["start"] < s["end_frame"]][0]
    assert r["caption"] == scene["caption"] and r["reject"] is None


def test_pick_sidecar_formats_and_errors():
  doc = {"captions": [{"start": 0, "end": 10, "caption": "a"}, {"start": 10, "end": 30,
                                                                "caption": "b"}]}
  assert caption_lib.pick_sidecar_caption(doc, 12, 20, "x") == "b"
  assert caption_lib.pick_sidecar_caption({"caption": "c"}, 0, 5, "x") == "c"
  with pytest.raises(ValueError, match="x: captions\\[0\\] has no 'caption'"):
    caption_lib.pick_sidecar_caption({"captions": [{"start": 0}]}, 0, 1, "x")


def test_stub_is_deterministic_and_vlm_needs_local_weights():
  frames = np.zeros((4, 8, 8, 3), np.uint8)
  frames[..., 2] = 200
  stub = caption_lib.StubCaptioner()
  assert stub.caption(frames, "p", {}) == stub.caption(frames.copy(), "p", {}) == (
      "a bluish still scene")
  cfg = config_lib.get_config().caption
  cfg.backend, cfg.vlm_path = "vlm", "/nonexistent/model"
  with pytest.raises(ValueError, match="vlm_path"):
    caption_lib.build_captioner(cfg)


def test_keyword_and_llm_classifiers():
  cats = config_lib.get_config().classify.categories
  kw = classify_lib.KeywordClassifier(cats)
  assert kw.classify("a red square moving left") == "abstract_shapes"
  assert kw.classify("two dogs running on the beach with a dog") == "animals"
  assert kw.classify("zzz") == "other"

  class FakeLLM:
    def complete(self, prompt):
      assert "Category:" in prompt and "vehicles" in prompt
      return " Vehicles, I think."

  assert classify_lib.LLMClassifier(FakeLLM(), cats).classify("a car") == "vehicles"
  rep = classify_lib.distribution_report(cats, [{"category": "animals"}] * 3 + [
      {"category": "other"}])
  assert rep["counts"]["animals"] == 3 and rep["fractions"]["other"] == 0.25
  assert set(rep["counts"]) == set(cats)


def test_rule_based_questions():
  cfg = config_lib.get_config().dsg
  qg = dsg_lib.RuleBasedQuestionGenerator(list(cfg.palette.keys()), cfg.shapes)
  qs = qg.questions("A small red square and two blue circles next to a triangle.")
  assert [q.object for q in qs] == ["red square", "blue circle", "triangle"]
  assert qs[0].text == "Is there a red square in the frame?"


def _swap(caption, words, cfg):
  """Replaces the caption's color (or shape) by another one."""
  toks = caption.split()
  for i, t in enumerate(toks):
    if t in words:
      toks[i] = [w for w in words if w != t][0]
  return " ".join(toks)


def test_dsg_video_zero_for_true_positive_for_wrong(captioned):
  cfg, _, rows = captioned
  dsg = stages.DSGWorker(cfg)
  true = [dsg(r)[0] for r in rows]
  rep = dsg_lib.dsg_report(true)
  assert rep["objects"] == len(rows)
  assert rep["dsg_video_i"] == 0.0 and rep["dsg_video_s"] == 0.0, [
      (r["caption"], r["dsg_objects"]) for r in true if r["dsg_hallucinated"]]
  colors, shapes = list(cfg.dsg.palette.keys()), list(cfg.dsg.shapes)
  wrong_color = dsg_lib.dsg_report([dsg({**r, "caption": _swap(r["caption"], colors, cfg)})[0]
                                    for r in rows])
  wrong_shape = dsg_lib.dsg_report([dsg({**r, "caption": _swap(r["caption"], shapes, cfg)})[0]
                                    for r in rows])
  assert wrong_color["dsg_video_i"] > 0.8 and wrong_color["dsg_video_s"] > 0.8
  assert wrong_shape["dsg_video_i"] > 0.8 and wrong_shape["dsg_video_s"] > 0.8


def test_dsg_report_math():
  rows = [dict(dsg_num_objects=2, dsg_num_hallucinated=1, dsg_hallucinated=True),
          dict(dsg_num_objects=2, dsg_num_hallucinated=0, dsg_hallucinated=False)]
  rep = dsg_lib.dsg_report(rows)
  assert rep["dsg_video_i"] == 0.25 and rep["dsg_video_s"] == 0.5
