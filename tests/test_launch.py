"""Launcher: dry runs of every target print and record exactly what runs; sweeps; local processes."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("xmanager")

from experiments import launch  # noqa: E402
from experiments.launcher import commands, configs  # noqa: E402
from experiments.launcher import experiment as exp_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T2V = os.path.join(REPO, "experiments/configs/t2v.py")


def _run(tmp_path, *args, **kw):
  lines = []
  exp = launch.launch(*args, xm_root=str(tmp_path / "xm"), echo=lines.append, **kw)
  return exp, "\n".join(lines)


def test_local_dry_run_sweep_records_each_unit(tmp_path):
  exp, out = _run(tmp_path, f"{T2V}:XL", "local", dry_run=True,
                  sweep=["optimizer.lr=1e-4,2e-4", "model.mask_ratio=0.5,0"],
                  sets=["train.num_steps=10"], workdir=str(tmp_path / "wd"))
  units = exp_lib.list_work_units(exp.dir)
  assert [u["id"] for u in units] == [1, 2, 3, 4]
  assert {u["state"] for u in units} == {"dry_run"}
  assert len({u["workdir"] for u in units}) == 4
  seen = set()
  for u in units:
    d = os.path.join(exp.dir, f"wu{u['id']}")
    cfg = json.load(open(os.path.join(d, "config.json")))
    assert cfg["train"]["num_steps"] == 10
    assert cfg["optimizer"]["lr"] == u["trial"]["optimizer.lr"]
    assert cfg["model"]["mask_ratio"] == u["trial"]["model.mask_ratio"]
    seen.add((cfg["optimizer"]["lr"], cfg["model"]["mask_ratio"]))
    cmd = open(os.path.join(d, "command.sh")).read()
    assert f"--config={T2V}:XL" in cmd and f"--workdir={u['workdir']}" in cmd
    assert f"--config.optimizer.lr={u['trial']['optimizer.lr']}" in cmd
    assert cmd.strip().splitlines()[-1] in out   # printed exactly what was recorded
    assert not os.path.exists(os.path.join(d, "log.txt"))   # nothing ran
  assert seen == {(1e-4, 0.5), (1e-4, 0.0), (2e-4, 0.5), (2e-4, 0.0)}
  assert not os.path.exists(tmp_path / "wd")


def test_single_unit_uses_stage_workdir(tmp_path):
  exp, _ = _run(tmp_path, f"{T2V}:XL,root=gs://bucket/stiv", "local", dry_run=True)
  [unit] = exp_lib.list_work_units(exp.dir)
  assert unit["workdir"] == "gs://bucket/stiv/t2v256_XL"


def test_tpu_vm_dry_run_command(tmp_path):
  exp, out = _run(tmp_path, f"{T2V}:M", "tpu-vm", dry_run=True, tpu_name="pod-1",
                  zone="us-east5-a", project="proj", repo_dir="~/stiv_jax")
  [unit] = exp_lib.list_work_units(exp.dir)
  cmd = unit["command"]
  assert cmd.startswith("gcloud compute tpus tpu-vm ssh pod-1 --zone=us-east5-a --project=proj "
                        "--worker=all '--command=cd ~/")
  for part in ("LIBTPU_INIT_ARGS", "PYTHONUNBUFFERED=1", ".venv/bin/stiv-train", "--distributed",
               f"--config={T2V}:M", "--workdir=workdir/stiv/t2v256_M"):
    assert part in cmd, part
  assert unit["state"] == "dry_run" and cmd in out
  with pytest.raises(ValueError, match="--tpu_name"):
    _run(tmp_path, f"{T2V}:M", "tpu-vm", dry_run=True, zone="z")


def test_gke_tpu_and_gpu_manifests(tmp_path):
  exp, out = _run(tmp_path, f"{T2V}:XL", "gke", dry_run=True, image="img:1",
                  accelerator="v5e-256")
  m = yaml.safe_load(open(os.path.join(exp.dir, "wu1", "jobset.yaml")))
  job = m["spec"]["replicatedJobs"][0]["template"]["spec"]
  pod = job["template"]["spec"]
  assert m["kind"] == "JobSet" and job["parallelism"] == job["completions"] == 64
  assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                 "cloud.google.com/gke-tpu-topology": "16x16"}
  c = pod["containers"][0]
  assert c["resources"]["limits"] == {"google.com/tpu": 4} and c["image"] == "img:1"
  assert c["command"][0] == "stiv-train" and "--distributed" in c["command"]
  assert "apiVersion: jobset.x-k8s.io/v1alpha2" in out
  assert exp_lib.list_work_units(exp.dir)[0]["command"].startswith("kubectl apply -f ")

  gpu = commands.gke_jobset(name="stiv-gpu", image="img", accelerator="h100-16",
                            train_argv=["stiv-train", "--config=x.py"])
  pod = gpu["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
  env = {e["name"]: e for e in pod["containers"][0]["env"]}
  assert gpu["spec"]["replicatedJobs"][0]["template"]["spec"]["parallelism"] == 2
  assert env["JAX_NUM_PROCESSES"]["value"] == "2"
  assert env["JAX_COORDINATOR_ADDRESS"]["value"].startswith("stiv-gpu-workers-0-0.stiv-gpu:")
  assert "job-completion-index" in env["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
  assert commands.tpu_topology_name("v5p", 128) == "4x4x8"
  with pytest.raises(ValueError, match="--image"):
    commands.gke_jobset(name="a", image="", accelerator="v5e-8", train_argv=["x"])


def test_vertex_dry_run_prints_jobs():
  lines = []
  jobs = launch.launch_vertex(f"{T2V}:XL", sweep=["optimizer.lr=1e-4,2e-4"], dry_run=True,
                              accelerator="v5p-128", echo=lines.append)
  assert len(jobs) == 2 and "--config.optimizer.lr=0.0001" in jobs[0]
  assert "tpu_v5p=xm.Topology('4x4x4')" in lines[0]


def test_bad_sweeps_name_the_problem():
  cfg = configs.load_config(f"{T2V}:XL")
  with pytest.raises(ValueError, match="optimizer.nope"):
    configs.parse_sweep(cfg, ["optimizer.nope=1,2"])
  with pytest.raises(ValueError, match="train.num_steps.*'ten'"):
    configs.parse_sweep(cfg, ["train.num_steps=ten"])
  with pytest.raises(ValueError, match="FIELD=V1"):
    configs.parse_sweep(cfg, ["optimizer.lr"])
  with pytest.raises(ValueError, match="not a config file"):
    configs.load_config("experiments/configs/missing.py:XL")
  assert configs.parse_sweep(cfg, ["model.scan_blocks=false,true"]) == [
      {"model.scan_blocks": False}, {"model.scan_blocks": True}]


def test_local_process_runs_and_status_is_tracked(tmp_path):
  """A real (non-dry) local run of a stand-in binary: status completed / failed, listing works."""
  script = tmp_path / "fake-train"
  script.write_text("#!/bin/bash\necho \"args: $*\"\n"
                    "case \"$*\" in *fail*) exit 3;; esac\nexit 0\n")
  script.chmod(script.stat().st_mode | stat.S_IEXEC)
  from xmanager import xm

  from experiments.launcher import executors as ex
  cfg = configs.load_config(f"{T2V}:tiny")
  exp = exp_lib.DirExperiment(str(tmp_path / "xm"), "t", f"{T2V}:tiny", cfg,
                              str(tmp_path / "wd"), target="local", echo=lambda s: None)
  exp.set_num_trials(2)
  with exp:
    [exe] = exp.package([xm.Packageable(executable_spec=xm.Binary(path=str(script)),
                                        executor_spec=ex.LocalProcess.Spec(),
                                        args=["--config=x"])])
    for tag in ("ok", "fail"):
      exp.add(xm.Job(exe, ex.LocalProcess(), name="train"),
              args=exp_lib.trial_args({"stage.flags": tag}))
  for unit in exp.work_units.values():
    for p in unit.procs:
      p.wait()
  units = {u["id"]: u for u in exp_lib.list_work_units(exp.dir)}
  assert units[1]["state"] == "completed" and units[2]["state"] == "failed"
  assert "exit code 3" in units[2]["message"]
  log = open(os.path.join(exp.dir, "wu1", "log.txt")).read()
  assert "--config.stage.flags=ok" in log and "--workdir=" in log
  # The command line lists the same experiment from another process.
  out = subprocess.run([sys.executable, os.path.join(REPO, "experiments/launch.py"),
                        f"--xm_root={tmp_path / 'xm'}", f"--list={exp.experiment_id}"],
                       capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr
  states = [json.loads(l)["state"] for l in out.stdout.splitlines() if l.startswith("{")]
  assert states == ["completed", "failed"]
