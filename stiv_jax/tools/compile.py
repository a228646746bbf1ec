"""`stiv-compile --config=experiments/configs/t2v.py:M --topology=v5p-256`: plan a pod without it.

Lowers and compiles the REAL train step (stiv_jax.train.step.jit_train_step over the abstract
train state) or, with `--mode=sample`, the JIT-CFG grid step of stiv_jax.sampling (EMA
parameters sharded by the train rules, no optimizer state) for the target's mesh from abstract
shapes only (ShapeDtypeStructs with shardings; nothing is allocated), then prints one JSON
object on its last line (with several buckets, one line per bucket and last `{"reports": [..]}`):
  - bytes per device: parameters / EMA / optimizer / batch (exact, from the shardings),
    activations (`temp_size_in_bytes`), `bytes_per_device` (arguments + outputs - donated
    aliases + temporaries), `fits` against the chip's HBM (`usable_fraction` of it);
  - `estimated_step_s` and `estimated_mfu`: a per-op roofline of the compiled program
    (stiv_jax/tools/roofline.py; an ESTIMATE, `estimate_method` says how), the analytic model
    FLOPs of stiv_jax/models/flops.py over (step time x chips x bf16 peak); the collectives per
    step (count and bytes of each kind, all-to-all included) and the biggest ops;
  - the compiler's own `optimal_seconds` next to it (unreliable for the full step: negative).

Target devices: for a TPU target (v5e / v5p / v6e) JAX's compile-only TPU topology
(jax.experimental.topologies, needs libtpu: `pip install -e .[tpu]`), `"method":
"tpu-compiler"`. Otherwise (a GPU target, or no libtpu) fake CPU devices in a subprocess with
the same per-device shapes, `"method": "fake-cpu"` (XLA:CPU's memory figures; the data axis is
reduced and the global batch scaled to fit --max_fake_devices).

Per bucket: `--bucket=TxHxW` (latent frames x height x width; repeatable) or `--buckets=data`
(every bucket of the shard manifest at config.data.path). Bad input (topology, mesh, batch, a
plan that does not fit) is one line on stderr and exit status 2.
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
import types
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from stiv_jax import cli_errors
from stiv_jax.tools.chips import CHIPS, GIB, TPU_SLICE_CHIPS, Chip

PROG = "stiv-compile"
MODES = ("train", "sample")
ESTIMATE_METHOD = ("from the compiled HLO (an estimate, not a measurement): each op executed "
                   "(while loops x trip count) timed by the TPU compiler's estimated_cycles at "
                   "the chip clock, else max(matmul FLOPs / bf16 peak, HBM bytes / "
                   "bandwidth); collectives as ring traffic over ICI, async ones hidden "
                   "behind compute up to the compute time (roofline_step_s: every op by the "
                   "roofline)")
FLAGS = flags.FLAGS


class PlanError(ValueError):
  """A user input the plan cannot take (one line, exit status 2)."""


def define_flags() -> None:
  """Defines the CLI flags (at run time, so importing this module defines no global flags)."""
  if "topology" in FLAGS:
    return
  config_flags.DEFINE_config_file("config", None, "Train config file, e.g. experiments/configs/"
                                  "t2v.py:M (override fields with --config.a.b=v).")
  flags.DEFINE_string("topology", None, "Target slice: v5e-N, v6e-N (N chips), v5p-N (N "
                      "TensorCores = N/2 chips, as GCP names them), h100-N / H100xN, h200-N.")
  flags.DEFINE_enum("mode", "train", MODES, "Plan the train step or the sampling grid step.")
  flags.DEFINE_integer("sample_batch", 0, "--mode=sample: samples per call (0 = one per "
                       "device of the batch axes).")
  flags.DEFINE_multi_string("bucket", [], "Plan this bucket: latent frames x height x width "
                            "(TxHxW); repeatable.")
  flags.DEFINE_string("buckets", "", "'data': plan every bucket of the shard manifest at "
                      "config.data.path.")
  flags.DEFINE_enum("backend", "auto", ("auto", "tpu", "fake-cpu"), "auto: the TPU compiler "
                    "for a TPU target when libtpu is installed, else fake CPU devices.")
  flags.DEFINE_integer("max_fake_devices", 64, "Most fake CPU devices to compile with; above it "
                       "the data axis is reduced (same per-device shapes).")
  flags.DEFINE_float("usable_fraction", 0.95, "Share of device memory a step may use to `fit`.")
  flags.DEFINE_bool("estimate", True, "Estimate step time / MFU from the compiled program.")
  flags.DEFINE_string("hlo_out", "", "Write the compiled program's HLO text to this file.")
  flags.DEFINE_bool("verbose", False, "Tracebacks for input errors.")
  flags.DEFINE_string("plan_json", "", "Internal: the compile plan, for the worker subprocess.")


# ------------------------------------------------------------------------------ topology


@dataclasses.dataclass(frozen=True)
class Topology:
  """A target slice: chip kind and count."""
  name: str
  kind: str
  chips: int
  chip: Chip

  @property
  def device_bytes(self) -> int:
    return self.chip.hbm_bytes

  @property
  def peak_bf16(self) -> float:
    return self.chip.peak_bf16

  @property
  def is_tpu(self) -> bool:
    return bool(self.chip.tpu_name)


def parse_topology(name: str) -> Topology:
  """'v5e-256' / 'v6e-64' / 'v5p-256' / 'h100-16' / 'H100x16' -> Topology; a name or a chip
  count the TPU product does not have fails naming the value and the valid ones."""
  m = re.fullmatch(r"(?i)(v5e|v5p|v6e|h100|h200)(?:-|x)(\d+)", (name or "").strip())
  if not m:
    raise PlanError(f"--topology: {name!r} not understood; expected v5e-N, v5p-N, v6e-N, "
                    "h100-N (or H100xN) or h200-N")
  kind, n = m.group(1).lower(), int(m.group(2))
  chips = n // 2 if kind == "v5p" else n   # v5p-N counts TensorCores (2 per chip)
  if chips < 1 or (kind == "v5p" and n % 2):
    raise PlanError(f"--topology: {name!r} gives {chips} chips; v5p-N needs an even N >= 2")
  if kind in TPU_SLICE_CHIPS and chips not in TPU_SLICE_CHIPS[kind]:
    valid = TPU_SLICE_CHIPS[kind]
    names = [f"{kind}-{c * 2 if kind == 'v5p' else c}" for c in valid]
    raise PlanError(f"--topology: {name!r} ({chips} chips) is not a {kind} slice; "
                    f"{kind} slices: {', '.join(names)}")
  return Topology(name=name, kind=kind, chips=chips, chip=CHIPS[kind])


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


def _set_tpu_env(topo: Topology) -> None:
  """Environment for compile-only libtpu on a machine without TPUs, set before JAX loads it:
  no cloud metadata query, the accelerator/worker names it otherwise warns about, and no
  single-process lock (/tmp/libtpu_lockfile), so plans and tests may compile side by side."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  accel = {"v5e": f"v5litepod-{topo.chips}", "v5p": f"v5p-{2 * topo.chips}",
           "v6e": f"v6e-{topo.chips}"}[topo.kind]
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", accel)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_WORKER_ID", "0")


