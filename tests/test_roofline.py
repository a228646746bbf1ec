"""The HLO roofline: loop trip counts, matmul FLOPs, slice-aware bytes, collectives and their
groups, on a hand-written module and on programs the TPU compiler (libtpu) really produced."""
import importlib.util
import os

import numpy as np
import pytest

from stiv_jax.tools import chips, roofline

V5E = chips.CHIPS["v5e"]

HLO = """HloModule m, is_scheduled=true

%fused_dot (p0: bf16[8,4,256,128], p1: s32[], p2: bf16[128,128]) -> bf16[256,128] {
  %p0 = bf16[8,4,256,128]{3,2,1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %z = s32[] constant(0)
  %ds = bf16[1,1,256,128]{3,2,1,0} dynamic-slice(%p0, %p1, %z, %z, %z), dynamic_slice_sizes={1,1,256,128}
  %x = bf16[256,128]{1,0} bitcast(%ds)
  %p2 = bf16[128,128]{1,0:S(1)} parameter(2)
  ROOT %dot = bf16[256,128]{1,0} dot(%x, %p2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%body (t: (s32[], bf16[8,4,256,128], bf16[256,128])) -> (s32[], bf16[8,4,256,128], bf16[256,128]) {
  %t = (s32[], bf16[8,4,256,128]{3,2,1,0}, bf16[256,128]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %buf = bf16[8,4,256,128]{3,2,1,0} get-tuple-element(%t), index=1
  %w = bf16[128,128]{1,0:S(1)} constant({...})
  %y = bf16[256,128]{1,0} fusion(%buf, %i, %w), kind=kOutput, calls=%fused_dot
  %ag = bf16[256,128]{1,0} all-gather(%y), replica_groups=[2,4]<=[8], dimensions={0}
  %ar = bf16[256,128]{1,0} all-reduce(%ag), replica_groups={{0,1},{2,3},{4,5},{6,7}}, to_apply=%add
  %one = s32[] constant(1)
  %n = s32[] add(%i, %one)
  ROOT %out = (s32[], bf16[8,4,256,128]{3,2,1,0}, bf16[256,128]{1,0}) tuple(%n, %buf, %ar)
}

%cond (t: (s32[], bf16[8,4,256,128], bf16[256,128])) -> pred[] {
  %t = (s32[], bf16[8,4,256,128]{3,2,1,0}, bf16[256,128]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %lim = s32[] constant(28)
  ROOT %lt = pred[] compare(%i, %lim), direction=LT
}

ENTRY %main (a: bf16[8,4,256,128]) -> bf16[256,128] {
  %a = bf16[8,4,256,128]{3,2,1,0} parameter(0)
  %zero = s32[] constant(0)
  %init = bf16[256,128]{1,0} constant({...})
  %tup = (s32[], bf16[8,4,256,128]{3,2,1,0}, bf16[256,128]{1,0}) tuple(%zero, %a, %init)
  %w = (s32[], bf16[8,4,256,128]{3,2,1,0}, bf16[256,128]{1,0}) while(%tup), condition=%cond, body=%body
  ROOT %r = bf16[256,128]{1,0} get-tuple-element(%w), index=2
}
"""


