"""XManager executors for targets xmanager's own local executor cannot run without Docker.

xm_local.Local runs an `xm.Binary` as a local process, but only inside an `xm_local` experiment,
which keeps no record of local jobs after the launcher exits; every container executable
(`xm.python_container`, `xm.container`, Dockerfiles) needs a Docker engine. These executors run
the work unit as a local process (`LocalProcess`), over `gcloud ... tpu-vm ssh` (`TpuVm`), or as
a GKE JobSet (`GkeJobSet`), all inside `DirExperiment` (experiment.py), which records every work
unit on disk. Vertex AI stays on xmanager's own `xm_local.Vertex` (launch.py --target=vertex).
"""
from __future__ import annotations

from typing import Dict

import attr
from xmanager import xm


@attr.s(auto_attribs=True)
class LocalProcessSpec(xm.ExecutorSpec):
  """Where LocalProcess executables are packaged: this machine."""


@attr.s(auto_attribs=True)
class LocalProcess(xm.Executor):
  """Runs the job as a detached process on this machine; stdout/stderr go to the unit's log."""
  env_vars: Dict[str, str] = attr.Factory(dict)

  Spec = LocalProcessSpec  # pylint: disable=invalid-name


@attr.s(auto_attribs=True)
class TpuVmSpec(xm.ExecutorSpec):
  """TPU-VM executables are resolved on the remote hosts (a repo checkout with a venv)."""


@attr.s(auto_attribs=True)
class TpuVm(xm.Executor):
  """Runs the job on every host of a TPU-VM slice via `gcloud compute tpus tpu-vm ssh
  --worker=all`; the gcloud process is tracked like a local process when `execute` is set."""
  tpu_name: str = ""
  zone: str = ""
  project: str = ""
  repo_dir: str = "~/stiv_jax"
  venv: str = ".venv"
  env_vars: Dict[str, str] = attr.Factory(dict)
  execute: bool = False   # False: write and print the command only

  Spec = TpuVmSpec  # pylint: disable=invalid-name


@attr.s(auto_attribs=True)
class GkeJobSetSpec(xm.ExecutorSpec):
  """GKE executables live in a container image."""


@attr.s(auto_attribs=True)
class GkeJobSet(xm.Executor):
  """Writes a JobSet manifest for a TPU or GPU node pool; `kubectl apply`s it when `execute`."""
  image: str = ""
  accelerator: str = "v5e-256"
  namespace: str = "default"
  env_vars: Dict[str, str] = attr.Factory(dict)
  max_restarts: int = 0
  execute: bool = False

  Spec = GkeJobSetSpec  # pylint: disable=invalid-name
