"""stiv-compile: topology parsing, plans over any mesh axes, the TPU compiler's plan of the real
tiny train step (v5e-8), the fake-CPU fallback, the sampling step, buckets, one-line errors."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from experiments.configs import t2v
from stiv_jax import sharding as shd
from stiv_jax.data import schema as schema_lib
from stiv_jax.data import writer as writer_lib
from stiv_jax.tools import compile as compile_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", TPU_SKIP_MDS_QUERY="1", **extra)
  return env


def _cli(*args, timeout=900):
  cmd = [sys.executable, "-m", "stiv_jax.tools.compile", *args]
  return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env(),
                        timeout=timeout)


def test_parse_topology():
  t = compile_lib.parse_topology("v5e-256")
  assert (t.kind, t.chips, t.device_bytes) == ("v5e", 256, 16 << 30)
  assert compile_lib.parse_topology("v5p-256").chips == 128       # TensorCores -> chips
  assert compile_lib.parse_topology("H100x16").device_bytes == 80 << 30
  assert compile_lib.parse_topology("h200-8").device_bytes == 141 << 30
  assert compile_lib.parse_topology("v6e-64").device_bytes == 32 << 30
  for bad in ("v4-8", "v5e", "tpu-256", "v5p-3"):
    with pytest.raises(ValueError, match="--topology"):
      compile_lib.parse_topology(bad)
  with pytest.raises(ValueError, match="v5e-12.*v5e slices: v5e-1, v5e-4, v5e-8"):
    compile_lib.parse_topology("v5e-12")
  assert compile_lib.tpu_grid("v5p", 128) == "4x4x8" and compile_lib.tpu_grid("v5e", 8) == "2x4"


def test_plan_reduces_data_axis_keeping_per_device_shapes():
  c = t2v.get_config("XL")
  plan = compile_lib.make_plan(c, compile_lib.parse_topology("v5e-256"), 64)
  assert list(plan.mesh) == list(shd.MESH_AXES)           # generic over the mesh axes
  assert math.prod(plan.mesh.values()) == 256 and math.prod(plan.compiled_mesh.values()) <= 64
  assert {a: s for a, s in plan.compiled_mesh.items() if a != "data"} == {
      a: s for a, s in plan.mesh.items() if a != "data"}
  assert plan.global_batch / math.prod(plan.mesh.values()) == plan.compiled_batch / math.prod(
      plan.compiled_mesh.values())
  assert "instead of" in plan.note
  full = compile_lib.make_plan(c, compile_lib.parse_topology("v5e-256"), 256)
  assert full.compiled_mesh == full.mesh and not full.note
  with pytest.raises(ValueError, match="non-data axes"):
    compile_lib.make_plan(c, compile_lib.parse_topology("v5e-256"), 8)
  with c.unlocked():
    c.data.batch_size = 100
  with pytest.raises(ValueError, match="data.batch_size: 100.*e.g. 256"):
    compile_lib.make_plan(c, compile_lib.parse_topology("v5e-256"), 64)
  with c.unlocked():
    c.mesh.fsdp = 3
  with pytest.raises(ValueError, match="mesh.*256 chips.*mesh.fsdp in"):
    compile_lib.make_plan(c, compile_lib.parse_topology("v5e-256"), 64)


def test_buckets_from_flags_and_manifest(tmp_path):
  c = t2v.get_config("tiny")
  assert compile_lib.bucket_list(c, ["4x8x8", "2x8x16"]) == [[4, 8, 8], [2, 8, 16]]
  assert compile_lib.bucket_list(c, []) == [None]
  manifest = {"format": writer_lib.FORMAT_NAME, "schema_version": schema_lib.SCHEMA_VERSION,
              "buckets": {"4x8x8": {"count": 3}, "2x8x16": {"count": 1}}}
  (tmp_path / "manifest.json").write_text(json.dumps(manifest))
  with c.unlocked():
    c.data.path = str(tmp_path)
  assert compile_lib.bucket_list(c, [], "data") == [[2, 8, 16], [4, 8, 8]]
  with pytest.raises(ValueError, match="--bucket: '4x8'"):
    compile_lib.bucket_list(c, ["4x8"])


def _check_report(r):
  assert r["bytes_per_device"] == (r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"]
                                   + r["activation_bytes"])
  assert r["activation_bytes"] > 0 and r["param_bytes"] > 0
  assert r["estimated_step_s"] > 0 and 0 < r["estimated_mfu"] <= 1
  assert "estimate, not a measurement" in r["estimate_method"]
  assert r["model_flops_per_step"] > 0


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu (the `tpu` extra) not installed")
def test_cli_tpu_compiler_plan():
  """The tiny T2V stage's real train step compiled by the TPU compiler for v5e-8, no TPU
  attached; a bucket other than the model's default."""
  proc = _cli("--config=experiments/configs/t2v.py:tiny", "--config.model.depth=1",
              "--config.model.mask_decoder_depth=1", "--topology=v5e-8", "--bucket=2x8x16")
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert r["method"] == "tpu-compiler" and r["chip"] == "v5e" and r["chips"] == 8
  assert r["mesh"] == {a: (8 if a == "data" else 1) for a in shd.MESH_AXES}
  assert r["compiled_mesh"] == r["mesh"] and r["bucket"] == "2x8x16"
  assert r["batch_bytes"] == 4 * 2 * 8 * 16 * 4 + 4 * (8 * 16 + 16 + 6) + 8   # one example/chip
  _check_report(r)
  assert r["fits"] is True and r["device_bytes"] == 16 << 30
  assert r["optimizer"] == {"name": "adafactor", "factor_rule": "logical"}
  assert r["model"]["attention_impl"] == "xla"
  # Data parallel: the gradients are all-reduced over the 8 chips, nothing is all-to-all.
  assert r["collectives"]["all-reduce"]["count"] >= 1 and r["all_to_all_count"] == 0
  assert r["estimate"]["unknown_trip_counts"] == 0
  assert r["optimal_seconds"] > 0     # the compiler's own figure, reported beside ours


