"""The exact commands and manifests a work unit runs: local argv, TPU-VM ssh, GKE JobSet YAML.

Pure functions of their arguments (no I/O), so dry runs print exactly what a launch executes.
"""
from __future__ import annotations

import re
import shlex
from typing import Any, Mapping, Sequence

import yaml

from stiv_jax.tools.compile import tpu_grid

# Environment of every TPU worker: unbuffered logs, libtpu's async collective fusion (the
# MaxText defaults for data/FSDP-parallel training), TPU runtime logs only for warnings.
TPU_ENV = {
    "PYTHONUNBUFFERED": "1",
    "TPU_STDERR_LOG_LEVEL": "1",
    "TPU_MIN_LOG_LEVEL": "1",
    "LIBTPU_INIT_ARGS": ("--xla_tpu_enable_async_collective_fusion=true "
                         "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true "
                         "--xla_tpu_enable_async_collective_fusion_multiple_steps=true "
                         "--xla_tpu_overlap_compute_collective_tc=true "
                         "--xla_enable_async_all_gather=true"),
}
GPU_ENV = {
    "PYTHONUNBUFFERED": "1",
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.92",
    "XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=true",
}
# GKE node pools: accelerator label, chips per host, topology dims (2 for v5e/v6e, 3 for v5p).
GKE_TPU = {"v5e": ("tpu-v5-lite-podslice", 4, 2), "v5p": ("tpu-v5p-slice", 4, 3),
           "v6e": ("tpu-v6e-slice", 4, 2)}
GKE_GPU = {"h100": ("nvidia-h100-80gb", 8), "h200": ("nvidia-h200-141gb", 8)}
COORDINATOR_PORT = 1234


def train_args(config_spec: str, workdir: str, overrides: Mapping[str, Any],
               extra: Sequence[str] = ()) -> list[str]:
  """stiv-train's arguments: --config, --workdir, then --config.FIELD=VALUE per override."""
  args = [f"--config={config_spec}", f"--workdir={workdir}"]
  args += [f"--config.{k}={_fmt(v)}" for k, v in overrides.items()]
  return args + list(extra)


def _fmt(v: Any) -> str:
  return str(v).lower() if isinstance(v, bool) else str(v)


