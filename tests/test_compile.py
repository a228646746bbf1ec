"""stiv-compile: topology parsing, the reduced-data-axis plan, and one real AOT compile (CLI)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from experiments.configs import t2v
from stiv_jax.tools import compile as compile_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_topology():
  t = compile_lib.parse_topology("v5e-256")
  assert (t.kind, t.chips, t.device_bytes) == ("v5e", 256, 16 << 30)
  assert compile_lib.parse_topology("v5p-128").chips == 64          # TensorCores -> chips
  assert compile_lib.parse_topology("H100x16").device_bytes == 80 << 30
  assert compile_lib.parse_topology("h200-8").device_bytes == 141 << 30
  assert compile_lib.parse_topology("v6e-64").device_bytes == 32 << 30
  for bad in ("v4-8", "v5e", "tpu-256", "v5p-3"):
    with pytest.raises(ValueError, match="--topology"):
      compile_lib.parse_topology(bad)


def test_plan_reduces_data_axis_keeping_per_device_shapes():
  c = t2v.get_config("XL")
  plan = compile_lib.make_plan(c, compile_lib.parse_topology("v5e-256"), 64)
  data, fsdp, tensor = plan.mesh
  assert data * fsdp * tensor == 256 and math.prod(plan.compiled_mesh) <= 64
  assert plan.compiled_mesh[1:] == plan.mesh[1:]
  assert plan.global_batch / math.prod(plan.mesh) == plan.compiled_batch / math.prod(
      plan.compiled_mesh)
  assert "instead of" in plan.note
  full = compile_lib.make_plan(c, compile_lib.parse_topology("v5e-256"), 256)
  assert full.compiled_mesh == full.mesh and not full.note
  with pytest.raises(ValueError, match="fsdp\\*tensor"):
    compile_lib.make_plan(c, compile_lib.parse_topology("v5e-256"), 8)
  with c.unlocked():
    c.data.batch_size = 100
  with pytest.raises(ValueError, match="data.batch_size: 100"):
    compile_lib.make_plan(c, compile_lib.parse_topology("v5e-256"), 64)


def test_cli_compiles_reduced_case():
  """The real train step of the tiny T2V stage for v5e-16, compiled on 8 fake CPU devices."""
  cmd = [sys.executable, "-m", "stiv_jax.tools.compile",
         "--config=experiments/configs/t2v.py:tiny", "--config.data.batch_size=32",
         "--topology=v5e-16", "--max_fake_devices=8"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert r["method"] == "fake-cpu" and "TPU" in r["aot_topology_unavailable"]
  assert r["mesh"] == {"data": 16, "fsdp": 1, "tensor": 1}
  assert r["compiled_mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
  assert (r["global_batch"], r["compiled_batch"], r["per_device_batch"]) == (32, 16, 2.0)
  assert r["bytes_per_device"] == (r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"]
                                   + r["activation_bytes"])
  assert r["activation_bytes"] > 0 and r["device_bytes"] == 16 << 30 and r["fits"] is True
  from flax import nnx

  from stiv_jax.models.stiv import STIV
  abstract = nnx.eval_shape(lambda: STIV(t2v.get_config("tiny").model, rngs=nnx.Rngs(0)))
  n = sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
  assert r["param_bytes"] == r["ema_bytes"] == 4 * n     # replicated on a data-only mesh
  assert 0 < r["optimizer_bytes"] < 3 * r["param_bytes"]
  assert r["flops_source"] == "lowered-unrolled"
  assert 0.5 < r["flops_per_step"] / r["analytic_flops_per_step"] < 3.0
  assert "data=8 instead of 16" in r["note"]
