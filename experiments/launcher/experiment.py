"""`DirExperiment`: an xm.Experiment whose bookkeeping is a folder, and its work units.

Layout under the experiments root:
  <root>/<experiment_id>/experiment.json      id, title, config spec, target, creation time
  <root>/<experiment_id>/wu<N>/unit.json      trial args, workdir, executor, command, pid
  <root>/<experiment_id>/wu<N>/config.json    the resolved config of this unit (overrides applied)
  <root>/<experiment_id>/wu<N>/command.sh     exactly what runs (or would run, in a dry run)
  <root>/<experiment_id>/wu<N>/jobset.yaml    (gke) the manifest
  <root>/<experiment_id>/wu<N>/log.txt, rc    output and exit code of the local process
Status is read back from these files, so `launch.py --list` works from any later process.
"""
from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import time
from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence

import attr
import ml_collections
from xmanager import xm
from xmanager.xm import async_packager, utils

from experiments.launcher import commands, configs
from experiments.launcher import executors as ex


@attr.s(auto_attribs=True)
class ProcessExecutable(xm.Executable):
  """A packaged command (a console script of this repo) with static args and env."""
  command: str = ""
  args: xm.SequentialArgs = attr.Factory(xm.SequentialArgs)
  env_vars: dict = attr.Factory(dict)


def package_batch(packageables: Sequence[xm.Packageable]) -> list[xm.Executable]:
  """Packages `xm.binary` specs: checks local paths exist for LocalProcess, keeps names else."""
  out = []
  for p in packageables:
    spec = p.executable_spec
    if not isinstance(spec, xm.Binary):
      raise TypeError(f"DirExperiment packages xm.binary(...) only, got {type(spec).__name__} "
                      "(containers need Docker: use --target=vertex with xmanager's executors)")
    if isinstance(p.executor_spec, ex.LocalProcessSpec) and not os.path.exists(spec.path):
      raise ValueError(f"{spec.path} does not exist on this machine")
    out.append(ProcessExecutable(name=spec.name, command=spec.path, args=p.args,
                                 env_vars=dict(p.env_vars)))
  return out


def trial_args(trial: Mapping[str, Any]) -> dict:
  """Work-unit args in XManager's form for a trial: {'args': {'config.FIELD': value}}."""
  return {"args": {f"config.{k}": v for k, v in trial.items()}}


def trial_of(unit_args: Optional[Mapping[str, Any]]) -> dict:
  """The trial {FIELD: value} back from work-unit args made by trial_args."""
  args = dict((unit_args or {}).get("args", {}))
  return {k[len("config."):]: v for k, v in args.items() if k.startswith("config.")}


class DirStatus(xm.ExperimentUnitStatus):
  """Status of a work unit read from its folder: running / completed / failed / written / ..."""

  def __init__(self, state: str, message: str = ""):
    self.state = state
    self._message = message

  def is_active(self) -> bool:
    return self.state in ("running", "submitted")

  def is_completed(self) -> bool:
    return self.state == "completed"

  def is_failed(self) -> bool:
    return self.state in ("failed", "lost")

  @property
  def message(self) -> str:
    return self._message


def read_status(unit_dir: str) -> DirStatus:
  """The status of the unit in `unit_dir` (pid liveness, rc file, or what the launch recorded)."""
  with open(os.path.join(unit_dir, "unit.json")) as f:
    unit = json.load(f)
  rc_path = os.path.join(unit_dir, "rc")
  if os.path.exists(rc_path):
    rc = open(rc_path).read().strip()
    return DirStatus("completed" if rc == "0" else "failed", f"exit code {rc}")
  pid = unit.get("pid")
  if pid:
    try:
      os.kill(int(pid), 0)
      return DirStatus("running", f"pid {pid}")
    except ProcessLookupError:
      return DirStatus("lost", f"pid {pid} gone without an exit code")
    except PermissionError:
      return DirStatus("running", f"pid {pid}")
  return DirStatus(unit.get("state", "unknown"), unit.get("message", ""))


