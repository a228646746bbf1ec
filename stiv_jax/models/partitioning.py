"""Logical-axis sharding constraints on activations (maxtext's `with_logical_constraint` idea).

The model names the dims of an activation ('batch', 'frames', 'positions', None) at its block
boundaries; the caller's logical rules (flax's `logical_axis_rules` context, set by the train
step and the sampler) and abstract mesh turn them into a `with_sharding_constraint`. Without
rules or a mesh (a plain single-device call) every constraint is a no-op, so the model itself
stays free of mesh choices.

Layouts of a STIV block's token activations:
  FRAMES     [B, Tp, K, D]: frames split over the context axis (spatial attention per frame)
  POSITIONS  [B, K, Tp, D]: spatial positions split over it (temporal attention per position)
  MODULATION [B, 6, D] (and the condition vector [B, D]): batch only, hidden dim whole. Pinned
             because a per-sample vector whose hidden dim follows the adaLN kernel's tensor
             sharding makes XLA's SPMD partitioner (jax 0.10.2, GSPMD and Shardy alike) emit a
             wrong program on a (2, 2, 2) mesh: experiments/repro/shardy_miscompile.py.
The layout switch pins both sides of the transpose (`to_positions` / `to_frames`): with only
the far side pinned, XLA picks the layout of a matmul next to it, reshards an operand inside the
matmul and the weight gradient's all-reduce misses the data axis (same repro script, case 2).
"""
from __future__ import annotations

from typing import Sequence

import jax
from flax.core import spmd

from stiv_jax import sharding as shd

FRAMES = ("batch", "frames", None, None)
POSITIONS = ("batch", "positions", None, None)
MODULATION = ("batch", None, None)
CONDITION = ("batch", None)

LogicalSpec = Sequence[str | tuple[str, ...] | None]


def active_rules() -> dict[str, tuple[str, ...]]:
  """The logical -> mesh axes rules of the enclosing `flax.core.spmd.logical_axis_rules`."""
  out = {}
  for name, axes in spmd.get_logical_axis_rules() or ():
    out[name] = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return out


def mesh_spec(x_shape: Sequence[int], logical: LogicalSpec) -> jax.sharding.PartitionSpec | None:
  """The PartitionSpec the active rules and abstract mesh give `logical`, or None when no rules
  or mesh are active."""
  rules = active_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return None
  return shd.logical_to_mesh(tuple(logical), tuple(x_shape), mesh, rules)


def constrain(x: jax.Array, logical: LogicalSpec) -> jax.Array:
  """Pins x to the sharding its logical dims map to (a no-op without rules and a mesh)."""
  spec = mesh_spec(x.shape, logical)
  if spec is None:
    return x
  return jax.lax.with_sharding_constraint(x, spec)


def to_positions(x: jax.Array) -> jax.Array:
  """FRAMES [B, Tp, K, D] -> POSITIONS [B, K, Tp, D]: one all-to-all over the context axis."""
  return constrain(constrain(x, FRAMES).transpose(0, 2, 1, 3), POSITIONS)


def to_frames(x: jax.Array) -> jax.Array:
  """POSITIONS [B, K, Tp, D] -> FRAMES [B, Tp, K, D]: the all-to-all back."""
  return constrain(constrain(x, POSITIONS).transpose(0, 2, 1, 3), FRAMES)