def shell_join(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
  """A copy-pasteable shell line: `K=V ... argv` with everything quoted."""
  prefix = [f"{k}={shlex.quote(str(v))}" for k, v in (env or {}).items()]
  return " ".join(prefix + [shlex.quote(a) for a in argv])


def tpu_vm_ssh_argv(*, tpu_name: str, zone: str, project: str, repo_dir: str, venv: str,
                    train_argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
  """`gcloud compute tpus tpu-vm ssh NAME --worker=all --command=...` running stiv-train on
  every host of a multi-host slice (each host: cd repo, env, venv's stiv-train --distributed)."""
  for name, value in (("--tpu_name", tpu_name), ("--zone", zone)):
    if not value:
      raise ValueError(f"{name}: required for --target=tpu-vm")
  remote = f"cd {_quote_path(repo_dir)} && " + shell_join(
      [f"{venv.rstrip('/')}/bin/{train_argv[0]}", *train_argv[1:]], env)
  argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu_name, f"--zone={zone}"]
  if project:
    argv.append(f"--project={project}")
  return argv + ["--worker=all", f"--command={remote}"]


def _quote_path(path: str) -> str:
  """Shell-quotes a path but leaves a leading '~/' unquoted so the remote shell expands it."""
  if path.startswith("~/"):
    return "~/" + shlex.quote(path[2:])
  return shlex.quote(path)


def parse_accelerator(topology: str) -> tuple[str, int]:
  """'v5e-256' / 'v5p-128' / 'h100-16' -> (kind, chips); v5p-N counts TensorCores (N/2 chips)."""
  m = re.fullmatch(r"(?i)(v5e|v5p|v6e|h100|h200)(?:-|x)(\d+)", topology or "")
  if not m:
    raise ValueError(f"accelerator {topology!r}: expected v5e-N, v5p-N, v6e-N, h100-N or h200-N")
  kind, n = m.group(1).lower(), int(m.group(2))
  return kind, (n // 2 if kind == "v5p" else n)


def tpu_topology_name(kind: str, chips: int) -> str:
  """The GKE topology label: 2D for v5e/v6e ('16x16'), 3D for v5p ('4x4x8')."""
  return tpu_grid(kind, chips)


def gke_jobset(*, name: str, image: str, accelerator: str, train_argv: Sequence[str],
               namespace: str = "default", env: Mapping[str, str] | None = None,
               max_restarts: int = 0) -> dict:
  """A JobSet (jobset.x-k8s.io/v1alpha2) running stiv-train on every host of one TPU slice or
  GPU node group; one pod per host, indexed so each knows its process id."""
  if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?", name):
    raise ValueError(f"jobset name {name!r}: must be a DNS label (lowercase, digits, '-', <= 40)")
  if not image:
    raise ValueError("--image: required for --target=gke (a container with stiv_jax installed)")
  kind, chips = parse_accelerator(accelerator)
  container_env = dict(env or {})
  argv = list(train_argv)
  if kind in GKE_TPU:
    label, per_host, _ = GKE_TPU[kind]
    if chips % per_host and chips > per_host:
      raise ValueError(f"accelerator {accelerator}: {chips} chips is not a multiple of {per_host}")
    hosts = max(1, chips // per_host)
    per_host = min(per_host, chips)
    node_selector = {"cloud.google.com/gke-tpu-accelerator": label,
                     "cloud.google.com/gke-tpu-topology": tpu_topology_name(kind, chips)}
    resource = "google.com/tpu"
    argv.append("--distributed")   # jax.distributed auto-detects the GKE TPU slice
    env_list = [{"name": k, "value": str(v)} for k, v in {**TPU_ENV, **container_env}.items()]
  else:
    label, per_host = GKE_GPU[kind]
    if chips % per_host and chips > per_host:
      raise ValueError(f"accelerator {accelerator}: {chips} GPUs is not a multiple of {per_host}")
    hosts = max(1, chips // per_host)
    per_host = min(per_host, chips)
    node_selector = {"cloud.google.com/gke-accelerator": label}
    resource = "nvidia.com/gpu"
    env_list = [{"name": k, "value": str(v)} for k, v in {**GPU_ENV, **container_env}.items()]
    env_list += [
        {"name": "JAX_COORDINATOR_ADDRESS",
         "value": f"{name}-workers-0-0.{name}:{COORDINATOR_PORT}"},
        {"name": "JAX_NUM_PROCESSES", "value": str(hosts)},
        {"name": "JAX_PROCESS_ID", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
    ]
  pod_spec = {
      "restartPolicy": "Never",
      "nodeSelector": node_selector,
      "containers": [{
          "name": "stiv-train", "image": image, "command": argv, "env": env_list,
          "resources": {"limits": {resource: per_host}},
      }],
  }
  if kind in GKE_GPU:
    pod_spec["containers"][0]["ports"] = [{"containerPort": COORDINATOR_PORT}]
  return {
      "apiVersion": "jobset.x-k8s.io/v1alpha2",
      "kind": "JobSet",
      "metadata": {"name": name, "namespace": namespace, "annotations": {
          "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}},
      "spec": {
          "failurePolicy": {"maxRestarts": max_restarts},
          "network": {"enableDNSHostnames": True},
          "replicatedJobs": [{
              "name": "workers", "replicas": 1,
              "template": {"spec": {
                  "parallelism": hosts, "completions": hosts, "backoffLimit": 0,
                  "completionMode": "Indexed",
                  "template": {"spec": pod_spec}}},
          }],
      },
  }


def to_yaml(manifest: dict) -> str:
  """The manifest as YAML (keys in insertion order)."""
  return yaml.safe_dump(manifest, sort_keys=False, width=1000)
