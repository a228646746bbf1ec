"""`stiv-compile --config=experiments/configs/t2v.py:M --topology=v5e-256`: plan a pod without it.

Lowers and compiles the REAL train step (stiv_jax.train.step.jit_train_step over the abstract
train state of stiv_jax.train.state) for the target's mesh from abstract shapes only
(ShapeDtypeStructs with shardings; nothing is allocated), then prints one JSON object on its last
line: parameter / EMA / optimizer / batch bytes per device (exact, from the shardings), activation
bytes (`temp_size_in_bytes` of `memory_analysis()`), `bytes_per_device` (arguments + outputs -
donated aliases + temporaries), `device_bytes` (HBM per chip), `fits`, and `flops_per_step` from
`cost_analysis()`.

Target devices: JAX's compile-only TPU topology when the installed JAX has TPU support (libtpu;
`jax.experimental.topologies.get_topology_desc`), otherwise fake CPU devices with the same mesh
shape (a subprocess with --xla_force_host_platform_device_count). With fake CPU devices the
memory figures are those of XLA's CPU compiler for the same per-device shard shapes (fusion and
layout differ from TPU's; the output says `"method": "fake-cpu"`). When the slice has more chips
than `--max_fake_devices`, the data axis is reduced and the global batch scaled with it so every
per-device shard shape (parameters, optimizer state, per-device batch, activations) is unchanged;
the output names the compiled mesh and batch (`compiled_mesh`, `compiled_batch`, `note`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import time
from typing import Any

from absl import app, flags
from ml_collections import config_flags

GIB = 1 << 30
# Per-chip HBM and bf16 peak FLOP/s of each target kind.
DEVICE_TABLE = {
    "v5e": {"bytes": 16 * GIB, "peak_bf16": 197e12, "tpu_name": "v5e"},
    "v5p": {"bytes": 95 * GIB, "peak_bf16": 459e12, "tpu_name": "v5p"},
    "v6e": {"bytes": 32 * GIB, "peak_bf16": 918e12, "tpu_name": "v6e"},
    "h100": {"bytes": 80 * GIB, "peak_bf16": 989e12, "tpu_name": ""},
    "h200": {"bytes": 141 * GIB, "peak_bf16": 989e12, "tpu_name": ""},
}

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the CLI flags (at run time, so importing this module defines no global flags)."""
  if "topology" in FLAGS:
    return
  config_flags.DEFINE_config_file("config", None, "Train config file, e.g. experiments/configs/"
                                  "t2v.py:M (override fields with --config.a.b=v).")
  flags.DEFINE_string("topology", None, "Target slice: v5e-N, v6e-N (N chips), v5p-N (N "
                      "TensorCores = N/2 chips, as GCP names them), h100-N / H100xN, h200-N.")
  flags.DEFINE_integer("max_fake_devices", 64, "Most fake CPU devices to compile with; above it "
                       "the data axis is reduced (same per-device shapes).")
  flags.DEFINE_float("usable_fraction", 0.95, "Share of device memory a step may use to `fit`.")
  flags.DEFINE_bool("unrolled_flops", True, "Count FLOPs on the lowered step with unrolled "
                    "blocks (XLA counts a scanned loop body once).")
  flags.DEFINE_string("plan_json", "", "Internal: the compile plan, for the worker subprocess.")


@dataclasses.dataclass(frozen=True)
class Topology:
  """A target slice: chip kind, chip count, HBM per chip."""
  name: str
  kind: str
  chips: int
  device_bytes: int
  peak_bf16: float


def parse_topology(name: str) -> Topology:
  """'v5e-256' / 'v6e-64' / 'v5p-128' / 'h100-16' / 'H100x16' -> Topology (error names the input)."""
  m = re.fullmatch(r"(?i)(v5e|v5p|v6e|h100|h200)(?:-|x)(\d+)", (name or "").strip())
  if not m:
    raise ValueError(f"--topology: {name!r} not understood; expected v5e-N, v5p-N, v6e-N, "
                     "h100-N (or H100xN) or h200-N")
  kind, n = m.group(1).lower(), int(m.group(2))
  chips = n // 2 if kind == "v5p" else n   # v5p-N counts TensorCores (2 per chip)
  if chips < 1 or (kind == "v5p" and n % 2):
    raise ValueError(f"--topology: {name!r} gives {chips} chips; v5p-N needs an even N >= 2")
  info = DEVICE_TABLE[kind]
  return Topology(name=name, kind=kind, chips=chips, device_bytes=info["bytes"],
                  peak_bf16=info["peak_bf16"])