def tpu_topology_devices(topo: Topology) -> tuple[list | None, str]:
  """Compile-only TPU devices of the slice, or (None, why not)."""
  if not topo.is_tpu:
    return None, f"{topo.kind}: not a TPU; JAX has no compile-only GPU topology"
  _set_tpu_env(topo)
  grid = tpu_grid(topo.kind, topo.chips)
  bounds = tuple(min(2, int(d)) for d in grid.split("x")) + (1,) * (3 - len(grid.split("x")))
  try:
    from jax.experimental import topologies
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=f"{topo.chip.tpu_name}:{grid}",
        chip_config_name="default", chips_per_host_bounds=bounds[:3], num_slices=1)
    devices = list(desc.devices)
  except Exception as e:  # no libtpu: "JAX TPU support not installed"; a grid libtpu refuses
    return None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
  if len(devices) != topo.chips:
    return None, f"TPU topology {grid} gave {len(devices)} devices, expected {topo.chips}"
  return devices, ""


# ------------------------------------------------------------------------------ the plan


@dataclasses.dataclass
class Plan:
  """What to compile: the target mesh and the (possibly data-reduced) mesh actually compiled."""
  config_spec: str
  overrides: list[str]
  topology: str
  mesh: dict[str, int]            # target sizes, in stiv_jax.sharding.MESH_AXES order
  compiled_mesh: dict[str, int]   # compiled (data reduced when fake devices are too few)
  global_batch: int
  compiled_batch: int
  note: str
  mode: str = "train"
  bucket: list[int] | None = None   # latent [T, H, W] (None: the model config's)