def test_cli_fake_cpu_fallback_reduced_case():
  """No TPU compiler asked: the real train step for v5e-16 on 8 fake CPU devices."""
  proc = _cli("--config=experiments/configs/t2v.py:tiny", "--config.data.batch_size=32",
              "--config.model.depth=1", "--config.model.mask_decoder_depth=1",
              "--topology=v5e-16", "--max_fake_devices=8", "--backend=fake-cpu")
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert r["method"] == "fake-cpu" and "fake-cpu" in r["aot_topology_unavailable"]
  assert r["mesh"] == {a: (16 if a == "data" else 1) for a in shd.MESH_AXES}
  assert r["compiled_mesh"] == {a: (8 if a == "data" else 1) for a in shd.MESH_AXES}
  assert (r["global_batch"], r["compiled_batch"], r["per_device_batch"]) == (32, 16, 2.0)
  _check_report(r)
  assert "XLA:CPU" in r["estimate_method"]
  from flax import nnx

  from stiv_jax.models.stiv import STIV
  model_cfg = t2v.get_config("tiny").model
  model_cfg.depth, model_cfg.mask_decoder_depth = 1, 1
  abstract = nnx.eval_shape(lambda: STIV(model_cfg, rngs=nnx.Rngs(0)))
  n = sum(math.prod(v.shape) for _, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
  assert r["param_bytes"] == r["ema_bytes"] == 4 * n     # replicated on a data-only mesh
  assert 0 < r["optimizer_bytes"] < 3 * r["param_bytes"]
  assert "data=8 instead of 16" in r["note"]
  # A plan that does not fit: one line naming the bytes and what would.
  r2 = dict(r, usable_fraction=1e-6)
  line = compile_lib.what_would_fit(r2)
  assert line.startswith("does not fit:") and "\n" not in line


def test_sample_mode_plan_in_process():
  """--mode=sample: the JIT-CFG grid step with EMA parameters sharded by the train rules
  (fsdp here), no optimizer state, on this process's 8 CPU devices."""
  import jax
  c = t2v.get_config("tiny")
  with c.unlocked():
    c.mesh.data, c.mesh.fsdp = 2, 4
    c.model.depth, c.model.mask_decoder_depth = 1, 1
  topo = compile_lib.parse_topology("v5e-8")
  plan = compile_lib.make_plan(c, topo, 8, mode="sample", sample_batch=3)
  r = compile_lib.compile_step(c, plan, topo, jax.devices()[:8], method="fake-cpu")
  assert r["mode"] == "sample" and r["optimizer_bytes"] == 0 and r["ema_bytes"] == 0
  assert r["forward_branches"] == 2 and r["global_batch"] == 3
  # 3 samples x 2 branches do not divide 8 ways: inputs padded to 4 and replicated.
  assert r["sample_padding"] == 1 and r["sample_inputs_sharded"] is False
  from flax import nnx

  from stiv_jax.train.state import build_model
  params = nnx.state(nnx.eval_shape(lambda: build_model(c.model, 0)), nnx.Param)
  full = 4 * sum(math.prod(v.shape) for v in jax.tree.leaves(params))
  assert r["param_bytes"] < 0.5 * full        # sharded over fsdp=4, not replicated
  _check_report(r)


def test_cli_bad_input_is_one_line():
  for args, needle in ((["--topology=v5e-12"], "v5e-12"),
                       (["--topology=v5e-8", "--config.mesh.fsdp=3"], "mesh"),
                       (["--topology=v5e-8", "--bucket=3x8"], "--bucket")):
    proc = _cli("--config=experiments/configs/t2v.py:tiny", *args, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.strip().splitlines() if "stiv-compile" in l]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
