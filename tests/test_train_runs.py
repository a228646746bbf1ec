"""End-to-end `python -m stiv_jax.main` runs in subprocesses: kill -9 + resume equals an
uninterrupted run step by step; two JAX processes (4 CPU devices each) equal one with 8."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import tree_hashes

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 10
OVERRIDES = ["--config.model.depth=1", "--config.model.mask_decoder_depth=1",
             "--config.model.micro_conditions=False",
             "--config.data.batch_size=8", "--config.metrics.every_steps=1",
             "--config.checkpoint.every_steps=2", "--config.checkpoint.keep_last=10",
             "--config.metrics.tensorboard=False"]


def _env(devices, **extra):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _cmd(workdir, data, num_steps):
  return [sys.executable, "-m", "stiv_jax.main", "--config=experiments/configs/demo.py:tiny",
          f"--workdir={workdir}", f"--config.data.path={data}",
          f"--config.train.num_steps={num_steps}"] + OVERRIDES


def _losses(workdir):
  """Last logged loss per step (a resumed run appends to metrics.jsonl)."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      out[rec["step"]] = rec["loss"]
  return out


def _run(workdir, data, num_steps, devices=8, **env):
  p = subprocess.run(_cmd(workdir, data, num_steps), cwd=ROOT, env=_env(devices, **env),
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  return p.stdout


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  sys.path.insert(0, ROOT)
  from stiv_jax.data.synthetic import write_synthetic_shards
  from stiv_jax.models.encoders.standins import HashTextEncoder, PixelSpaceVAE
  out = str(tmp_path_factory.mktemp("data") / "shards")
  write_synthetic_shards(out, num_videos=48, seed=0, vae=PixelSpaceVAE(4, 4),
                         text_encoder=HashTextEncoder(16, 8), size=32, frames=(4,))
  return out


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory):
  """(per-step losses, workdir with checkpoints 2..10) of an uninterrupted run."""
  workdir = str(tmp_path_factory.mktemp("ref"))
  out = _run(workdir, data, NUM_STEPS)
  assert "Checkpoints:" in out and "Metrics (JSONL):" in out
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, NUM_STEPS + 1))
  return losses, workdir


@pytest.fixture(scope="module")
def reference(reference_run):
  return reference_run[0]


def _finished_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def test_kill9_resume_matches_uninterrupted(data, reference, tmp_path):
  workdir = str(tmp_path / "run")
  # A long run, killed with SIGKILL as soon as its first checkpoint is on disk.
  p = subprocess.Popen(_cmd(workdir, data, 10_000), cwd=ROOT, env=_env(8),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 400
    while not _finished_steps(workdir):
      assert p.poll() is None, "training exited before its first checkpoint"
      assert time.time() < deadline, "no checkpoint within the time limit"
      time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    assert p.wait(60) == -signal.SIGKILL
  finally:
    if p.poll() is None:
      p.kill()
  resumed_from = max(_finished_steps(workdir))
  assert resumed_from < NUM_STEPS, f"killed too late (checkpoint {resumed_from})"
  out = _run(workdir, data, NUM_STEPS)
  assert f"Resumed from checkpoint step {resumed_from}" in out
  losses = _losses(workdir)
  after = list(range(resumed_from + 1, NUM_STEPS + 1))
  assert after
  assert [losses[s] for s in after] == pytest.approx([reference[s] for s in after], rel=1e-6)


def test_two_processes_match_one(data, reference, tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  workdir = str(tmp_path / "mp")
  procs = [subprocess.Popen(
      _cmd(workdir, data, NUM_STEPS), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True, env=_env(4, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=2,
                          JAX_PROCESS_ID=i)) for i in range(2)]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=600)[0])
    finally:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  losses = _losses(workdir)             # written by process 0 only
  assert sorted(losses) == list(range(1, NUM_STEPS + 1))
  steps = sorted(losses)
  assert [losses[s] for s in steps] == pytest.approx([reference[s] for s in steps], rel=1e-5)
  assert NUM_STEPS in _finished_steps(workdir)


@pytest.fixture(scope="module")
def ref_workdir(reference_run):
  """The reference run's workdir (checkpoints 2..10); tests copy it before changing it."""
  return reference_run[1]


