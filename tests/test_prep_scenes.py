"""Scene detection on the synthetic corpus: cuts vs ground truth, fades, min/max lengths; probe."""
import json
import os

import numpy as np
import pytest

from data_pipeline import config as config_lib
from data_pipeline import probe as probe_lib
from data_pipeline import scenes as scenes_lib
from data_pipeline import stages
from data_pipeline import synth
from data_pipeline import testvideos


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("synth"))
  synth.write_synthetic_videos(d, num_videos=12, seed=3, size=64, frames=48, cut_fraction=0.5,
                               fade_fraction=0.4)
  return d


@pytest.fixture(scope="module")
def analysed(corpus):
  cfg = config_lib.get_config("demo")  # the synthetic corpus's detector settings
  out = {}
  for rel in probe_lib.list_videos(corpus, cfg.run.video_extensions):
    row = probe_lib.probe_video(corpus, rel, cfg)
    assert row["reject"] is None, row
    with open(os.path.join(corpus, rel.replace(".mp4", ".json"))) as fh:
      truth = json.load(fh)
    clips, cuts = stages.analyze_video(row, cfg)
    out[rel] = (row, truth, clips, [c["frame"] for c in cuts])
  return cfg, out


def test_cuts_match_ground_truth(analysed):
  _, out = analysed
  n_cuts = 0
  for rel, (_, truth, _, cuts) in out.items():
    gt = [s["start_frame"] for s in truth["scenes"][1:]]
    n_cuts += len(gt)
    for g in gt:
      assert any(abs(c - g) <= 1 for c in cuts), (rel, gt, cuts)
    for c in cuts:
      assert any(abs(c - g) <= 1 for g in gt), f"{rel}: extra cut {c} (truth {gt})"
  assert n_cuts >= 3  # the corpus really has cuts


def test_fades_are_trimmed_and_clips_follow_shots(analysed):
  cfg, out = analysed
  n_fades = 0
  for rel, (row, truth, clips, _) in out.items():
    assert clips, rel
    fade = truth["fade_out_frames"]
    bounds = [(s["start_frame"], s["end_frame"]) for s in truth["scenes"]]
    for c in clips:
      assert any(s <= c["start"] and c["end"] <= e for s, e in bounds), (rel, c, bounds)
      assert c["num_frames"] >= cfg.scenes.min_clip_frames
      assert c["fps"] == [24, 1]
    if fade:
      n_fades += 1
      # Frames in the second half of the fade are below half brightness: never in a clip.
      assert max(c["end"] for c in clips) <= truth["num_frames"] - fade // 2, (rel, clips)
  assert n_fades >= 2


def test_split_segment_min_max_and_black():
  scfg = config_lib.get_config("demo").scenes
  scfg.min_clip_frames, scfg.max_clip_frames = 4, 10
  levels = np.full(40, 200.0)
  levels[20:23] = 0.0    # black frames split the shot
  levels[37:] = 60.0     # a dim tail (fade) is trimmed
  spans = scenes_lib.split_segment(0, 40, levels, 0, scfg)
  assert spans == [(0, 10), (10, 20), (23, 33), (33, 37)]
  assert scenes_lib.split_segment(0, 3, levels, 0, scfg) == []  # shorter than min


def test_combine_cuts():
  assert scenes_lib.combine_cuts([[10, 30], [11, 50]], "union", 1) == [10, 30, 50]
  assert scenes_lib.combine_cuts([[10, 30], [11, 50]], "intersection", 1) == [10]
  assert scenes_lib.attributed_cuts({"content": [10, 30], "transnetv2": [11]}, "union", 1) == [
      {"frame": 10, "detectors": ["content", "transnetv2"]},
      {"frame": 30, "detectors": ["content"]}]
  with pytest.raises(ValueError, match="combine"):
    scenes_lib.combine_cuts([[1]], "xor", 1)


def test_long_shot_is_split_streaming(tmp_path):
  cfg = config_lib.get_config("tiny")
  vids = testvideos.standard_set(str(tmp_path))
  row = probe_lib.probe_video(str(tmp_path), "cut.mp4", cfg)
  cfg.scenes.max_clip_frames = 12
  clips, cuts = scenes_lib.scenes_for_video(row, cfg.scenes, (64, 64))
  assert cuts == vids["cut"].cuts == [30]
  spans = [(c["start"], c["end"]) for c in clips]
  assert spans[:3] == [(0, 12), (12, 24), (30, 42)], spans
  assert all(e - s <= 12 for s, e in spans)


def test_probe_rejects_bad_files_and_reads_metadata(tmp_path):
  cfg = config_lib.get_config("demo")
  bad = testvideos.write_broken_files(str(tmp_path))
  testvideos.standard_set(str(tmp_path))
  rows = {os.path.basename(p): probe_lib.probe_video(str(tmp_path), os.path.basename(p), cfg)
          for p in bad.values()}
  assert rows["empty.mp4"]["reject"] == "empty_file"
  assert rows["corrupt.mp4"]["reject"] == "undecodable"
  assert rows["noframes.mkv"]["reject"] == "no_frames"
  assert probe_lib.probe_video(str(tmp_path), "nope.mp4", cfg)["reject"] == "missing_file"
  good = probe_lib.probe_video(str(tmp_path), "cut.mp4", cfg)
  assert good["reject"] is None and good["num_frames"] == 60 and good["fps"] == [24, 1]
  assert (good["height"], good["width"], good["orientation"]) == (64, 64, "square")
  assert probe_lib.orientation(720, 1280) == "landscape"
  assert probe_lib.orientation(1280, 720) == "portrait"


def test_cut_clip_to_file(tmp_path):
  cfg = config_lib.get_config("tiny")
  testvideos.standard_set(str(tmp_path))
  row = probe_lib.probe_video(str(tmp_path), "cut.mp4", cfg)
  clips, _ = scenes_lib.scenes_for_video(row, cfg.scenes, (64, 64))
  path = scenes_lib.cut_clip_to_file(clips[1], str(tmp_path / "clips"), "mpeg4")
  info = probe_lib.video_io.container_info(path)
  assert info["num_frames"] == clips[1]["num_frames"] == 30