@dataclasses.dataclass
class Plan:
  """What to compile: the target mesh and the (possibly data-reduced) mesh actually compiled."""
  config_spec: str
  overrides: list[str]
  topology: str
  mesh: tuple[int, int, int]           # target (data, fsdp, tensor)
  compiled_mesh: tuple[int, int, int]  # compiled (data reduced when the slice is too large)
  global_batch: int
  compiled_batch: int
  note: str


def make_plan(config: Any, topo: Topology, max_fake: int, config_spec: str = "",
              overrides: list[str] | None = None) -> Plan:
  """Target mesh from config.mesh and the chip count; reduces the data axis to fit max_fake."""
  from stiv_jax import sharding as shd
  data, fsdp, tensor = shd.mesh_shape(config.mesh, topo.chips)
  rules = shd.rules_from_config(config.mesh.rules)
  axes = dict(zip(shd.MESH_AXES, (data, fsdp, tensor)))
  batch = int(config.data.batch_size)
  split = math.prod(axes[a] for a in rules.get("batch", ()))
  if batch % split:
    raise ValueError(f"data.batch_size: {batch} is not divisible by the {split} ways the batch "
                     f"is split on mesh {axes} (mesh.rules.batch={config.mesh.rules.batch!r})")
  note = ""
  d = data
  if data * fsdp * tensor > max_fake:
    divisors = [k for k in range(1, data + 1) if data % k == 0 and k * fsdp * tensor <= max_fake]
    if not divisors:
      raise ValueError(
          f"mesh: fsdp*tensor={fsdp * tensor} alone exceeds --max_fake_devices={max_fake}; "
          "raise --max_fake_devices (the per-device shapes need that many devices)")
    d = max(divisors)
    note = (f"compiled with data={d} instead of {data} ({d * fsdp * tensor} fake devices) and "
            f"the global batch scaled to match: per-device shard shapes equal the target's")
  compiled_batch = batch * d // data
  return Plan(config_spec=config_spec, overrides=list(overrides or []), topology=topo.name,
              mesh=(data, fsdp, tensor), compiled_mesh=(d, fsdp, tensor), global_batch=batch,
              compiled_batch=compiled_batch, note=note)


def _tree_bytes_per_device(tree: Any) -> int:
  """Sum over leaves (ShapeDtypeStructs with shardings) of one device's shard size in bytes."""
  import jax
  import numpy as np
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return int(total)


def tpu_topology_devices(topo: Topology) -> tuple[list | None, str]:
  """Compile-only TPU devices from JAX when it has TPU support, else (None, the reason)."""
  info = DEVICE_TABLE[topo.kind]
  if not info["tpu_name"]:
    return None, f"{topo.kind}: not a TPU; JAX has no compile-only GPU topology on this install"
  try:
    from jax.experimental import topologies
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=f"{info['tpu_name']}:{tpu_grid(topo.kind, topo.chips)}",
        chip_config_name="default", chips_per_host_bounds=(2, 2, 1), num_slices=1)
    return list(desc.devices), ""
  except Exception as e:  # no libtpu: RuntimeError "JAX TPU support not installed"
    return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"


