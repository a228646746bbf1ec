"""XManager launcher: `python experiments/launch.py --config=experiments/configs/t2v.py:XL ...`.

Targets:
  local    runs each work unit now as a detached process on this machine (LocalProcess).
  tpu-vm   `gcloud compute tpus tpu-vm ssh NAME --zone=Z --worker=all --command=...` running
           stiv-train --distributed on every host; printed (and written), run with --execute.
  gke      writes a JobSet manifest (TPU or GPU node pool from --accelerator); --execute applies
           it with kubectl.
  vertex   xmanager's own Vertex AI executor (xm_local.Vertex + xm.python_container; needs
           Docker or Cloud Build and GCP credentials).
Each work unit gets its own workdir and a config dump under --xm_root/<experiment id>/wu<N>/.
  --sweep=optimizer.lr=1e-4,2e-4 --sweep=model.mask_ratio=0.5,0   cartesian product of trials
  --set=train.num_steps=10                                        one value for every unit
  --dry_run                              print exactly what would run; writes nothing
  --list=all                experiments under --xm_root; --list=ID: its work units and status
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

from absl import app, flags

if __package__ in (None, ""):  # `python experiments/launch.py`: make the repo importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.launcher import commands, configs  # noqa: E402

TARGETS = ("local", "tpu-vm", "gke", "vertex")
_CONFIG = flags.DEFINE_string("config", None, "Config spec FILE.py[:ARG].")
_TARGET = flags.DEFINE_enum("target", "local", TARGETS, "Where the work units run.")
_SWEEP = flags.DEFINE_multi_string("sweep", [], "FIELD=V1,V2,... (repeat for a product).")
_SET = flags.DEFINE_multi_string("set", [], "FIELD=VALUE for every work unit.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Base workdir (default: config.stage.workdir, "
                               "else workdir/<config file name>).")
_XM_ROOT = flags.DEFINE_string("xm_root", "workdir/xm", "Folder of experiment records.")
_TITLE = flags.DEFINE_string("title", None, "Experiment title (default: the stage name).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Record and print, run nothing.")
_WAIT = flags.DEFINE_bool("wait", False, "local: wait for the work units and report their status.")
_LIST = flags.DEFINE_string("list", None, "'' or 'all': list experiments; ID or folder: its units.")
_EXECUTE = flags.DEFINE_bool("execute", False, "tpu-vm: run the gcloud command; gke: kubectl apply.")
_TPU_NAME = flags.DEFINE_string("tpu_name", "", "tpu-vm: TPU VM name.")
_ZONE = flags.DEFINE_string("zone", "", "tpu-vm: zone.")
_PROJECT = flags.DEFINE_string("project", "", "tpu-vm: GCP project ('' = gcloud default).")
_REPO_DIR = flags.DEFINE_string("repo_dir", "~/stiv_jax", "tpu-vm: repo checkout on each host.")
_VENV = flags.DEFINE_string("venv", ".venv", "tpu-vm: venv (relative to repo_dir) with stiv_jax.")
_IMAGE = flags.DEFINE_string("image", "", "gke/vertex: container image with stiv_jax installed.")
_ACCELERATOR = flags.DEFINE_string("accelerator", None, "gke/vertex: v5e-256, v5p-128, h100-16, "
                                   "... (default: config.stage.topology).")
_NAMESPACE = flags.DEFINE_string("namespace", "default", "gke: Kubernetes namespace.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Print the traceback of a user error too.")


def _stiv_train_path() -> str:
  """The stiv-train console script next to this Python (the venv's), else the bare name."""
  path = os.path.join(os.path.dirname(sys.executable), "stiv-train")
  return path if os.path.exists(path) else "stiv-train"


def _stage_field(config: Any, name: str, default: str) -> str:
  stage = config.get("stage") if hasattr(config, "get") else None
  return str(stage.get(name, default)) if stage is not None else default


def build_trials(config: Any, sweep: Sequence[str], sets: Sequence[str]) -> list[dict]:
  """--set values (one-valued axes) times the --sweep product, each checked against the config."""
  fixed = configs.parse_overrides(config, sets)
  return [{**fixed, **t} for t in configs.parse_sweep(config, sweep)]


def make_executor(target: str, config: Any, **opts):
  """The xm executor of a target; opts: tpu_name, zone, project, repo_dir, venv, image,
  accelerator, namespace, execute (the launcher's flags of the same names)."""
  from experiments.launcher import executors as ex
  execute = bool(opts.get("execute", False))
  required = {"tpu-vm": (("tpu_name", "the TPU VM's name"), ("zone", "its zone")),
              "gke": (("image", "a container image with stiv_jax installed"),)}
  for name, what in required.get(target, ()):
    if not opts.get(name):
      raise ValueError(f"--{name}: required for --target={target} ({what})")
  if target == "local":
    return ex.LocalProcess()
  if target == "tpu-vm":
    return ex.TpuVm(tpu_name=opts.get("tpu_name", ""), zone=opts.get("zone", ""),
                    project=opts.get("project", ""), repo_dir=opts.get("repo_dir", "~/stiv_jax"),
                    venv=opts.get("venv", ".venv"), execute=execute)
  if target == "gke":
    return ex.GkeJobSet(image=opts.get("image", ""), namespace=opts.get("namespace", "default"),
                        execute=execute, accelerator=opts.get("accelerator") or
                        _stage_field(config, "topology", "v5e-256"))
  raise ValueError(f"--target: {target!r} has no DirExperiment executor")


def _flag_opts() -> dict:
  """Executor options from the command-line flags."""
  return dict(tpu_name=_TPU_NAME.value, zone=_ZONE.value, project=_PROJECT.value,
              repo_dir=_REPO_DIR.value, venv=_VENV.value, image=_IMAGE.value,
              accelerator=_ACCELERATOR.value, namespace=_NAMESPACE.value, execute=_EXECUTE.value)


def launch(config_spec: str, target: str, *, sweep: Sequence[str] = (), sets: Sequence[str] = (),
           workdir: str | None = None, xm_root: str = "workdir/xm", title: str | None = None,
           dry_run: bool = False, wait: bool = False, echo=print, **executor_opts):
  """Creates the experiment, adds one work unit per trial; returns the DirExperiment."""
  from xmanager import xm

  from experiments.launcher import experiment as exp_lib
  config = configs.load_config(config_spec)
  trials = build_trials(config, sweep, sets)
  stem = os.path.splitext(os.path.basename(config_spec.partition(":")[0]))[0]
  workdir = workdir or _stage_field(config, "workdir", f"workdir/{stem}")
  title = title or _stage_field(config, "name", stem).replace("_", "-")
  executor = make_executor(target, config, **executor_opts)
  experiment = exp_lib.DirExperiment(xm_root, title, config_spec, config, workdir,
                                     target=target, dry_run=dry_run, echo=echo)
  experiment.set_num_trials(len(trials))
  echo(f"experiment {experiment.experiment_id} ({title}): {len(trials)} work unit(s), "
       f"target {target}" + (" [dry run: nothing is written or run]" if dry_run
                             else f"; records in {experiment.dir}"))
  with experiment:
    path = _stiv_train_path() if target == "local" else "stiv-train"
    [executable] = experiment.package([xm.Packageable(
        executable_spec=xm.Binary(path=path), executor_spec=executor.Spec(),
        args=[f"--config={config_spec}"])])
    for trial in trials:
      experiment.add(xm.Job(executable, executor, name="train"), args=exp_lib.trial_args(trial))
  if target == "gke":
    for unit in experiment.work_units.values():
      manifest = os.path.join(unit.dir, "jobset.yaml")
      echo(f"--- {manifest}\n{open(manifest).read()}")
  if wait and target == "local" and not dry_run:
    for unit in experiment.work_units.values():
      for proc in unit.procs:
        proc.wait()
      echo(f"[wu{unit.work_unit_id}] {unit.get_status().state}: {unit.get_status().message}")
  return experiment


def launch_vertex(config_spec: str, *, sweep: Sequence[str] = (), sets: Sequence[str] = (),
                  workdir: str | None = None, title: str | None = None, dry_run: bool = False,
                  image: str = "", accelerator: str | None = None, echo=print) -> list[list[str]]:
  """Vertex AI through xmanager's own executor and experiment (xm_local; containers need Docker
  or Cloud Build, and GCP credentials). A dry run prints the jobs without creating anything."""
  from xmanager import xm
  config = configs.load_config(config_spec)
  trials = build_trials(config, sweep, sets)
  stem = os.path.splitext(os.path.basename(config_spec.partition(":")[0]))[0]
  workdir = workdir or _stage_field(config, "workdir", f"workdir/{stem}")
  title = title or _stage_field(config, "name", stem)
  kind, chips = commands.parse_accelerator(
      accelerator or _stage_field(config, "topology", "v5e-256"))
  resource = {"v5e": "tpu_v5e", "v5p": "tpu_v5p", "v6e": "tpu_v6e", "h100": "h100",
              "h200": "h200"}[kind]
  quantity: Any = (xm.Topology(commands.tpu_topology_name(kind, chips))
                   if kind.startswith("v") else chips)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  jobs = []
  for i, trial in enumerate(trials, 1):
    wd = workdir if len(trials) == 1 else f"{workdir}/wu{i}_{configs.trial_name(trial)}"
    args = commands.train_args(config_spec, wd, trial)
    jobs.append(args)
    echo(f"[vertex wu{i}] {resource}={quantity} image={image or '(python_container)'} "
         f"stiv-train {' '.join(args)}")
  if dry_run:
    return jobs
  from xmanager import xm_local
  with xm_local.create_experiment(experiment_title=title) as experiment:
    spec = (xm.container(image_path=image) if image else
            xm.python_container(path=repo, entrypoint=xm.CommandList(["stiv-train"])))
    [executable] = experiment.package([xm.Packageable(
        executable_spec=spec, executor_spec=xm_local.Vertex.Spec())])
    for args in jobs:
      experiment.add(xm.Job(executable, xm_local.Vertex(
          requirements=xm.JobRequirements({resource: quantity})), args=args))
  return jobs


def print_listing(xm_root: str, which: str, echo=print) -> None:
  """Lists experiments, or the work units (and status) of one experiment id / folder."""
  from experiments.launcher import experiment as exp_lib
  if which in ("", "all"):
    for e in exp_lib.list_experiments(xm_root):
      units = exp_lib.list_work_units(os.path.join(xm_root, str(e["id"])))
      states = ",".join(sorted({u["state"] for u in units})) or "-"
      echo(f"{e['id']}  {e['title']:16s} {e['target']:7s} {len(units):3d} units  {states}  "
           f"{e['config']}")
    return
  exp_dir = which if os.path.isdir(which) else os.path.join(xm_root, which)
  for u in exp_lib.list_work_units(exp_dir):
    echo(json.dumps(u))


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    _main()
  except (ValueError, FileNotFoundError) as e:   # a user error: one line, exit 2
    if _VERBOSE.value:
      import traceback
      traceback.print_exc()
    print(f"launch.py: error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)


def _main() -> None:
  if _LIST.present:
    print_listing(_XM_ROOT.value, _LIST.value or "")
    return
  if not _CONFIG.value:
    raise app.UsageError("--config is required, e.g. --config=experiments/configs/t2v.py:XL")
  if _TARGET.value == "vertex":
    launch_vertex(_CONFIG.value, sweep=_SWEEP.value, sets=_SET.value, workdir=_WORKDIR.value,
                  title=_TITLE.value, dry_run=_DRY_RUN.value, image=_IMAGE.value,
                  accelerator=_ACCELERATOR.value)
    return
  if _DRY_RUN.value:   # print what would run; write nothing (records go to a temp folder)
    import shutil
    import tempfile
    tmp = tempfile.mkdtemp(prefix="stiv-xm-dry-run-")
    try:
      launch(_CONFIG.value, _TARGET.value, sweep=_SWEEP.value, sets=_SET.value,
             workdir=_WORKDIR.value, xm_root=tmp, title=_TITLE.value, dry_run=True,
             **_flag_opts())
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    return
  launch(_CONFIG.value, _TARGET.value, sweep=_SWEEP.value, sets=_SET.value,
         workdir=_WORKDIR.value, xm_root=_XM_ROOT.value, title=_TITLE.value,
         dry_run=False, wait=_WAIT.value, **_flag_opts())


if __name__ == "__main__":
  app.run(main)
