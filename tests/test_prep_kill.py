"""A `stiv-prep run` killed (SIGKILL) at three points and resumed ends with shards whose every
file is byte-identical (sha256) to an uninterrupted run's."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from data_pipeline import cli
from data_pipeline import synth
from helpers import tree_hashes

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config=tiny", "--no-progress"]
# Kill once each stage's progress log shows work, a random moment later (seeded).
KILL_AFTER = ("probe.log.jsonl", "caption.log.jsonl", "encode.log.jsonl")


def shard_hashes(out: str) -> dict[str, str]:
  return tree_hashes(os.path.join(out, "shards"))


def _prep(corpus: str, out: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "data_pipeline.cli", "run", f"--input={corpus}",
                           f"--output={out}"] + ARGS, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=ROOT))


def test_killed_and_resumed_prep_gives_byte_identical_shards(tmp_path):
  corpus = str(tmp_path / "videos")
  synth.write_synthetic_videos(corpus, num_videos=4, seed=7, size=64, frames=48,
                               cut_fraction=0.5, fade_fraction=0.5)
  clean = str(tmp_path / "clean")
  assert cli.main(["run", f"--input={corpus}", f"--output={clean}"] + ARGS) == 0
  out = str(tmp_path / "killed")
  rng = np.random.default_rng(0)
  kills = 0
  for marker in KILL_AFTER:
    p = _prep(corpus, out)
    try:
      deadline = time.time() + 600
      while not os.path.exists(os.path.join(out, marker)) and p.poll() is None:
        assert time.time() < deadline, f"no {marker} within the time limit"
        time.sleep(0.02)
      time.sleep(float(rng.uniform(0.0, 0.3)))
      if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
        kills += 1
      p.wait(60)
    finally:
      if p.poll() is None:
        p.kill()
  assert kills >= 2, "the run finished before it could be killed"
  assert cli.main(["run", f"--input={corpus}", f"--output={out}"] + ARGS) == 0
  assert shard_hashes(out) == shard_hashes(clean)