def tpu_grid(kind: str, chips: int) -> str:
  """The 2D (v5e/v6e) or 3D (v5p) chip grid name of a slice, e.g. 256 chips -> '16x16'."""
  if kind == "v5p":
    dims = [1, 1, 1]
    i = 0
    while math.prod(dims) < chips:
      dims[i % 3] *= 2
      i += 1
    return "x".join(str(x) for x in sorted(dims))
  a = 2 ** (int(math.log2(chips)) // 2)
  return f"{a}x{chips // a}"


def compile_step(config: Any, plan: Plan, topo: Topology, devices: list | None = None,
                 method: str = "fake-cpu", unrolled_flops: bool = True,
                 usable_fraction: float = 0.95) -> dict:
  """AOT lower + compile the train step for plan.compiled_mesh; returns the report dict."""
  import jax

  from stiv_jax import sharding as shd
  from stiv_jax.models import flops as flops_lib
  from stiv_jax.train import optimizer as opt_lib
  from stiv_jax.train import state as state_lib
  from stiv_jax.train import step as step_lib

  devices = list(devices if devices is not None else jax.devices())
  n = math.prod(plan.compiled_mesh)
  if len(devices) < n:
    raise RuntimeError(f"compile: {n} devices needed for mesh {plan.compiled_mesh}, have "
                       f"{len(devices)}")
  mesh_cfg = config.mesh.copy_and_resolve_references()
  with mesh_cfg.unlocked():
    mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor = plan.compiled_mesh
  mesh = shd.make_mesh(mesh_cfg, devices[:n])
  rules = shd.rules_from_config(config.mesh.rules)
  tx = opt_lib.make_optimizer(config.optimizer)
  graphdef, target, shardings = state_lib.abstract_train_state(
      lambda: state_lib.build_model(config.model, config.seed), tx, mesh, rules)

  m, b = config.model, plan.compiled_batch
  length, dim = int(config.text.max_length), int(m.text_dim)
  latent = (m.num_frames, m.latent_height, m.latent_width, m.latent_channels)
  batch, batch_sh = step_lib.abstract_batch(step_lib.batch_shapes(b, latent, length, dim),
                                            mesh, rules)
  null = step_lib.abstract_null_text(length, dim, mesh)

  step_fn = step_lib.jit_train_step(config, graphdef, tx, shardings, batch_sh, mesh)
  t0 = time.perf_counter()
  lowered = step_fn.lower(target, batch, null)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  # XLA's cost analysis counts a while loop's body once, so with scanned blocks the compiled
  # figure misses (depth - 1) blocks. The step's FLOPs come from the lowered (global,
  # pre-partitioning) module of the same step with the blocks unrolled: remat recompute included.
  global_flops, flops_source = None, "compiled"
  if unrolled_flops:
    unrolled = config.copy_and_resolve_references()
    with unrolled.unlocked():
      unrolled.model.scan_blocks = False
    g2, target2, sh2 = state_lib.abstract_train_state(
        lambda: state_lib.build_model(unrolled.model, unrolled.seed), tx, mesh, rules)
    cost2 = step_lib.jit_train_step(unrolled, g2, tx, sh2, batch_sh, mesh).lower(
        target2, batch, null).cost_analysis()
    cost2 = cost2[0] if isinstance(cost2, (list, tuple)) else cost2
    if cost2 and cost2.get("flops"):
      global_flops = float(cost2["flops"]) * plan.global_batch / plan.compiled_batch
      flops_source = "lowered-unrolled"
  t3 = time.perf_counter()

  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  arg_b, out_b = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
  alias_b, temp_b = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
  total = arg_b + out_b - alias_b + temp_b
  flops_dev = float(cost.get("flops", 0.0)) if cost else 0.0
  chips = math.prod(plan.mesh)
  analytic = flops_lib.train_step_flops(
      m, plan.global_batch, m.num_frames, m.latent_height, m.latent_width, length,
      masked=float(m.mask_ratio) > 0)
  usable = usable_fraction
  return {
      "config": plan.config_spec, "overrides": plan.overrides, "topology": plan.topology,
      "chips": chips, "method": method, "backend": jax.default_backend(),
      "mesh": dict(zip(shd.MESH_AXES, plan.mesh)),
      "compiled_mesh": dict(zip(shd.MESH_AXES, plan.compiled_mesh)),
      "global_batch": plan.global_batch, "compiled_batch": plan.compiled_batch,
      "per_device_batch": plan.global_batch / chips,
      "model": {"size": str(m.size), "frames": int(m.num_frames),
                "latent": [int(m.latent_height), int(m.latent_width)],
                "resolution": int(m.latent_height) * int(config.vae.spatial_factor),
                "remat": str(m.remat), "dtype": str(m.dtype), "mask_ratio": float(m.mask_ratio)},
      "param_bytes": _tree_bytes_per_device(target.params),
      "ema_bytes": _tree_bytes_per_device(target.ema_params),
      "optimizer_bytes": _tree_bytes_per_device(target.opt_state),
      "batch_bytes": _tree_bytes_per_device(batch),
      "activation_bytes": temp_b,
      "argument_bytes": arg_b, "output_bytes": out_b, "alias_bytes": alias_b,
      "bytes_per_device": total, "gib_per_device": round(total / GIB, 3),
      "device_bytes": topo.device_bytes, "usable_fraction": usable,
      "fits": bool(total <= usable * topo.device_bytes),
      "compiled_flops_per_device": flops_dev,
      "flops_per_step": global_flops if global_flops is not None else flops_dev * chips,
      "flops_source": flops_source, "analytic_flops_per_step": analytic,
      "lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2),
      "flops_lower_s": round(t3 - t2, 2), "note": plan.note,
  }


def _worker(plan: Plan, config: Any) -> dict:
  """Runs inside the subprocess whose XLA_FLAGS gave it the fake CPU devices."""
  topo = parse_topology(plan.topology)
  return compile_step(config, plan, topo, unrolled_flops=FLAGS.unrolled_flops,
                      usable_fraction=FLAGS.usable_fraction)


def _spawn(plan: Plan, argv: list[str]) -> dict:
  """Re-runs this module with N fake CPU devices; returns the JSON of its last line."""
  n = math.prod(plan.compiled_mesh)
  env = dict(os.environ)
  xla = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{xla} --xla_force_host_platform_device_count={n}".strip()
  env["JAX_PLATFORMS"] = "cpu"
  args = [a for a in argv[1:] if not a.startswith("--plan_json")]
  cmd = [sys.executable, "-m", "stiv_jax.tools.compile", *args,
         "--plan_json=" + json.dumps(dataclasses.asdict(plan))]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.strip()]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f"stiv-compile worker failed (exit {proc.returncode}):\n"
                       f"{proc.stderr[-4000:]}")
  return json.loads(lines[-1])


