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
def reference(data, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ref"))
  out = _run(workdir, data, NUM_STEPS)
  assert "Checkpoints:" in out and "Metrics (JSONL):" in out
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, NUM_STEPS + 1))
  return losses


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
