"""Minimal reproducers of two XLA SPMD-partitioner miscompiles (jax/jaxlib 0.10.2, XLA:CPU, 8
fake devices) that the STIV model runs into, each with the workaround the model uses.

Both happen with GSPMD and with Shardy alike: Shardy propagates the shardings, then the same
XLA SpmdPartitioner pass lowers them, and the wrong program is already in that pass's output
(dump with --xla_dump_to=DIR --xla_dump_hlo_pass_re=spmd-partitioning). `mesh.partitioner`
was set to 'gspmd' after case 1 showed up under Shardy; it is not a Shardy bug.

Case 1, a per-sample vector times a matmul output, mesh (data 2, fsdp 2, tensor 2):
  g [B, D] sharded (None, tensor) * (x [B, M] sharded ((data, fsdp), tensor) @ w [M, D] sharded
  (tensor, fsdp)). The partitioner collective-permutes x's batch shards between devices (2 <-> 4,
  3 <-> 5: it swaps the data and fsdp coordinates) but slices g with the unpermuted offsets, so
  rows 2-5 of the product pair with the wrong rows of g. In STIV, g is the adaLN modulation
  (its hidden dim follows the adaLN kernel's 'adaln' -> tensor rule) and the product the FFN or
  attention output: this is what made the masked forward wrong on the (2, 2, 2) mesh once the
  main stack's carry was pinned to the batch axes. Workaround: pin the modulation to
  (batch, None, None) (stiv_jax/models/partitioning.py MODULATION), and the carry can be pinned.

Case 2, switching layouts around a matmul, mesh (data 2, context 2):
  x [B, T, K, D] -> transpose to [B, K, T, D] pinned (data, context) -> @ w -> transpose back
  pinned (data, context). The loss is right; the weight gradient is not: the partitioner
  reshards an operand of the dw matmul itself and its all-reduce groups cover the context axis
  only, not the data axis (replica_groups=[2,2]<=[4] in the partitioned HLO). Workaround: pin
  both sides of every transpose (partitioning.to_positions / to_frames).

Run: `.venv/bin/python experiments/repro/shardy_miscompile.py` (about 30 s); the output of a run
is kept next to it in shardy_miscompile.txt.
"""
from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

AUTO = jax.sharding.AxisType.Auto


def _mesh(shape: tuple[int, ...], names: tuple[str, ...]) -> jax.sharding.Mesh:
  return jax.make_mesh(shape, names, axis_types=(AUTO,) * len(names),
                       devices=jax.devices()[:int(np.prod(shape))])


def case1(pin_modulation: bool) -> float:
  """Max abs error of g * (x @ w) on the (2, 2, 2) mesh against numpy."""
  mesh = _mesh((2, 2, 2), ("data", "fsdp", "tensor"))
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, 4)).astype(np.float32)
  w = rng.standard_normal((4, 4)).astype(np.float32)
  g = rng.standard_normal((8, 4)).astype(np.float32)

  def f(x, w, g):
    if pin_modulation:
      g = jax.lax.with_sharding_constraint(g, NamedSharding(mesh, P(("data", "fsdp"), None)))
    return g * (x @ w)

  args = (jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"), "tensor"))),
          jax.device_put(w, NamedSharding(mesh, P("tensor", "fsdp"))),
          jax.device_put(g, NamedSharding(mesh, P(None, "tensor"))))
  return float(np.abs(np.asarray(jax.jit(f)(*args)) - g * (x @ w)).max())


def case2(pin_both_sides: bool) -> tuple[float, float]:
  """(loss error, max abs weight-gradient error) of the layout switch on (data 2, context 2)."""
  mesh = _mesh((2, 2), ("data", "context"))
  spec = NamedSharding(mesh, P("data", "context"))
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, 4, 8, 16)).astype(np.float32)
  w = (rng.standard_normal((16, 16)) / 4).astype(np.float32)

  def f(w, x, shard=True):
    pin = (lambda a: jax.lax.with_sharding_constraint(a, spec)) if shard else (lambda a: a)
    y = pin(x.transpose(0, 2, 1, 3)) @ w    # [B, K, T, D], positions split over context
    if pin_both_sides:
      y = pin(y)
    y = pin(y.transpose(0, 2, 1, 3))        # [B, T, K, D], frames split over context
    return jnp.sum(y * y)

  want_l, want_g = jax.value_and_grad(lambda w, x: f(w, x, False))(w, x)
  got_l, got_g = jax.jit(jax.value_and_grad(f))(w, jax.device_put(x, spec))
  return (abs(float(got_l) - float(want_l)) / abs(float(want_l)),
          float(np.abs(np.asarray(got_g) - np.asarray(want_g)).max()))


def main() -> None:
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} devices")
  for partitioner in ("gspmd", "shardy"):
    jax.config.update("jax_use_shardy_partitioner", partitioner == "shardy")
    for pin in (False, True):
      err = case1(pin)
      print(f"{partitioner:6s} case 1 modulation * matmul, (2,2,2) mesh, modulation pinned="
            f"{pin!s:5s}: max abs error {err:.3g} -> {'OK' if err < 1e-4 else 'WRONG'}")
    for pin in (False, True):
      rel_loss, err = case2(pin)
      print(f"{partitioner:6s} case 2 layout switch, (2,2) mesh, both sides pinned={pin!s:5s}: "
            f"loss rel error {rel_loss:.1e}, dW max abs error {err:.3g} -> "
            f"{'OK' if err < 1e-3 else 'WRONG'}")


if __name__ == "__main__":
  main()