def parse_bucket(text: str) -> list[int]:
  """'TxHxW' -> [T, H, W] (the shard manifest's bucket keys)."""
  m = re.fullmatch(r"\s*(\d+)x(\d+)x(\d+)\s*", text or "")
  if not m:
    raise PlanError(f"--bucket: {text!r} not understood; expected latent TxHxW, e.g. 20x32x32")
  return [int(g) for g in m.groups()]


def _sample_padding(batch: int, divisor: int, branches: int) -> tuple[int, bool]:
  """stiv_jax.sampling.Sampler.padding for a batch and mesh (the same rule, no model)."""
  from stiv_jax import sampling
  shim = types.SimpleNamespace(batch_divisor=divisor, forward_branches=branches)
  return sampling.Sampler.padding(shim, batch)


def make_plan(config: Any, topo: Topology, max_devices: int, config_spec: str = "",
              overrides: list[str] | None = None, mode: str = "train", sample_batch: int = 0,
              bucket: list[int] | None = None) -> Plan:
  """Target mesh from config.mesh and the chip count; reduces the data axis to fit max_devices.

  The global batch must split evenly over the batch axes (train); sampling pads it the way
  the Sampler does.
  """
  from stiv_jax import sharding as shd
  try:
    sizes = shd.mesh_shape(config.mesh, topo.chips)
  except ValueError as e:
    raise PlanError(f"{e}; a {topo.name} slice has {topo.chips} chips: choose mesh sizes whose "
                    f"product is {topo.chips} (one may be -1), e.g. mesh.fsdp in "
                    f"{[d for d in range(1, topo.chips + 1) if topo.chips % d == 0]}") from None
  axes = dict(zip(shd.MESH_AXES, (int(s) for s in sizes)))
  rules = shd.rules_from_config(config.mesh.rules)
  try:
    shd.validate_model_mesh(config.model, axes, rules)   # frames / positions vs mesh.context
  except ValueError as e:
    raise PlanError(str(e)) from None
  split = math.prod(axes[a] for a in rules.get("batch", ()))
  if mode == "train":
    batch = int(config.data.batch_size)
    if batch % split:
      fits = [k * split for k in range(max(1, batch // split), batch // split + 2)]
      raise PlanError(f"data.batch_size: {batch} is not divisible by the {split} ways the "
                      f"batch is split on mesh {axes} (mesh.rules.batch="
                      f"{config.mesh.rules.batch!r}); e.g. {fits[0]} or {fits[-1]}")
  else:
    batch = int(sample_batch) or split
  note = ""
  d = axes["data"]
  total = math.prod(axes.values())
  if total > max_devices:
    rest = total // d
    divisors = [k for k in range(1, d + 1) if d % k == 0 and k * rest <= max_devices]
    if not divisors:
      raise PlanError(f"mesh: the non-data axes ({rest} devices) alone exceed "
                      f"--max_fake_devices={max_devices}; raise it to >= {rest}")
    d = max(divisors)
    note = (f"compiled with data={d} instead of {axes['data']} ({d * rest} fake devices) and "
            f"the global batch scaled to match: per-device shard shapes equal the target's")
  compiled = dict(axes, data=d)
  if mode == "train":
    compiled_batch = batch * d // axes["data"]
  else:
    compiled_batch = max(1, batch * d // axes["data"])
  return Plan(config_spec=config_spec, overrides=list(overrides or []), topology=topo.name,
              mesh=axes, compiled_mesh=compiled, global_batch=batch,
              compiled_batch=compiled_batch, note=note, mode=mode, bucket=bucket)


# ------------------------------------------------------------------------------ compile


def _tree_bytes_per_device(tree: Any) -> int:
  """Sum over leaves (ShapeDtypeStructs with shardings) of one device's shard size in bytes."""
  import jax
  import numpy as np
  total = 0
  for leaf in jax.tree.leaves(tree):
    sharding = getattr(leaf, "sharding", None)
    shape = sharding.shard_shape(leaf.shape) if sharding is not None else leaf.shape
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return int(total)


def _mesh(config: Any, plan: Plan, devices: list):
  from stiv_jax import sharding as shd
  n = math.prod(plan.compiled_mesh.values())
  if len(devices) < n:
    raise RuntimeError(f"compile: {n} devices needed for mesh {plan.compiled_mesh}, have "
                       f"{len(devices)}")
  mesh_cfg = config.mesh.copy_and_resolve_references()
  with mesh_cfg.unlocked():
    for a, s in plan.compiled_mesh.items():
      mesh_cfg[a] = s
  return shd.make_mesh(mesh_cfg, devices[:n]), shd.rules_from_config(config.mesh.rules)


def _latent(config: Any, plan: Plan) -> tuple[int, int, int, int]:
  m = config.model
  t, h, w = plan.bucket or (int(m.num_frames), int(m.latent_height), int(m.latent_width))
  if h % int(m.patch_s) or w % int(m.patch_s) or (t > 1 and t % int(m.patch_t)):
    raise PlanError(f"bucket {t}x{h}x{w}: not divisible by the patch (model.patch_t="
                    f"{m.patch_t}, patch_s={m.patch_s})")
  return int(t), int(h), int(w), int(m.latent_channels)


def _lower_train(config: Any, plan: Plan, mesh, rules) -> tuple[Any, dict]:
  """Lowered train step and the per-device state bytes."""
  from stiv_jax.train import optimizer as opt_lib
  from stiv_jax.train import state as state_lib
  from stiv_jax.train import step as step_lib
  tx = opt_lib.make_optimizer(config.optimizer)
  graphdef, target, shardings = state_lib.abstract_train_state(
      lambda: state_lib.build_model(config.model, config.seed), tx, mesh, rules)
  length, dim = int(config.text.max_length), int(config.model.text_dim)
  batch, batch_sh = step_lib.abstract_batch(
      step_lib.batch_shapes(plan.compiled_batch, _latent(config, plan), length, dim), mesh, rules)
  null = step_lib.abstract_null_text(length, dim, mesh)
  lowered = step_lib.jit_train_step(config, graphdef, tx, shardings, batch_sh, mesh).lower(
      target, batch, null)
  return lowered, {"param_bytes": _tree_bytes_per_device(target.params),
                   "ema_bytes": _tree_bytes_per_device(target.ema_params),
                   "optimizer_bytes": _tree_bytes_per_device(target.opt_state),
                   "batch_bytes": _tree_bytes_per_device(batch)}


def _lower_sample(config: Any, plan: Plan, mesh, rules) -> tuple[Any, dict]:
  """Lowered JIT-CFG grid step (stiv_jax.sampling) with EMA parameters in the train rules'
  shardings, inputs placed as the Sampler places them."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from jax.sharding import NamedSharding, PartitionSpec as P

  from stiv_jax import sampling
  from stiv_jax import sharding as shd
  from stiv_jax.train import state as state_lib
  scfg = sampling.SamplerConfig.from_config(dict(config.get("sampling", {}) or {}))
  abstract = nnx.eval_shape(lambda: state_lib.build_model(config.model, config.seed))
  graphdef, state = nnx.split(abstract)
  specs = shd.param_specs(state, mesh, rules)
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                          sharding=NamedSharding(mesh, s)),
                        state, specs)
  axes = tuple(a for a in mesh.axis_names if a in ("data", "fsdp")) or (mesh.axis_names[0],)
  divisor = math.prod(mesh.shape[a] for a in axes)
  branches = sampling.num_branches(scfg) if scfg.batched_cfg else 1
  pad, sharded = _sample_padding(plan.compiled_batch, divisor, branches)
  b = plan.compiled_batch + pad
  batch_sh, rep = NamedSharding(mesh, P(axes)), NamedSharding(mesh, P())
  place = batch_sh if sharded else rep
  t, h, w, c = _latent(config, plan)
  length, dim = int(config.text.max_length), int(config.model.text_dim)

  def arr(shape, dtype, sh=place):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sh)

  x = arr((b, t, h, w, c), jnp.float32)
  cond = {"text": arr((b, length, dim), jnp.float32), "text_mask": arr((b, length), jnp.bool_),
          "pooled": arr((b, dim), jnp.float32), "micro": arr((b, 6), jnp.float32),
          "cond_mask": arr((b, t), jnp.bool_), "cond_latents": arr((b, t, h, w, c), jnp.float32)}
  null = {"text": arr((b, length, dim), jnp.float32), "text_mask": arr((b, length), jnp.bool_),
          "pooled": arr((b, dim), jnp.float32)}
  times = arr((int(scfg.steps) + 1,), jnp.float32, rep)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep)
  sharding = (sampling.BranchSharding(place, batch_sh) if branches > 1 else None)
  step = sampling._new_step(sampling.model_apply_fn(graphdef), scfg, sharding,
                            sampling.activation_layout(mesh, rules, axes))
  lowered = step.lower(params, x, jax.ShapeDtypeStruct((), jnp.int32, sharding=rep), times,
                       cond, null, x, key)
  return lowered, {"param_bytes": _tree_bytes_per_device(params), "ema_bytes": 0,
                   "optimizer_bytes": 0,
                   "batch_bytes": _tree_bytes_per_device((x, cond, null)),
                   "sample_padding": pad, "sample_inputs_sharded": bool(sharded),
                   "forward_branches": branches, "solver": scfg.solver}


def _model_flops(config: Any, plan: Plan, latent: tuple[int, ...], branches: int) -> float:
  """Analytic model FLOPs of one step (what the train metrics' MFU uses)."""
  from stiv_jax.models import flops as flops_lib
  m = config.model
  t, h, w, _ = latent
  length = int(config.text.max_length)
  if plan.mode == "train":
    return flops_lib.train_step_flops(m, plan.global_batch, t, h, w, length,
                                      masked=float(m.mask_ratio) > 0)
  evals = {"euler": 1, "heun": 2, "sde": 1}.get(str(config.get("sampling", {}).get(
      "solver", "euler")), 1)
  return evals * flops_lib.forward_flops(m, plan.global_batch * branches, t, h, w, length)


def compile_step(config: Any, plan: Plan, topo: Topology, devices: list | None = None,
                 method: str = "fake-cpu", usable_fraction: float = 0.95,
                 estimate: bool = True, hlo_out: str = "") -> dict:
  """AOT lower + compile the step for plan.compiled_mesh; returns the report dict."""
  import jax

  from stiv_jax import sharding as shd

  devices = list(devices if devices is not None else jax.devices())
  shd.set_partitioner(config.mesh)
  mesh, rules = _mesh(config, plan, devices)
  latent = _latent(config, plan)
  t0 = time.perf_counter()
  lower = _lower_train if plan.mode == "train" else _lower_sample
  lowered, state_bytes = lower(config, plan, mesh, rules)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()

  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  arg_b, out_b = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
  alias_b, temp_b = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
  total = arg_b + out_b - alias_b + temp_b
  chips = math.prod(plan.mesh.values())
  n_compiled = math.prod(plan.compiled_mesh.values())
  m = config.model
  branches = int(state_bytes.get("forward_branches", 1))
  model_flops = _model_flops(config, plan, latent, branches)
  report = {
      "config": plan.config_spec, "overrides": plan.overrides, "mode": plan.mode,
      "topology": plan.topology, "chip": topo.kind, "chips": chips, "method": method,
      "backend": jax.default_backend(),
      "mesh": plan.mesh, "compiled_mesh": plan.compiled_mesh,
      "global_batch": plan.global_batch, "compiled_batch": plan.compiled_batch,
      "per_device_batch": plan.global_batch / chips,
      "bucket": "x".join(str(v) for v in latent[:3]),
      "model": {"size": str(m.size), "frames": latent[0], "latent": list(latent[1:3]),
                "resolution": latent[1] * int(config.vae.spatial_factor),
                "depth": int(m.depth), "remat": str(m.remat), "dtype": str(m.dtype),
                "mask_ratio": float(m.mask_ratio), "attention_impl": str(m.attention_impl),
                "adaln": str(m.get("adaln", "shared")), "scan_blocks": bool(m.scan_blocks)},
      "optimizer": {"name": str(config.optimizer.name),
                    "factor_rule": str(config.optimizer.get("factor_rule", "shape"))},
      **state_bytes,
      "activation_bytes": temp_b, "argument_bytes": arg_b, "output_bytes": out_b,
      "alias_bytes": alias_b, "bytes_per_device": total, "gib_per_device": round(total / GIB, 3),
      "device_bytes": topo.device_bytes, "usable_fraction": usable_fraction,
      "fits": bool(total <= usable_fraction * topo.device_bytes),
      "headroom": round(1.0 - total / topo.device_bytes, 4),
      "compiled_flops_per_device": float(cost.get("flops", 0.0)),
      "optimal_seconds": float(cost.get("optimal_seconds", float("nan"))),
      "model_flops_per_step": model_flops,
      "lower_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2), "note": plan.note,
  }
  text = compiled.as_text() if (estimate or hlo_out) else ""
  if hlo_out:
    with open(hlo_out, "w") as f:
      f.write(text)
  if estimate:
    t3 = time.perf_counter()
    coords = ([tuple(d.coords) for d in mesh.devices.flat] if hasattr(devices[0], "coords")
              else None)
    report.update(estimate_fields(text, report, topo, coords))
    report["estimate_s"] = round(time.perf_counter() - t3, 2)
  return report


def mesh_coords(topo: Topology, mesh_sizes: dict[str, int]) -> list | None:
  """Chip coordinates of a TPU mesh's devices in mesh order (what replica-group ids index)."""
  import jax
  devices, _ = tpu_topology_devices(topo)
  if devices is None:
    return None
  mesh = jax.make_mesh(tuple(mesh_sizes.values()), tuple(mesh_sizes),
                       axis_types=(jax.sharding.AxisType.Auto,) * len(mesh_sizes),
                       devices=devices[:math.prod(mesh_sizes.values())])
  return [tuple(d.coords) for d in mesh.devices.flat]


def estimate_fields(hlo_text: str, report: dict, topo: Topology, coords: list | None) -> dict:
  """The report's step-time fields from the compiled program's HLO (stiv_jax/tools/roofline.py):
  estimated step seconds and MFU (model FLOPs / (step x chips x bf16 peak)), the collectives."""
  from stiv_jax.tools import roofline
  est = roofline.estimate(hlo_text, topo.chip, coords,
                          math.prod(report["compiled_mesh"].values()))
  peak = report["chips"] * topo.peak_bf16

  def mfu(step_s: float) -> float | None:
    return float(f"{report['model_flops_per_step'] / (step_s * peak):.4g}") if step_s > 0 else None

  return {
      "estimated_step_s": float(f"{est.step_s:.4g}"),
      "estimated_mfu": mfu(est.step_s),
      "roofline_step_s": float(f"{est.roofline_step_s:.4g}"),
      "roofline_mfu": mfu(est.roofline_step_s),
      "estimate_method": ESTIMATE_METHOD + ("" if report["method"] == "tpu-compiler" else
                                            " (of XLA:CPU's program: rough)"),
      "estimate": {
          "compute_s": est.compute_s, "roofline_compute_s": est.roofline_s,
          "flops_s": est.flops_s, "hbm_s": est.hbm_s, "async_copy_s": est.async_copy_s,
          "sync_collective_s": est.sync_collective_s,
          "async_collective_s": est.async_collective_s, "serial_step_s": est.serial_s,
          "ops_timed_by_compiler_cycles": est.cycles_ops,
          "ops_timed_by_roofline": est.roofline_ops,
          "matmul_flops_per_device": est.matmul_flops,
          "mxu_padded_flops_per_device": est.mxu_flops,
          "hbm_bytes_per_device": est.hbm_bytes,
          "loop_once_matmul_flops": est.loop_once_matmul_flops,
          "custom_calls_without_cost": est.custom_calls_without_cost,
          "unknown_trip_counts": est.unknown_trip_counts,
          "top_ops": est.top_ops, "top_collectives": est.top_collectives},
      "collectives": est.collectives,
      "all_to_all_count": est.collectives.get("all-to-all", {}).get("count", 0),
      "all_to_all_bytes": est.collectives.get("all-to-all", {}).get("bytes", 0.0),
  }


# ------------------------------------------------------------------------------ CLI


def what_would_fit(r: dict) -> str:
  """One line: the bytes that do not fit and the per-device batch that would (activations and
  the batch scale with it; parameters, EMA and optimizer state do not)."""
  usable = r["usable_fraction"] * r["device_bytes"]
  fixed = r["bytes_per_device"] - r["activation_bytes"] - r["batch_bytes"]
  per = r["per_device_batch"]
  per_clip = (r["activation_bytes"] + r["batch_bytes"]) / max(per, 1e-9)
  head = (f"does not fit: {r['gib_per_device']:.2f} GiB per device > {usable / GIB:.2f} GiB "
          f"usable of {r['device_bytes'] / GIB:.0f} GiB on {r['topology']}")
  clips = int((usable - fixed) // per_clip) if per_clip > 0 else 0
  if clips >= 1 and r["mode"] == "train":
    batch = clips * r["chips"]
    return (f"{head}; would fit (activations scale with the batch): about {clips} clips per "
            f"chip, data.batch_size <= {batch}, or model.remat=full / a larger mesh.fsdp")
  return (f"{head}; parameters+EMA+optimizer take {fixed / GIB:.2f} GiB: use a larger "
          "mesh.fsdp (or tensor), model.remat=full, or a larger chip")


def _worker(plan: Plan, config: Any) -> dict:
  """Runs inside the subprocess whose XLA_FLAGS gave it the fake CPU devices."""
  topo = parse_topology(plan.topology)
  return compile_step(config, plan, topo, usable_fraction=FLAGS.usable_fraction,
                      estimate=FLAGS.estimate, hlo_out=FLAGS.hlo_out)


def _spawn(plan: Plan, argv: list[str]) -> dict:
  """Re-runs this module with N fake CPU devices; returns the JSON of its last line."""
  n = math.prod(plan.compiled_mesh.values())
  env = dict(os.environ)
  xla = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{xla} --xla_force_host_platform_device_count={n}".strip()
  env["JAX_PLATFORMS"] = "cpu"
  args = [a for a in argv[1:] if not a.startswith(("--plan_json", "--bucket", "--buckets"))]
  cmd = [sys.executable, "-m", "stiv_jax.tools.compile", *args,
         "--plan_json=" + json.dumps(dataclasses.asdict(plan))]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.strip().startswith("{")]
  if proc.returncode == cli_errors.EXIT_USER_ERROR:
    raise PlanError(proc.stderr.strip().splitlines()[-1].split("error: ", 1)[-1])
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


def bucket_list(config: Any, buckets: list[str], from_data: str = "") -> list[list[int] | None]:
  """[T, H, W] per plan: --bucket values, or every bucket of the shard manifest (--buckets=data,
  keys 'TxHxW'), or [None] (the model config's latent)."""
  if from_data and buckets:
    raise PlanError("--bucket and --buckets: give one of them")
  if from_data:
    if from_data != "data":
      raise PlanError(f"--buckets: {from_data!r} unknown; expected 'data'")
    from stiv_jax.data import reader
    keys = sorted(reader.load_manifest(str(config.data.path))[1].get("buckets", {}))
    if not keys:
      raise PlanError(f"--buckets=data: the manifest at {config.data.path} lists no buckets")
    return [parse_bucket(k) for k in keys]
  return [parse_bucket(b) for b in buckets] or [None]


def plan_one(config: Any, topo: Topology, bucket: list[int] | None, argv: list[str]) -> dict:
  """One report: the TPU compiler when it can, else fake CPU devices in a subprocess."""
  spec, overrides = _config_spec(argv)
  kw = dict(config_spec=spec, overrides=overrides, mode=FLAGS.mode,
            sample_batch=FLAGS.sample_batch, bucket=bucket)
  devices, why_not = (None, "--backend=fake-cpu") if FLAGS.backend == "fake-cpu" else (
      tpu_topology_devices(topo))
  if devices is None and FLAGS.backend == "tpu":
    raise PlanError(f"--backend=tpu: no TPU compiler for {topo.name} ({why_not}); install "
                    "the tpu extra (pip install -e .[tpu]) or use --backend=auto")
  if devices is not None:
    plan = make_plan(config, topo, topo.chips, **kw)
    return compile_step(config, plan, topo, devices, method="tpu-compiler",
                        usable_fraction=FLAGS.usable_fraction, estimate=FLAGS.estimate,
                        hlo_out=FLAGS.hlo_out)
  plan = make_plan(config, topo, FLAGS.max_fake_devices, **kw)
  result = _spawn(plan, argv)
  result["aot_topology_unavailable"] = why_not
  return result


def main(argv: list[str]) -> None:
  del argv
  if FLAGS.plan_json:
    raw = json.loads(FLAGS.plan_json)
    print(json.dumps(_worker(Plan(**raw), FLAGS.config)))
    sys.stdout.flush()
    return
  if FLAGS.config is None:
    raise PlanError("--config is required, e.g. --config=experiments/configs/t2v.py:M")
  if not FLAGS.topology:
    raise PlanError("--topology is required, e.g. --topology=v5e-256")
  topo = parse_topology(FLAGS.topology)
  reports = [plan_one(FLAGS.config, topo, b, sys.argv) for b in bucket_list(
      FLAGS.config, FLAGS.bucket, FLAGS.buckets)]
  for r in reports:
    print(json.dumps(r))
  if len(reports) > 1:
    print(json.dumps({"reports": reports}))
  sys.stdout.flush()
  misses = [r for r in reports if not r["fits"]]
  if misses:
    r = misses[0]
    raise PlanError(f"bucket {r['bucket']}: {what_would_fit(r)}")


def run() -> None:
  """Console entry point (`stiv-compile`)."""
  define_flags()
  verbose = "--verbose" in sys.argv or "--verbose=true" in sys.argv
  app.run(lambda argv: cli_errors.run_main(PROG, lambda: main(argv), verbose=verbose),
          flags_parser=cli_errors.absl_flags_parser(PROG))


if __name__ == "__main__":
  run()