class DirWorkUnit(xm.WorkUnit):
  """A work unit whose jobs run (or are written) per their executor; recorded in its folder."""

  def __init__(self, experiment: "DirExperiment", wid: int, create_task: Callable,
               args: Optional[Mapping[str, Any]], role: xm.ExperimentUnitRole):
    super().__init__(experiment, create_task, args, role)
    self._id = wid
    self.dir = os.path.join(experiment.dir, f"wu{wid}")
    os.makedirs(self.dir, exist_ok=True)
    self.procs: list[subprocess.Popen] = []

  @property
  def work_unit_id(self) -> int:
    return self._id

  @property
  def experiment_unit_name(self) -> str:
    return f"{self.experiment.experiment_id}_{self._id}"

  def get_status(self) -> DirStatus:
    return read_status(self.dir)

  async def _wait_until_complete(self) -> None:
    while self.get_status().is_active():
      await asyncio.sleep(0.2)
    status = self.get_status()
    if status.is_failed():
      raise xm.ExperimentUnitFailedError(f"work unit {self._id}: {status.message}",
                                         work_unit=self)

  def _write_unit(self, **fields) -> None:
    path = os.path.join(self.dir, "unit.json")
    unit = json.load(open(path)) if os.path.exists(path) else {}
    unit.update(fields)
    with open(path + ".tmp", "w") as f:
      json.dump(unit, f, indent=1, default=str)
    os.replace(path + ".tmp", path)

  async def _launch_job_group(self, job_group: xm.JobGroup, args_view: Mapping[str, Any],
                              identity: str) -> None:
    for name, job in job_group.jobs.items():
      self._launch_job(name, job)

  def _launch_job(self, name: str, job: xm.Job) -> None:
    exp: DirExperiment = self.experiment  # type: ignore[assignment]
    exe: ProcessExecutable = job.executable  # type: ignore[assignment]
    trial = trial_of(self._args)
    workdir = exp.workdir_for(self._id, trial)
    config = configs.apply(exp.base_config, trial)
    with open(os.path.join(self.dir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1, sort_keys=True))
    argv = [exe.command] + xm.merge_args(exe.args, job.args).to_list(utils.ARG_ESCAPER)
    argv.append(f"--workdir={workdir}")
    env = {**exe.env_vars, **job.env_vars}
    executor = job.executor
    record = dict(job=name, trial=trial, workdir=workdir, executor=type(executor).__name__,
                  dry_run=exp.dry_run, created=time.time())

    if isinstance(executor, ex.LocalProcess):
      env = {**env, **executor.env_vars}
      line = commands.shell_join(argv, env)
      self._write_command(line)
      record.update(command=line, state="dry_run" if exp.dry_run else "starting")
      self._write_unit(**record)
      if not exp.dry_run:
        self._start_process(argv, env)
    elif isinstance(executor, ex.TpuVm):
      ssh = commands.tpu_vm_ssh_argv(
          tpu_name=executor.tpu_name, zone=executor.zone, project=executor.project,
          repo_dir=executor.repo_dir, venv=executor.venv,
          train_argv=[os.path.basename(argv[0]), *argv[1:], "--distributed"],
          env={**commands.TPU_ENV, **env, **executor.env_vars})
      line = commands.shell_join(ssh)
      self._write_command(line)
      run = executor.execute and not exp.dry_run
      record.update(command=line, state="starting" if run else
                    ("dry_run" if exp.dry_run else "written"))
      self._write_unit(**record)
      if run:
        self._start_process(ssh, {})
    elif isinstance(executor, ex.GkeJobSet):
      jobset_name = f"{exp.title}-{exp.experiment_id % 100000}-{self._id}".lower()[:40].strip("-")
      manifest = commands.gke_jobset(
          name=jobset_name, image=executor.image, accelerator=executor.accelerator,
          train_argv=[os.path.basename(argv[0]), *argv[1:]], namespace=executor.namespace,
          env={**env, **executor.env_vars}, max_restarts=executor.max_restarts)
      path = os.path.join(self.dir, "jobset.yaml")
      with open(path, "w") as f:
        f.write(commands.to_yaml(manifest))
      kubectl = ["kubectl", "apply", "-f", path]
      line = commands.shell_join(kubectl)
      self._write_command(line)
      run = executor.execute and not exp.dry_run
      record.update(command=line, manifest=path, jobset=jobset_name,
                    state="dry_run" if exp.dry_run else "written")
      if run:
        proc = subprocess.run(kubectl, capture_output=True, text=True)
        record.update(state="submitted" if proc.returncode == 0 else "failed",
                      message=(proc.stdout + proc.stderr).strip()[-2000:])
      self._write_unit(**record)
    else:
      raise TypeError(f"DirExperiment cannot run executor {type(executor).__name__}; use "
                      "LocalProcess, TpuVm or GkeJobSet (Vertex: --target=vertex)")
    exp.echo(f"[wu{self._id}] {record['state']}: {record['command']}")

  def _write_command(self, line: str) -> None:
    with open(os.path.join(self.dir, "command.sh"), "w") as f:
      f.write("#!/bin/bash\n" + line + "\n")

  def _start_process(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Starts argv detached (own session); a shell wrapper writes the exit code to `rc`."""
    log, rc = os.path.join(self.dir, "log.txt"), os.path.join(self.dir, "rc")
    wrapped = f"{shlex.join(argv)} > {shlex.quote(log)} 2>&1; echo $? > {shlex.quote(rc)}"
    proc = subprocess.Popen(["bash", "-c", wrapped], env={**os.environ, **env,
                                                          "PYTHONUNBUFFERED": "1"},
                            start_new_session=True, cwd=self.experiment.cwd)
    self.procs.append(proc)
    self._write_unit(pid=proc.pid, state="running", log=log)


class DirExperiment(xm.Experiment):
  """An experiment recorded in <root>/<id>/; work units get ids 1, 2, ... in add() order."""

  _async_packager = async_packager.AsyncPackager(package_batch)

  def __init__(self, root: str, title: str, config_spec: str,
               base_config: ml_collections.ConfigDict, workdir: str, *, target: str,
               dry_run: bool = False, experiment_id: Optional[int] = None,
               echo: Callable[[str], None] = print, cwd: Optional[str] = None):
    super().__init__()
    self._id = experiment_id if experiment_id is not None else int(time.time() * 1000)
    self.title = title
    self.config_spec = config_spec
    self.base_config = base_config
    self.workdir = workdir.rstrip("/")
    self.target = target
    self.dry_run = dry_run
    self.echo = echo
    self.cwd = cwd or os.getcwd()
    while experiment_id is None and os.path.exists(os.path.join(root, str(self._id))):
      self._id += 1   # two experiments in the same millisecond
    self.dir = os.path.join(root, str(self._id))
    self._units: dict[int, DirWorkUnit] = {}
    self._num_trials = 0
    os.makedirs(self.dir, exist_ok=True)
    with open(os.path.join(self.dir, "experiment.json"), "w") as f:
      json.dump({"id": self._id, "title": title, "config": config_spec, "workdir": self.workdir,
                 "target": target, "dry_run": dry_run, "created": time.time()}, f, indent=1)

  def set_num_trials(self, n: int) -> None:
    """How many work units the sweep will add (one unit: its workdir is the base workdir)."""
    self._num_trials = n

  def workdir_for(self, wid: int, trial: Mapping[str, Any]) -> str:
    """Each unit's own workdir: the base workdir for a single unit (so stage workdirs chain),
    base/wu<N>_<swept args> in a sweep."""
    if self._num_trials <= 1:
      return self.workdir
    suffix = configs.trial_name(dict(trial)).replace("/", "_")
    return f"{self.workdir}/wu{wid}" + (f"_{suffix}" if suffix else "")

  @property
  def experiment_id(self) -> int:
    return self._id

  @property
  def work_unit_count(self) -> int:
    return len(self._units)

  @property
  def work_units(self) -> Mapping[int, DirWorkUnit]:
    return dict(self._units)

  def _create_experiment_unit(self, args, role, identity) -> Awaitable[xm.ExperimentUnit]:
    if not isinstance(role, xm.WorkUnitRole):
      raise TypeError("DirExperiment supports work units only (no auxiliary units)")
    wid = len(self._units) + 1
    unit = DirWorkUnit(self, wid, self._create_task, args, role)
    self._units[wid] = unit
    future = self._event_loop.create_future()
    future.set_result(unit)
    return future

  def _get_experiment_unit(self, experiment_id, identity, role, args=None):
    raise NotImplementedError("DirExperiment does not reload work units by identity")

  def _should_reload_experiment_unit(self, role) -> bool:
    return False


def list_experiments(root: str) -> list[dict]:
  """Every experiment under root (experiment.json), oldest first."""
  if not os.path.isdir(root):
    return []
  out = []
  for name in sorted(os.listdir(root)):
    path = os.path.join(root, name, "experiment.json")
    if os.path.exists(path):
      out.append(json.load(open(path)))
  return out


def list_work_units(exp_dir: str) -> list[dict]:
  """[{id, state, message, workdir, trial, command}] for each work unit of an experiment."""
  if not os.path.exists(os.path.join(exp_dir, "experiment.json")):
    raise ValueError(f"{exp_dir}: not an experiment folder (no experiment.json)")
  units = []
  names = [n for n in os.listdir(exp_dir) if n.startswith("wu") and n[2:].isdigit()]
  for name in sorted(names, key=lambda n: int(n[2:])):
    d = os.path.join(exp_dir, name)
    if not os.path.exists(os.path.join(d, "unit.json")):
      continue
    unit = json.load(open(os.path.join(d, "unit.json")))
    status = read_status(d)
    units.append({"id": int(name[2:]), "state": status.state, "message": status.message,
                  "workdir": unit.get("workdir"), "trial": unit.get("trial"),
                  "command": unit.get("command")})
  return units
