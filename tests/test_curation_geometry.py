"""Display geometry and time: VFR frame indices agree between scene detection and decoding,
non-square pixels give the display aspect, rotation metadata is kept; `stiv-prep run` over
such clips encodes every span it keeps."""
import os

import numpy as np
import pytest

from data_pipeline import cli
from data_pipeline import config as config_lib
from data_pipeline import encode as encode_lib
from data_pipeline import manifest as mf
from data_pipeline import probe as probe_lib
from data_pipeline import stages
from data_pipeline import testvideos
from stiv_jax import video_io


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("geometry"))
  vfr, pts = testvideos.write_vfr_video(d)
  return {"dir": d, "vfr": vfr, "pts": pts, "anamorphic": testvideos.write_anamorphic_video(d),
          "rotated": testvideos.write_rotated_video(d)}


def _probe(path):
  return probe_lib.probe_video(os.path.dirname(path), os.path.basename(path),
                               config_lib.get_config("tiny"))


def test_vfr_indices_are_presentation_order_and_every_span_decodes(clips):
  row = _probe(clips["vfr"])
  assert row["reject"] is None and row["vfr"] and row["num_frames"] == len(clips["pts"]) == 60
  seconds = [video_io.frame_seconds(clips["vfr"], i) for i in range(60)]
  np.testing.assert_allclose(seconds, np.asarray(clips["pts"]) / 48, atol=1e-4)
  every = np.stack([f for _, f in video_io.iter_frames(clips["vfr"])])
  assert len(every) == 60
  cfg = config_lib.get_config("tiny")
  cfg.scenes.max_clip_frames = 20  # several spans, the last one at the end of the stream
  rows, _ = stages.analyze_video(row, cfg)
  assert rows and rows[-1]["end"] > 50
  for r in rows:
    idx = list(range(r["start"], r["end"]))
    got = video_io.read_display_frames(r["path"], idx, rotation=r["rotation"],
                                       sample_aspect=r["sample_aspect"])
    np.testing.assert_array_equal(got, every[r["start"]:r["end"]])  # seek == sequential
    assert r["end_seconds"] > r["start_seconds"]
  # The span the issue saw fail: its last frames, by presentation timestamp.
  np.testing.assert_array_equal(video_io.read_frames(clips["vfr"], [55, 58, 59]),
                                every[[55, 58, 59]])


def test_non_square_pixels_give_the_display_aspect(clips):
  row = _probe(clips["anamorphic"])
  assert (row["height"], row["width"], row["sample_aspect"]) == (72, 88, [16, 11])
  assert (row["display_height"], row["display_width"]) == (72, 128)
  frames = video_io.read_display_frames(clips["anamorphic"], [0, 10],
                                        sample_aspect=row["sample_aspect"], rotation=0)
  assert frames.shape == (2, 72, 128, 3)
  assert frames.shape == video_io.read_display_frames(clips["anamorphic"], [0, 10]).shape
  buckets = ((64, 64), (36, 64), (64, 36))
  assert encode_lib.pick_bucket(row["display_height"], row["display_width"], buckets) == (36, 64)
  assert video_io.display_size(576, 704, [16, 11]) == (576, 1024)


def test_rotation_is_kept_and_applied(clips):
  row = _probe(clips["rotated"])
  assert (row["height"], row["width"], row["rotation"]) == (48, 80, 90)
  assert (row["display_height"], row["display_width"], row["orientation"]) == (80, 48, "portrait")
  stored = video_io.read_video(clips["rotated"])[:3]
  shown = video_io.read_display_frames(clips["rotated"], [0, 1, 2])
  np.testing.assert_array_equal(shown, np.rot90(stored, k=1, axes=(1, 2)))
  small = video_io.read_display_frames(clips["rotated"], [0], size=(40, 24))
  assert small.shape == (1, 40, 24, 3)
  rows, _ = stages.analyze_video(row, config_lib.get_config("tiny"),
                                 stages.features_lib.FeatureExtractor(
                                     config_lib.get_config("tiny").features))
  assert rows and all(r["analysis_height"] > r["analysis_width"] for r in rows)
  assert rows[0]["rotation"] == 90 and rows[0]["height"] == 80


def test_prep_run_keeps_and_encodes_every_span(clips, tmp_path):
  out = str(tmp_path / "out")
  sets = ["filter.min_motion=0.0", "filter.min_sharpness=0.0", "caption.fallback=stub",
          "scenes.max_clip_frames=24"]
  assert cli.main(["run", f"--input={clips['dir']}", f"--output={out}", "--config=tiny",
                   "--no-progress"] + [f"--set={s}" for s in sets]) == 0
  probe = {r["relpath"]: r for r in mf.read_stage(out, "probe")}
  assert all(r["reject"] is None for r in probe.values()), probe
  kept = [r for r in mf.read_stage(out, "filter") if r["keep"]]
  encoded = {r["id"]: r for r in mf.read_stage(out, "encode")}
  assert {r["relpath"] for r in kept} == set(probe)
  for r in kept:
    assert encoded[r["id"]].get("reject") in (None, "too_short_for_encode"), encoded[r["id"]]
    assert encoded[r["id"]]["caption_source"] == "stub"
  assert any(r["relpath"] == "vfr.mp4" and not encoded[r["id"]].get("reject") for r in kept)
