"""`stiv-prep run` end to end: bad files, shards, crash + resume, Beam DirectRunner, CLI, bench."""
import filecmp
import json
import os
import shutil

import numpy as np
import pytest

from data_pipeline import cli
from data_pipeline import config as config_lib
from data_pipeline import encode as encode_lib
from data_pipeline import manifest as mf
from data_pipeline import stages
from data_pipeline import synth
from data_pipeline import testvideos
from stiv_jax.data import reader

ARGS = ["--config=tiny", "--no-progress"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("videos"))
  synth.write_synthetic_videos(d, num_videos=6, seed=5, size=64, frames=48, cut_fraction=0.5,
                               fade_fraction=0.5)
  testvideos.write_broken_files(d)
  return d


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("run"))
  assert cli.main(["run", f"--input={corpus}", f"--output={out}"] + ARGS) == 0
  return out


def _shard_files(out):
  d = os.path.join(out, "shards")
  return sorted(f for f in os.listdir(d) if f.endswith(".tfrecord"))


def test_bad_files_rejected_rest_completes(full_run):
  probe = {r["relpath"]: r for r in mf.read_stage(full_run, "probe")}
  assert probe["empty.mp4"]["reject"] == "empty_file"
  assert probe["corrupt.mp4"]["reject"] == "undecodable"
  assert probe["noframes.mkv"]["reject"] == "no_frames"
  assert sum(r["reject"] is None for r in probe.values()) == 6
  with open(os.path.join(full_run, "summary.json")) as fh:
    summary = {s["stage"]: s for s in json.load(fh)}
  assert summary["probe"]["rejected_by_reason"] == {"empty_file": 1, "no_frames": 1,
                                                    "undecodable": 1}
  assert summary["dsg"]["dsg_video_i"] == 0.0  # sidecar captions are true captions
  assert summary["classify"]["categories"]["abstract_shapes"] == summary["classify"]["rows"]


def test_shards_hold_the_kept_clips_without_black_frames(full_run):
  encoded = [r for r in mf.read_stage(full_run, "encode") if stages.ok(r)]
  ds = reader.open_dataset(os.path.join(full_run, "shards"))
  assert len(ds) == len(encoded) >= 6
  cfg = config_lib.get_config("tiny")
  ids = set()
  for i in range(len(ds)):
    rec = ds.decode(i)
    ids.add(rec.clip_id)
    assert rec.latents.shape == (cfg.encode.num_frames, 8, 8, 4)
    assert rec.micro["num_frames"] == cfg.encode.num_frames and rec.micro["stride"] >= 1
    assert rec.micro["orig_height"] == 64 and rec.caption.startswith("a ")
    # PixelSpaceVAE latents are pooled RGB in [-1, 1]: a black frame is all -1.
    assert (rec.latents[..., :3].reshape(len(rec.latents), -1).max(axis=1) > -0.5).all()
  assert ids == {r["id"] for r in encoded}


def test_crash_and_resume_gives_identical_shards(corpus, full_run, tmp_path, monkeypatch):
  out = str(tmp_path / "crashed")
  calls = {"n": 0}
  orig = stages.EncodeWorker.process

  def crashing(self, row):
    calls["n"] += 1
    if calls["n"] == 3:
      raise KeyboardInterrupt  # like Ctrl-C mid-stage
    return orig(self, row)

  monkeypatch.setattr(stages.EncodeWorker, "process", crashing)
  with pytest.raises(KeyboardInterrupt):
    cli.main(["run", f"--input={corpus}", f"--output={out}"] + ARGS)
  with open(mf.partial_path(out, "encode"), "a") as fh:
    fh.write('{"id": "torn')  # a crash in the middle of a log write
  monkeypatch.setattr(stages.EncodeWorker, "process", orig)
  assert cli.main(["run", f"--input={corpus}", f"--output={out}"] + ARGS) == 0
  with open(os.path.join(out, "summary.json")) as fh:
    summary = {s["stage"]: s for s in json.load(fh)}
  assert summary["analyze"]["done_now"] == 0 and summary["encode"]["skipped_done"] == 2
  assert len(mf.read_jsonl(mf.partial_path(out, "encode"))) == summary["encode"]["items"]
  files = _shard_files(full_run)
  assert files and files == _shard_files(out)
  for f in files:
    assert filecmp.cmp(os.path.join(full_run, "shards", f), os.path.join(out, "shards", f),
                       shallow=False), f


def test_single_stage_commands_and_filter_rerun(full_run, tmp_path):
  out = str(tmp_path / "stages")
  shutil.copytree(full_run, out)
  assert cli.main(["filter", f"--output={out}", "--set", "filter.min_motion=100.0"] + ARGS) == 0
  rows = mf.read_stage(out, "filter")
  assert rows and all(r["reject"] == "static" for r in rows)
  assert cli.main(["features", f"--output={out}"] + ARGS) == 0  # standalone (seeking) path
  feats = mf.read_stage(out, "features")
  assert len(feats) == len(rows) and all("motion" in r for r in feats)
  with pytest.raises(SystemExit, match="unknown config field"):
    cli.main(["filter", f"--output={out}", "--set", "filter.nope=1"])


def test_parallel_workers_match_serial(corpus, full_run, tmp_path):
  out = str(tmp_path / "par")
  assert cli.main(["probe", f"--input={corpus}", f"--output={out}", "--workers=2"] + ARGS) == 0
  assert cli.main(["scenes", f"--output={out}", "--workers=2"] + ARGS) == 0
  par = sorted((r["id"], r["start"], r["end"]) for r in mf.read_stage(out, "scenes"))
  ser = sorted((r["id"], r["start"], r["end"]) for r in mf.read_stage(full_run, "scenes"))
  assert par == ser


def test_beam_direct_runner_writes_the_same_shards(corpus, full_run, tmp_path):
  from data_pipeline import beam_runner
  out = str(tmp_path / "beam")
  beam_runner.run(corpus, out, config_lib.get_config("tiny"))
  local = reader.open_dataset(os.path.join(full_run, "shards"))
  beam = reader.open_dataset(os.path.join(out, "shards"))
  assert sorted(beam.read(i) for i in range(len(beam))) == sorted(
      local.read(i) for i in range(len(local)))
  with open(os.path.join(out, "dsg_report.json")) as fh:
    assert json.load(fh)["dsg_video_s"] == 0.0


def test_encode_geometry():
  assert encode_lib.pick_bucket(720, 1280, ((64, 64), (48, 80), (80, 48))) == (48, 80)
  assert encode_lib.frame_indices(10, 20, 4, 5) == ([10, 13, 16, 19], 3)
  with pytest.raises(ValueError, match="num_frames"):
    encode_lib.frame_indices(0, 3, 4, 1)
  frames = np.zeros((2, 60, 100, 3), np.uint8)
  out, top, left = encode_lib.resize_crop(frames, (48, 48))
  assert out.shape == (2, 48, 48, 3) and (top, left) == (0, 16)


def test_cli_dispatch(tmp_path, capsys):
  assert cli.main([]) == 2
  assert cli.main(["bogus"]) == 2
  assert cli.main(["synth", f"--output={tmp_path}", "--num-videos=1", "--frames=8"]) == 0
  assert os.path.exists(tmp_path / "video_00000.mp4")


def test_bench_prints_ratio(capsys):
  from data_pipeline.bench import prep
  prep.main(["--num-videos=2", "--size=64", "--frames=24", "--repeats=1"])
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert result["ratio"] > 0 and result["clips"] >= 2
  assert {"decode", "cuts", "features", "encode"} <= set(result["stage_clips_per_s_per_core"])
