"""Clip features: motion, sharpness, consistency, text proxy, pluggable backends, both paths."""
import sys
import types

import cv2
import numpy as np
import pytest

from data_pipeline import config as config_lib
from data_pipeline import features as features_lib
from data_pipeline import filter as filter_lib
from data_pipeline import probe as probe_lib
from data_pipeline import stages
from data_pipeline import testvideos


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tv"))
  testvideos.standard_set(d)
  cfg = config_lib.get_config("tiny")
  ex = features_lib.FeatureExtractor(cfg.features)
  out = {}
  for name in ("static", "moving", "blurred", "cut"):
    row = probe_lib.probe_video(d, f"{name}.mp4", cfg)
    out[name] = stages.analyze_video(row, cfg, ex)[0]
  return cfg, ex, out


def test_motion_and_sharpness_are_sane(clips):
  _, _, out = clips
  static, moving, blurred = out["static"][0], out["moving"][0], out["blurred"][0]
  assert moving["motion"] > 0.05 > static["motion"]
  assert blurred["sharpness"] < 0.5 * moving["sharpness"]
  for r in (static, moving):
    assert r["temporal_consistency"] > 0.9
    assert (r["height"], r["width"], r["orientation"]) == (64, 64, "square")
    assert (r["analysis_height"], r["analysis_width"], r["num_sampled_frames"]) == (64, 64, 4)
    assert r["aesthetic_backend"] == "proxy_colorfulness_contrast"
    assert r["ocr_backend"] == "proxy_edge_blobs"


def test_temporal_consistency_drops_across_a_cut(clips):
  cfg, ex, out = clips
  a, b = out["cut"][0], out["cut"][1]
  assert a["end"] == b["start"] == 30
  # Frames sampled across the cut are dissimilar.
  frames = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in stages.uniform_frames(
      {**a, "end": b["end"]}, 4, 64)])
  assert features_lib.temporal_consistency(frames, 8) < a["temporal_consistency"] - 0.3


def test_text_proxy_sees_text():
  img = np.full((4, 96, 160, 3), 90, np.uint8)
  plain = features_lib.make_proxy_edge_blobs(12, 0.2)(img)
  for f in img:
    cv2.putText(f, "SUBTITLE TEXT", (8, 80), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
  texted = features_lib.make_proxy_edge_blobs(12, 0.2)(img)
  assert plain == 0.0 and texted > 0.02


def test_standalone_features_match_fused(clips):
  _, ex, out = clips
  row = out["moving"][0]
  clip = {k: row[k] for k in ("id", "path", "start", "end", "height", "width", "orientation")}
  alone = features_lib.features_for_clip(clip, ex)
  assert alone["sampled_indices"] == row["sampled_indices"]
  for k in ("motion", "sharpness", "temporal_consistency", "aesthetic"):
    assert alone[k] == pytest.approx(row[k], rel=0.05, abs=1e-3), k


def test_pluggable_backend_and_bad_spec():
  mod = types.ModuleType("fake_aesthetic_mod")
  mod.score = lambda frames: 7.5
  sys.modules["fake_aesthetic_mod"] = mod
  fcfg = config_lib.get_config("tiny").features
  fcfg.aesthetic_backend = "fake_aesthetic_mod:score"
  ex = features_lib.FeatureExtractor(fcfg)
  frames = np.zeros((3, 32, 32, 3), np.uint8)
  clip = dict(id="x", height=32, width=32, orientation="square")
  row = ex(frames, [0, 5, 10], clip)
  assert row["aesthetic"] == 7.5 and row["aesthetic_backend"] == "fake_aesthetic_mod:score"
  fcfg.ocr_backend = "not a spec"
  with pytest.raises(ValueError, match="ocr_backend"):
    features_lib.FeatureExtractor(fcfg)


def test_filter_is_pure_with_counts(clips):
  cfg, _, out = clips
  rows = [r for v in out.values() for r in v]
  fcfg = cfg.filter
  fcfg.min_sharpness = 20.0  # sharpness depends on content; the test clips have texture
  filtered, report = filter_lib.apply_filter(rows, fcfg)
  by_name = {r["relpath"]: r for r in filtered if r["start"] == 0}
  assert by_name["static.mp4"]["reject"] == "static"
  assert "blurry" in by_name["blurred.mp4"]["reject_reasons"]
  assert by_name["moving.mp4"]["keep"]
  assert report["kept"] + report["rejected"] == len(rows)
  assert sum(report["rejected_by_reason"].values()) == report["rejected"]
  fcfg.min_motion = 0.0
  fcfg.min_sharpness = 0.0
  _, loose = filter_lib.apply_filter(rows, fcfg)
  assert loose["kept"] > report["kept"]
  with pytest.raises(ValueError, match="lacks feature fields"):
    filter_lib.apply_filter([{"id": "a", "num_frames": 3}], fcfg)