def test_flipped_latest_checkpoint_resumes_from_the_previous_with_equal_losses(
    data, reference, ref_workdir, tmp_path):
  import shutil
  workdir = str(tmp_path / "flip")
  shutil.copytree(ref_workdir, workdir)
  ckdir = os.path.join(workdir, "checkpoints")
  for s in (8, 10):                      # the run had stopped after step 6
    shutil.rmtree(os.path.join(ckdir, str(s)))
  files = [os.path.join(d, n) for d, _, ns in os.walk(os.path.join(ckdir, "6")) for n in ns]
  victim = max(files, key=os.path.getsize)
  with open(victim, "r+b") as f:          # 4 KB of flipped bits in the weights
    block = f.read(4096)
    f.seek(0)
    f.write(bytes(b ^ 0xFF for b in block))
  out = _run(workdir, data, NUM_STEPS)
  skips = [line for line in out.splitlines() if line.startswith("Skipping checkpoint")]
  assert len(skips) == 1 and victim in skips[0] and "corrupted" in skips[0]
  assert "Resumed from checkpoint step 4" in out
  losses = _losses(workdir)
  after = list(range(5, NUM_STEPS + 1))
  assert [losses[s] for s in after] == pytest.approx([reference[s] for s in after], rel=1e-6)
  assert any(n.startswith("skipped-6-") for n in os.listdir(ckdir))   # kept, not deleted


@pytest.mark.parametrize("override,message", [
    ("--config.model.hidden=32", r"model\.hidden: 64 in the checkpoint, 32 now"),
    ("--config.data.batch_size=-8", r"data\.batch_size: must be >= 1"),
    ("--config.data.seed=5", r"data\.seed is 0 in the checkpoint but 5 in this run"),
])
def test_failed_starts_leave_every_file_of_the_workdir_unchanged(
    data, ref_workdir, tmp_path, override, message):
  import re
  import shutil
  workdir = str(tmp_path / "wd")
  shutil.copytree(ref_workdir, workdir)
  before = tree_hashes(workdir)
  p = subprocess.run(_cmd(workdir, data, NUM_STEPS + 2) + [override], cwd=ROOT, env=_env(8),
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
  lines = [line for line in p.stderr.splitlines() if line.startswith("stiv-train: error:")]
  assert len(lines) == 1 and re.search(message, lines[0]), p.stderr[-2000:]
  assert "Traceback" not in p.stderr
  assert tree_hashes(workdir) == before


def _corrupt_copy(data, tmp_path, step):
  """A copy of the dataset with one record of the batch of `step` (1-based) corrupted."""
  import shutil
  from stiv_jax.data import pipeline, reader
  out = str(tmp_path / "corrupt")
  shutil.copytree(data, out)
  ds = reader.open_dataset(out)
  plan, _ = pipeline.epoch_plan(ds.bucket_of, len(ds.bucket_keys), seed=0, epoch=0,
                                global_batch=8)
  path, offset = ds.location(int(plan[step - 1][0]))
  with open(path, "r+b") as f:            # a byte inside the record's payload: its CRC fails
    f.seek(offset + 12 + 40)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0xFF]))
  return out


def test_corrupt_record_skip_counts_and_completes(data, tmp_path):
  bad = _corrupt_copy(data, tmp_path, step=3)
  workdir = str(tmp_path / "skip")
  p = subprocess.run(_cmd(workdir, bad, 4) + ["--config.data.bad_records=skip"], cwd=ROOT,
                     env=_env(8), capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
  assert "skipped record" in p.stderr and "byte offset" in p.stderr
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    last = [json.loads(line) for line in f][-1]
  assert last["step"] == 4 and last["data/bad_records"] == 1.0


def test_corrupt_record_fail_saves_the_last_good_step(data, tmp_path):
  bad = _corrupt_copy(data, tmp_path, step=3)
  workdir = str(tmp_path / "fail")
  p = subprocess.run(_cmd(workdir, bad, 4) + ["--config.checkpoint.every_steps=100"], cwd=ROOT,
                     env=_env(8), capture_output=True, text=True, timeout=600)
  assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
  [line] = [x for x in p.stderr.splitlines() if x.startswith("stiv-train: error:")]
  assert "data error before step 3" in line and "last good step 2 is saved" in line
  assert _finished_steps(workdir) == [2]