def test_handwritten_module():
  coords = [(i % 4, i // 4, 0) for i in range(8)]   # 4 x 2 chip grid
  est = roofline.estimate(HLO, V5E, coords, num_devices=8)
  assert est.unknown_trip_counts == 0
  assert est.matmul_flops == 28 * 2 * 256 * 128 * 128
  assert est.loop_once_matmul_flops == 2 * 256 * 128 * 128
  # The fusion reads only its dynamic slice (not the whole stacked buffer) and the counter; the
  # weight sits in VMEM (S(1)) and costs no HBM bytes; the result is written once. The counter
  # increment reads and writes 3 scalars.
  tile = 256 * 128 * 2
  assert est.hbm_bytes == 28 * (tile + 4 + tile + 3 * 4)
  ag, ar = est.collectives["all-gather"], est.collectives["all-reduce"]
  assert ag["count"] == 28 and ar["count"] == 28
  buf = 256 * 128 * 2
  assert ag["bytes"] == 28 * buf
  # iota groups [2,4]<=[8]: groups of 4 devices along the first grid axis (one torus dim, two
  # links); all-reduce over pairs: 2 (n-1)/n = 1x the buffer.
  link = chips.link_bandwidth(V5E)
  assert ag["seconds"] == pytest.approx(28 * buf * 3 / 4 / (2 * link))
  assert ar["ici_bytes"] == pytest.approx(28 * buf * 2 * 1 / 2)
  assert est.sync_collective_s == pytest.approx(ag["seconds"] + ar["seconds"])
  assert est.step_s == pytest.approx(est.compute_s + est.sync_collective_s)


def test_replica_group_forms():
  assert roofline._group("replica_groups={{0,2},{1,3}}", 4) == [0, 2]
  assert roofline._group("replica_groups=[4,2]<=[2,4]T(1,0)", 8) == [0, 4]
  mesh = ("replica_groups=mesh['axis_0'=2,'axis_1'=4], device_ids=([8]) {'axis_1'}, "
          "dimensions={0}")
  assert roofline._group(mesh, 8) == [0, 1, 2, 3]
  assert roofline._group("replica_groups={}", 8) == list(range(8))


def test_convolution_as_batched_matmul():
  """XLA writes batched matmuls as convolutions over a dilated or padded window: one real tap
  per output element (not window-size many)."""
  text = """HloModule m

ENTRY %main (a: bf16[40,256,1152,1], b: bf16[1152,18,64,1]) -> bf16[40,256,18,64] {
  %a = bf16[40,256,1152,1]{3,2,1,0} parameter(0)
  %b = bf16[1152,18,64,1]{3,2,1,0} parameter(1)
  ROOT %c = bf16[40,256,18,64]{3,2,1,0} convolution(%a, %b), window={size=1x18 pad=0_0x17_17 rhs_reversal=0x1}, dim_labels=0bf1_i1o0->0b1f
}
"""
  est = roofline.estimate(text, V5E)
  assert est.matmul_flops == 2 * 40 * 256 * 18 * 64 * 1152
  # o = 64 is half an MXU tile on v5e (128): padded FLOPs are twice the real ones.
  assert est.mxu_flops == 2 * est.matmul_flops


@pytest.fixture(scope="module")
def tpu_devices():
  if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu not installed (the `tpu` extra, installed by make test)")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  from stiv_jax.tools import compile as compile_lib
  devices, why = compile_lib.tpu_topology_devices(compile_lib.parse_topology("v5e-8"))
  assert devices is not None, why
  return devices


def test_tpu_compiled_scan_of_matmuls(tpu_devices):
  """On a program the TPU compiler built: the estimate's FLOPs are the cost analysis' (which
  counts the loop body once) times the trip count, and the time is near the compiler's own
  optimal_seconds, which is sensible for a plain matmul loop."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  mesh = jax.make_mesh((8,), ("fsdp",), devices=tpu_devices,
                       axis_types=(jax.sharding.AxisType.Auto,))

  def f(x, ws):
    def body(h, w):
      return jnp.tanh(h @ w), None
    return jax.lax.scan(body, x, ws)[0]

  x = jax.ShapeDtypeStruct((8192, 1024), jnp.bfloat16, sharding=NamedSharding(mesh, P("fsdp")))
  ws = jax.ShapeDtypeStruct((12, 1024, 1024), jnp.bfloat16,
                            sharding=NamedSharding(mesh, P(None, "fsdp")))
  compiled = jax.jit(f).lower(x, ws).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  coords = [tuple(d.coords) for d in mesh.devices.flat]
  est = roofline.estimate(compiled.as_text(), V5E, coords, 8)
  per_device_body = 2 * 1024 * 1024 * 1024
  assert est.matmul_flops == pytest.approx(12 * per_device_body, rel=0.01)
  assert est.loop_once_matmul_flops == pytest.approx(cost["flops"], rel=0.1)
  # The FSDP weight gathers, every layer (XLA makes them ring permutes of a windowed einsum).
  assert sum(c["count"] for c in est.collectives.values()) >= 12
  if cost.get("optimal_seconds", -1) > 0:
    ratio = est.step_s / (cost["optimal_seconds"] * 12)
    assert 0.2 < ratio < 5, (est.step_s, cost["optimal_seconds"])
  assert np.isfinite(est.step_s) and est.step_s > 0


def test_splash_attention_kernels_are_counted(tpu_devices):
  """Pallas splash-attention kernels carry no cost in the HLO: their FLOPs come from their
  q / k shapes (forward + dq + dkv of a full mask)."""
  import jax
  import jax.numpy as jnp
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  from jax.sharding import SingleDeviceSharding

  b, h, s, d = 2, 4, 512, 128
  kernel = sk.make_splash_mha(sm.MultiHeadMask([sm.FullMask((s, s)) for _ in range(h)]),
                              head_shards=1, q_seq_shards=1)
  loss = lambda q, k, v: jnp.sum(jax.vmap(kernel)(q, k, v).astype(jnp.float32))
  x = jax.ShapeDtypeStruct((b, h, s, d), jnp.bfloat16,
                           sharding=SingleDeviceSharding(tpu_devices[0]))
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, x, x).compile()
  est = roofline.estimate(compiled.as_text(), V5E)
  assert est.custom_calls_without_cost == 0
  assert est.matmul_flops == pytest.approx((4 + 6 + 8) * b * h * s * s * d, rel=0.01)