def _config_spec(argv: list[str]) -> tuple[str, list[str]]:
  """The --config value and the --config.x=y overrides, from the command line."""
  spec, overrides = "", []
  for a in argv[1:]:
    if a.startswith("--config="):
      spec = a.split("=", 1)[1]
    elif a.startswith("--config."):
      overrides.append(a[len("--config."):])
  return spec, overrides


def main(argv: list[str]) -> None:
  if FLAGS.config is None:
    raise app.UsageError("--config is required, e.g. --config=experiments/configs/t2v.py:M")
  config = FLAGS.config
  if FLAGS.plan_json:
    plan = Plan(**{k: tuple(v) if k.endswith("mesh") else v
                   for k, v in json.loads(FLAGS.plan_json).items()})
    print(json.dumps(_worker(plan, config)))
    sys.stdout.flush()
    return
  if not FLAGS.topology:
    raise app.UsageError("--topology is required, e.g. --topology=v5e-256")
  topo = parse_topology(FLAGS.topology)
  spec, overrides = _config_spec(sys.argv)
  plan = make_plan(config, topo, topo.chips, spec, overrides)
  devices, why_not = tpu_topology_devices(topo)
  if devices is not None:
    result = compile_step(config, plan, topo, devices, method="tpu-topology",
                          unrolled_flops=FLAGS.unrolled_flops,
                          usable_fraction=FLAGS.usable_fraction)
  else:
    plan = make_plan(config, topo, FLAGS.max_fake_devices, spec, overrides)
    result = _spawn(plan, sys.argv)
    result["aot_topology_unavailable"] = why_not
  print(json.dumps(result))
  sys.stdout.flush()


def run() -> None:
  """Console entry point (`stiv-compile`)."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
