"""Estimated step time of a compiled (TPU) XLA program: a per-op roofline read from its HLO text.

XLA's `cost_analysis()` counts a while loop's body once, so a scanned block stack is one block,
and the TPU compiler's `optimal_seconds` comes out negative for the full train step. This module
reads the optimized HLO instead, executes it symbolically and adds up, per device:
  - every top-level op (a fusion, copy, sort, ...) of the entry computation and of the control
    computations it runs (while bodies times their trip count, calls, conditional branches):
    time = max(matmul FLOPs / peak, HBM bytes / HBM bandwidth). Matmul (dot / convolution)
    FLOPs are counted inside fusions, with their contraction and output-feature sizes padded to
    the chip's MXU tile (a head dim of 64 on a 128-wide MXU runs at half rate). HBM bytes are
    the op's operands and results in memory space 0 (buffers placed in VMEM, `S(1)`, are free);
    an operand a fusion only dynamic-slices costs the slice, an in-place dynamic-update-slice
    costs the update.
  - every collective (all-gather, reduce-scatter, all-reduce, all-to-all, collective-permute,
    inside fusions too), with its bytes, its group size and the torus dimensions its group
    spans: ring traffic per device (n-1)/n x N (2x for all-reduce, N for a permute) over 2 links
    per spanned dimension.
Collectives the compiler made asynchronous (`*-start` ops and collectives fused into compute,
TPU's async collective fusion) are assumed hidden behind compute up to the compute time;
synchronous ones add to it:
  estimated = compute + sync collectives + max(0, async collectives - compute).
It is an ESTIMATE from a model of the chip (stiv_jax/tools/chips.py), not a measurement: it
ignores per-op launch and collective latencies, VPU-bound elementwise work beyond its bytes,
and overlap between ops.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np

from stiv_jax.tools.chips import Chip, link_bandwidth

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
               "s4": 0.5, "u4": 0.5, "token": 0}
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute",
               "ragged-all-to-all")
FREE_OPS = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all",
            "partition-id", "replica-id", "opt-barrier", "add-dependency", "domain"}

# TPU bookkeeping custom calls (no data movement of their own).
FREE_CUSTOM_CALLS = {"AllocateBuffer", "AsyncCollectiveStart", "AsyncCollectiveDone",
                     "ConcatBitcast"}

_SHAPE = re.compile(r"\b(pred|[sufc]\d+|bf16|f8e\w+|token)\[([\d,]*)\](\{[^}]*\})?")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$")
_HEADER = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s*\(.*\{\s*$")


def _dtype_bytes(dtype: str) -> float:
  if dtype.startswith("f8"):
    return 1
  return DTYPE_BYTES.get(dtype, 4)


@dataclasses.dataclass
class Array:
  dtype: str
  dims: tuple[int, ...]
  space: int   # memory space from the layout (0 = HBM, 1 = VMEM, ...)

  @property
  def bytes(self) -> float:
    return math.prod(self.dims) * _dtype_bytes(self.dtype)


def parse_shapes(type_str: str) -> list[Array]:
  """Every array in an HLO type string (a tuple flattens to its elements)."""
  out = []
  for m in _SHAPE.finditer(type_str):
    dims = tuple(int(d) for d in m.group(2).split(",") if d)
    space = re.search(r"S\((\d+)\)", m.group(3) or "")
    out.append(Array(m.group(1), dims, int(space.group(1)) if space else 0))
  return out


@dataclasses.dataclass
class Instr:
  name: str
  type_str: str
  opcode: str
  operands: list[str]
  attrs: str
  args: str = ""   # the text inside the op's parentheses (a constant's value, a param index)

  @property
  def shapes(self) -> list[Array]:
    return parse_shapes(self.type_str)


@dataclasses.dataclass
class Computation:
  name: str
  instrs: list[Instr]
  entry: bool = False

  def __post_init__(self):
    self.by_name = {i.name: i for i in self.instrs}
    self.root = self.instrs[-1] if self.instrs else None
    self.users: dict[str, list[Instr]] = defaultdict(list)
    for i in self.instrs:
      for o in i.operands:
        self.users[o].append(i)


def _split_type(rest: str) -> tuple[str, str]:
  """'(a, b) op(...)...' or 'f32[..]{..} op(...)' -> (type, remainder)."""
  if rest.startswith("("):
    depth = 0
    for k, ch in enumerate(rest):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        return rest[:k + 1], rest[k + 1:].lstrip()
  k = rest.find(" ")
  return rest[:k], rest[k + 1:].lstrip()


def _parse_instr(line: str) -> Instr | None:
  m = _INSTR.match(line)
  if not m:
    return None
  name, rest = m.group(1), m.group(2)
  type_str, rest = _split_type(rest)
  k = rest.find("(")
  if k < 0:
    return None
  opcode = rest[:k].strip()
  depth, end = 0, len(rest)
  for j in range(k, len(rest)):
    depth += rest[j] == "("
    depth -= rest[j] == ")"
    if depth == 0:
      end = j
      break
  args = rest[k + 1:end]
  return Instr(name, type_str, opcode, re.findall(r"%([\w.\-]+)", args), rest[end + 1:], args)


def _logical_lines(text: str) -> Iterable[str]:
  """Lines of HLO text with an instruction's continuation lines (e.g. a Pallas kernel's
  multi-line metadata) joined to it."""
  pending = None
  for line in text.splitlines():
    starts = (line.startswith(("  %", "  ROOT ", "%", "ENTRY ", "HloModule"))
              or line.rstrip() == "}" or not line.strip())
    if starts:
      if pending is not None:
        yield pending
      pending = line
    else:
      pending = line if pending is None else pending + " " + line
  if pending is not None:
    yield pending


def parse_module(text: str) -> tuple[dict[str, Computation], str]:
  """(computations by name, entry name) of an HLO module's text (`compiled.as_text()`)."""
  comps, entry = {}, ""
  name, body, is_entry = None, [], False
  for line in _logical_lines(text):
    if name is None:
      h = _HEADER.match(line)
      if h:
        name, body, is_entry = h.group(2), [], bool(h.group(1))
      continue
    if line.startswith("}"):
      comps[name] = Computation(name, body, is_entry)
      if is_entry:
        entry = name
      name = None
      continue
    ins = _parse_instr(line)
    if ins is not None:
      body.append(ins)
  if not entry:
    raise ValueError("HLO text has no ENTRY computation")
  return comps, entry


def _attr_comp(attrs: str, key: str) -> list[str]:
  m = re.search(key + r"=\{([^}]*)\}", attrs)
  if m:
    return re.findall(r"%([\w.\-]+)", m.group(1))
  m = re.search(key + r"=%([\w.\-]+)", attrs)
  return [m.group(1)] if m else []


def _int_constant(comp: Computation | None, name: str, depth: int = 0) -> int | None:
  """The integer value of `name` in `comp` if it is a constant (through copies / converts)."""
  ins = comp.by_name.get(name) if comp is not None else None
  if ins is None or depth > 4:
    return None
  if ins.opcode == "constant" and re.fullmatch(r"-?\d+", ins.args.strip()):
    return int(ins.args)
  if ins.opcode in ("copy", "convert", "bitcast") and ins.operands:
    return _int_constant(comp, ins.operands[0], depth + 1)
  return None


def _tuple_index(ins: Instr | None) -> int | None:
  m = re.search(r"index=(\d+)", ins.attrs) if ins is not None else None
  return int(m.group(1)) if m and ins.opcode == "get-tuple-element" else None


def trip_count(comps: dict[str, Computation], while_ins: Instr, caller: Computation
               ) -> int | None:
  """Trip count of a while loop `i = init; while i < limit: i += step` (lax.scan's form and
  XLA's windowed-einsum loops, whose counter may start above 0 or step by 2)."""
  cond_name = next(iter(_attr_comp(while_ins.attrs, "condition")), None)
  body_name = next(iter(_attr_comp(while_ins.attrs, "body")), None)
  cond, body = comps.get(cond_name or ""), comps.get(body_name or "")
  if cond is None or cond.root is None or cond.root.opcode != "compare":
    return None
  lhs, rhs = (cond.root.operands + [None, None])[:2]
  direction = re.search(r"direction=(\w+)", cond.root.attrs)
  direction = direction.group(1) if direction else ""
  limit, counter = _int_constant(cond, rhs), cond.by_name.get(lhs)
  if limit is None and direction in ("GT", "GE"):   # limit > i
    limit, counter = _int_constant(cond, lhs), cond.by_name.get(rhs)
    direction = {"GT": "LT", "GE": "LE"}[direction]
  k = _tuple_index(counter)
  if limit is None or direction not in ("LT", "LE"):
    return None
  step, init = 1, 0
  if k is not None and body is not None and body.root is not None and \
      body.root.opcode == "tuple" and k < len(body.root.operands):
    upd = body.by_name.get(body.root.operands[k])
    if upd is not None and upd.opcode == "add":
      for o in upd.operands:
        c = _int_constant(body, o)
        if c is not None and c > 0:
          step = c
  init_tuple = caller.by_name.get(while_ins.operands[0]) if while_ins.operands else None
  if k is not None and init_tuple is not None and init_tuple.opcode == "tuple" and \
      k < len(init_tuple.operands):
    v = _int_constant(caller, init_tuple.operands[k])
    init = v if v is not None else 0
  n = limit - init + (1 if direction == "LE" else 0)
  return max(0, -(-n // step))


# ------------------------------------------------------------------ matmul FLOPs


def _pad(n: int, tile: int) -> int:
  return -(-n // tile) * tile if tile > 0 else n


def matmul_flops(ins: Instr, comp: Computation, mxu: int) -> tuple[float, float]:
  """(FLOPs, MXU-padded FLOPs) of a dot or convolution instruction (2 per multiply-add)."""
  out = ins.shapes
  if not out:
    return 0.0, 0.0
  out_elems = math.prod(out[0].dims)
  if ins.opcode == "dot":
    lhs = comp.by_name.get(ins.operands[0])
    rhs = comp.by_name.get(ins.operands[1]) if len(ins.operands) > 1 else None
    if lhs is None or not lhs.shapes:
      return 0.0, 0.0
    ld = lhs.shapes[0].dims
    lc = [int(x) for x in re.findall(r"\d+", _braced(ins.attrs, "lhs_contracting_dims"))]
    k = math.prod(ld[i] for i in lc) if lc else 1
    n = 1
    if rhs is not None and rhs.shapes:
      rd = rhs.shapes[0].dims
      rc = {int(x) for x in re.findall(r"\d+", _braced(ins.attrs, "rhs_contracting_dims"))}
      rb = {int(x) for x in re.findall(r"\d+", _braced(ins.attrs, "rhs_batch_dims"))}
      n = math.prod(d for i, d in enumerate(rd) if i not in rc | rb)
    flops = 2.0 * out_elems * k
    return flops, flops * _pad(k, mxu) / k * _pad(n, mxu) / max(n, 1)
  # convolution: dim_labels=<lhs>_<rhs>-><out>, e.g. 01bf_oi01->01bf.
  m = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", ins.attrs)
  rhs = comp.by_name.get(ins.operands[1]) if len(ins.operands) > 1 else None
  if not m or rhs is None or not rhs.shapes:
    return 0.0, 0.0
  rlabels, rd = m.group(2), rhs.shapes[0].dims
  if len(rlabels) != len(rd):
    return 0.0, 0.0
  # Real taps per output along each window dim. XLA writes batched matmuls as convolutions
  # whose window only ever meets one real input element: a window over a dilated input
  # (window = lhs_dilate = the batch size) or over a size-1 input padded to the window (an
  # output dim such as heads). So taps = min(window, input size), over the dilation.
  lhs = comp.by_name.get(ins.operands[0])
  llabels = m.group(1)
  size = [int(x) for x in re.findall(r"\d+", _window(ins.attrs, "size"))]
  dilate = [int(x) for x in re.findall(r"\d+", _window(ins.attrs, "lhs_dilate"))]
  dilate = dilate if len(dilate) == len(size) else [1] * len(size)
  spatial = [c for c in llabels if c.isdigit()]
  taps = 1
  if lhs is not None and lhs.shapes and len(lhs.shapes[0].dims) == len(llabels):
    ld = lhs.shapes[0].dims
    for j, (w, dil) in enumerate(zip(size, dilate)):
      extent = ld[llabels.index(str(j))] if str(j) in spatial else 1
      taps *= max(1, min(w, extent) if dil == 1 else min(-(-w // dil), extent))
  k = rd[rlabels.index("i")] * taps
  o = rd[rlabels.index("o")]
  groups = 1
  for key in ("feature_group_count", "batch_group_count"):
    g = re.search(key + r"=(\d+)", ins.attrs)
    groups *= int(g.group(1)) if g else 1
  n = max(o // groups, 1)
  flops = 2.0 * out_elems * k
  return flops, flops * _pad(k, mxu) / k * _pad(n, mxu) / n


def _window(attrs: str, key: str) -> str:
  m = re.search(r"window=\{[^}]*\b" + key + r"=([\dx]+)", attrs)
  return m.group(1) if m else ""


def _braced(attrs: str, key: str) -> str:
  m = re.search(key + r"=\{([^}]*)\}", attrs)
  return m.group(1) if m else ""


# Splash attention kernels (jax.experimental.pallas.ops.tpu.splash_attention) carry no cost in
# the HLO: their matmul FLOPs per (query, key) pair and head dim, by kernel: the forward
# (QK^T, PV), dq (QK^T again, dO V^T, dS K) and dkv (QK^T, P^T dO, dO V^T, dS^T Q).
SPLASH_FLOPS_PER_QKD = {"splash_mha_fwd": 4, "splash_mha_dq": 6, "splash_mha_dkv": 8}


def splash_flops(ins: Instr, comp: Computation) -> float | None:
  """Matmul FLOPs of a splash-attention custom call from its q and k operands (fully dense
  blocks: an upper bound when the mask skips blocks), or None if it is not one."""
  where = re.search(r'op_name="([^"]*)"', ins.attrs)
  kind = next((k for k in SPLASH_FLOPS_PER_QKD if where and k in where.group(1)), None)
  if kind is None:
    return None
  arrays = [a for o in ins.operands if o in comp.by_name for a in comp.by_name[o].shapes
            if len(a.dims) >= 3 and a.dtype in ("bf16", "f32", "f16")]
  if len(arrays) < 2 or arrays[0].dims[-1] != arrays[1].dims[-1]:
    return None
  q, k = arrays[0], arrays[1]
  return float(SPLASH_FLOPS_PER_QKD[kind] * math.prod(q.dims[:-2]) * q.dims[-2] * k.dims[-2]
               * q.dims[-1])


# ------------------------------------------------------------------ collectives


def _group(attrs: str, num_devices: int) -> list[int]:
  """Device ids of the first replica group of a collective (global ids)."""
  m = re.search(r"replica_groups=\{\{([\d,]*)\}", attrs)
  if m:
    return [int(x) for x in m.group(1).split(",") if x]
  m = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](T\(([\d,]+)\))?", attrs)
  if m:
    shape = [int(x) for x in m.group(1).split(",")]
    dims = [int(x) for x in m.group(2).split(",")]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if m.group(4):
      ids = ids.transpose([int(x) for x in m.group(4).split(",")])
    return ids.reshape(shape[0], -1)[0].tolist()
  m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(\[([\d,]+)\]"
                r"(?:T\(([\d,]+)\))?\))?\s*\{([^}]*)\}", attrs)
  if m:
    axes = re.findall(r"'(\w+)'=(\d+)", m.group(1))
    names, sizes = [a for a, _ in axes], [int(s) for _, s in axes]
    if m.group(2):
      dims = [int(x) for x in m.group(2).split(",")]
      ids = np.arange(math.prod(dims)).reshape(dims)
      if m.group(3):
        ids = ids.transpose([int(x) for x in m.group(3).split(",")])
      ids = ids.reshape(sizes)
    else:
      ids = np.arange(math.prod(sizes)).reshape(sizes)
    group_axes = set(re.findall(r"'(\w+)'", m.group(4)))
    index = tuple(slice(None) if n in group_axes else 0 for n in names)
    return np.asarray(ids[index]).reshape(-1).tolist()
  if re.search(r"source_target_pairs=", attrs):
    return []
  return list(range(num_devices))   # empty replica_groups: every device


def _collective_kind(opcode: str) -> str | None:
  base = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
  return base if base in COLLECTIVES else None


@dataclasses.dataclass
class Collective:
  kind: str
  count: float
  bytes: float        # per device: the full (gathered / unreduced) buffer per call, times count
  ici_bytes: float    # per device: ring traffic, times count
  seconds: float
  async_: bool
  where: str          # op_name metadata of one instance


# ------------------------------------------------------------------ the walk


@dataclasses.dataclass
class Estimate:
  """Per-device totals of one program execution (one step)."""
  matmul_flops: float = 0.0
  mxu_flops: float = 0.0           # with MXU tile padding (a diagnostic; not used for time)
  hbm_bytes: float = 0.0
  compute_s: float = 0.0           # sum over ops: compiler cycles / clock, else the roofline
  roofline_s: float = 0.0          # sum over ops of max(FLOPs / peak, HBM bytes / bandwidth)
  flops_s: float = 0.0             # matmul FLOPs at peak alone
  hbm_s: float = 0.0               # HBM bytes at bandwidth alone
  cycles_ops: float = 0.0          # op executions timed by the compiler's estimated_cycles
  roofline_ops: float = 0.0        # op executions without them (timed by the roofline)
  async_copy_s: float = 0.0        # copy-start / slice-start DMAs at HBM bandwidth
  sync_collective_s: float = 0.0
  async_collective_s: float = 0.0
  custom_calls_without_cost: int = 0
  unknown_trip_counts: int = 0
  collectives: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
  top_collectives: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  top_ops: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  loop_once_matmul_flops: float = 0.0   # as cost_analysis counts (while bodies once)
  loop_once_hbm_bytes: float = 0.0

  @property
  def collective_s(self) -> float:
    return self.sync_collective_s + self.async_collective_s

  def _step(self, compute: float) -> float:
    return (compute + self.sync_collective_s + max(0.0, self.async_collective_s - compute)
            + max(0.0, self.async_copy_s - compute))

  @property
  def step_s(self) -> float:
    """Compiler per-op cycles (roofline where it gives none) + exposed communication."""
    return self._step(self.compute_s)

  @property
  def roofline_step_s(self) -> float:
    """The same with every op timed by the roofline alone (a cross-check)."""
    return self._step(self.roofline_s)

  @property
  def serial_s(self) -> float:
    """Nothing overlapped: compute + every collective + every async copy."""
    return self.compute_s + self.collective_s + self.async_copy_s


class _Walker:
  def __init__(self, comps: dict[str, Computation], chip: Chip, device_coords: Sequence | None,
               num_devices: int, top_k: int = 8):
    self.comps, self.chip, self.top_k = comps, chip, top_k
    self.coords = [tuple(c) for c in device_coords] if device_coords is not None else None
    self.num_devices = num_devices
    self.est = Estimate()
    self._fused_cache: dict[str, tuple[float, float, list[Instr]]] = {}
    self._ops: list[tuple[float, str, float, float]] = []
    self._colls: dict[tuple, Collective] = {}

  # -- collectives
  def _spanned_dims(self, group: list[int]) -> int:
    if not group or self.coords is None or max(group) >= len(self.coords):
      return 1
    pts = np.asarray([self.coords[g] for g in group])
    return max(1, int(np.sum(pts.max(axis=0) != pts.min(axis=0))))

  def _collective(self, ins: Instr, comp: Computation, mult: float, async_: bool) -> None:
    kind = _collective_kind(ins.opcode)
    if kind is None or mult == 0:
      return
    arrays = [a for a in ins.shapes if a.dtype not in ("u32", "s32") or a.dims]
    out_b = max((a.bytes for a in arrays), default=0.0)
    if ins.opcode == "all-reduce" or ins.opcode == "all-reduce-start":
      out_b = sum(a.bytes for a in arrays if a.dims) or out_b
    in_b = 0.0
    for o in ins.operands:
      src = comp.by_name.get(o)
      if src is not None:
        in_b += sum(a.bytes for a in src.shapes)
    full = max(out_b, in_b)
    group = _group(ins.attrs, self.num_devices)
    n = max(len(group), 1)
    if kind == "collective-permute":
      traffic, dims = full, 1
    else:
      frac = (n - 1) / n if n > 1 else 0.0
      traffic = full * frac * (2.0 if kind == "all-reduce" else 1.0)
      dims = self._spanned_dims(group)
    bw = max(2 * dims, 1) * link_bandwidth(self.chip) if self.chip.ici_bw else 1e30
    seconds = traffic / bw
    where = re.search(r'op_name="([^"]*)"', ins.attrs)
    key = (kind, async_, n, round(full))
    c = self._colls.get(key)
    if c is None:
      c = self._colls[key] = Collective(kind, 0.0, 0.0, 0.0, 0.0, async_,
                                        where.group(1) if where else "")
    c.count += mult
    c.bytes += full * mult
    c.ici_bytes += traffic * mult
    c.seconds += seconds * mult
    if async_:
      self.est.async_collective_s += seconds * mult
    else:
      self.est.sync_collective_s += seconds * mult

  # -- fused computations: matmul FLOPs and the collectives inside
  def _fused(self, name: str) -> tuple[float, float, list[Instr]]:
    if name in self._fused_cache:
      return self._fused_cache[name]
    comp = self.comps.get(name)
    flops = padded = 0.0
    colls: list[Instr] = []
    if comp is not None:
      for ins in comp.instrs:
        if ins.opcode in ("dot", "convolution"):
          f, p = matmul_flops(ins, comp, self.chip.mxu)
          flops, padded = flops + f, padded + p
        elif _collective_kind(ins.opcode):
          colls.append((ins, comp))
        for callee in _attr_comp(ins.attrs, "calls"):
          f, p, c = self._fused(callee)
          flops, padded = flops + f, padded + p
          colls.extend(c)
    self._fused_cache[name] = (flops, padded, colls)
    return self._fused_cache[name]

  def _fusion_bytes(self, ins: Instr, comp: Computation) -> float:
    """HBM bytes a fusion reads and writes (memory space 0), slices and in-place updates
    counted by what they touch."""
    callee = next(iter(_attr_comp(ins.attrs, "calls")), None)
    fused = self.comps.get(callee) if callee else None
    total = 0.0
    params = {}
    if fused is not None:
      for fi in fused.instrs:
        if fi.opcode == "parameter" and fi.args.strip().isdigit():
          params[int(fi.args)] = fi
    for k, o in enumerate(ins.operands):
      src = comp.by_name.get(o)
      if src is None:
        continue
      arrays = [a for a in src.shapes if a.space == 0]
      full = sum(a.bytes for a in arrays)
      p = params.get(k)
      if p is not None and fused is not None:
        users = fused.users.get(p.name, [])
        if users and all(u.opcode == "dynamic-slice" and u.operands[0] == p.name
                         for u in users):
          full = min(full, sum(sum(a.bytes for a in u.shapes) for u in users))
        elif users and all(u.opcode == "dynamic-update-slice" and u.operands[0] == p.name
                           for u in users):
          full = 0.0
      total += full
    outs = [a for a in ins.shapes if a.space == 0]
    out_b = sum(a.bytes for a in outs)
    if fused is not None and fused.root is not None:
      roots = ([fused.by_name.get(o) for o in fused.root.operands]
               if fused.root.opcode == "tuple" else [fused.root])
      out_b = 0.0
      out_arrays = ins.shapes
      for r, a in zip(roots, out_arrays):
        if r is None or a.space != 0 or r.opcode == "parameter":
          continue
        if r.opcode == "dynamic-update-slice" and len(r.operands) > 1:
          upd = fused.by_name.get(r.operands[1])
          out_b += sum(x.bytes for x in upd.shapes) if upd is not None else a.bytes
        else:
          out_b += a.bytes
    return total + out_b

  def _op_bytes(self, ins: Instr, comp: Computation) -> float:
    if ins.opcode.endswith("-start"):
      # An async copy / slice: its result tuple echoes the operand, then the destination;
      # HBM is touched by the source slice and the destination where they are in space 0.
      srcs = [a for o in ins.operands if o in comp.by_name for a in comp.by_name[o].shapes]
      arrays = ins.shapes
      if len(arrays) > len(srcs):
        dest = arrays[len(srcs)]
        src_hbm = bool(srcs) and srcs[0].space == 0
        return dest.bytes * (int(src_hbm) + int(dest.space == 0))
    if ins.opcode in ("dynamic-slice", "slice"):
      return 2 * sum(a.bytes for a in ins.shapes if a.space == 0)
    if ins.opcode == "dynamic-update-slice" and len(ins.operands) > 1:
      upd = comp.by_name.get(ins.operands[1])
      return 2 * sum(a.bytes for a in upd.shapes) if upd is not None else 0.0
    total = sum(a.bytes for a in ins.shapes if a.space == 0)
    for o in ins.operands:
      src = comp.by_name.get(o)
      if src is not None:
        total += sum(a.bytes for a in src.shapes if a.space == 0)
    return total

  def _add_op(self, ins: Instr, mult: float, flops: float, padded: float, nbytes: float,
              loop_once: bool) -> None:
    chip, e = self.chip, self.est
    t_f = flops / chip.peak_bf16
    t_b = nbytes / chip.hbm_bw
    roof = max(t_f, t_b)
    cycles = re.search(r'"estimated_cycles":"(\d+)"', ins.attrs)
    if cycles and chip.clock_hz:
      t = int(cycles.group(1)) / chip.clock_hz
      e.cycles_ops += mult
    else:
      t = roof
      e.roofline_ops += mult
    e.matmul_flops += flops * mult
    e.mxu_flops += padded * mult
    e.hbm_bytes += nbytes * mult
    e.flops_s += t_f * mult
    e.hbm_s += t_b * mult
    e.compute_s += t * mult
    e.roofline_s += roof * mult
    if loop_once:
      e.loop_once_matmul_flops += flops
      e.loop_once_hbm_bytes += nbytes
    where = re.search(r'op_name="([^"]*)"', ins.attrs)
    self._ops.append((t * mult, where.group(1) if where else ins.name, t_f * mult, t_b * mult))

  def walk(self, name: str, mult: float, first_visit: bool = True) -> None:
    comp = self.comps[name]
    for ins in comp.instrs:
      op = ins.opcode
      if op in FREE_OPS or op.endswith("-done"):
        continue
      if op == "while":
        body = _attr_comp(ins.attrs, "body")
        n = trip_count(self.comps, ins, comp)
        if n is None:
          self.est.unknown_trip_counts += 1
          n = 1
        if body:
          self.walk(body[0], mult * n, first_visit)
        continue
      if op in ("call", "conditional", "async-start"):
        callees = (_attr_comp(ins.attrs, "branch_computations") if op == "conditional"
                   else _attr_comp(ins.attrs, "to_apply") + _attr_comp(ins.attrs, "calls"))
        for c in callees:
          if c in self.comps:
            self.walk(c, mult / max(len(callees), 1) if op == "conditional" else mult,
                      first_visit)
        continue
      kind = _collective_kind(op)
      if kind is not None:
        self._collective(ins, comp, mult, async_=op.endswith("-start"))
        continue
      flops = padded = 0.0
      if op == "fusion":
        callee = next(iter(_attr_comp(ins.attrs, "calls")), None)
        if callee:
          flops, padded, colls = self._fused(callee)
          for cins, ccomp in colls:
            self._collective(cins, ccomp, mult, async_=True)
        nbytes = self._fusion_bytes(ins, comp)
      elif op in ("dot", "convolution"):
        flops, padded = matmul_flops(ins, comp, self.chip.mxu)
        nbytes = self._op_bytes(ins, comp)
      elif op == "custom-call":
        target = re.search(r'custom_call_target="([^"]*)"', ins.attrs)
        target = target.group(1) if target else ""
        if target in FREE_CUSTOM_CALLS:
          continue
        f = re.search(r'"flops"\s*:\s*"?(\d+)', ins.attrs)
        b = re.search(r'"bytes_accessed"\s*:\s*"?(\d+)', ins.attrs)
        if f:
          flops = padded = float(f.group(1))
        elif (f := splash_flops(ins, comp)) is not None:
          flops = padded = f
        else:   # a Pallas kernel without a cost estimate: its FLOPs are missed
          self.est.custom_calls_without_cost += 1
        nbytes = float(b.group(1)) if b else self._op_bytes(ins, comp)
      elif op.endswith("-start"):   # an async copy / slice (DMA), overlapped with compute
        nbytes = self._op_bytes(ins, comp)
        self.est.hbm_bytes += nbytes * mult
        self.est.async_copy_s += nbytes / self.chip.hbm_bw * mult
        continue
      else:
        nbytes = self._op_bytes(ins, comp)
      self._add_op(ins, mult, flops, padded, nbytes, loop_once=True)

  def finish(self) -> Estimate:
    e = self.est
    by_kind: dict[str, dict[str, float]] = {}
    for c in self._colls.values():
      d = by_kind.setdefault(c.kind, {"count": 0.0, "bytes": 0.0, "ici_bytes": 0.0,
                                      "seconds": 0.0, "async_count": 0.0})
      d["count"] += c.count
      d["bytes"] += c.bytes
      d["ici_bytes"] += c.ici_bytes
      d["seconds"] += c.seconds
      d["async_count"] += c.count if c.async_ else 0.0
    e.collectives = {k: {kk: (round(v) if kk.endswith("count") else v) for kk, v in d.items()}
                     for k, d in sorted(by_kind.items())}
    top = sorted(self._colls.values(), key=lambda c: -c.seconds)[:self.top_k]
    e.top_collectives = [{"kind": c.kind, "count": round(c.count), "bytes_each": c.bytes / c.count,
                          "seconds": c.seconds, "async": c.async_, "op": c.where[-120:]}
                         for c in top if c.count]
    merged: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for t, where, tf, tb in self._ops:
      key = re.sub(r"\.\d+", "", where)[-120:]
      merged[key][0] += t
      merged[key][1] += tf
      merged[key][2] += tb
    e.top_ops = [{"op": k, "seconds": v[0], "flops_s": v[1], "hbm_s": v[2]}
                 for k, v in sorted(merged.items(), key=lambda kv: -kv[1][0])[:self.top_k]]
    return e


def estimate(hlo_text: str, chip: Chip, device_coords: Sequence | None = None,
             num_devices: int = 1, top_k: int = 8) -> Estimate:
  """Per-device roofline estimate of one execution of a compiled module's HLO text."""
  comps, entry = parse_module(hlo_text)
  walker = _Walker(comps, chip, device_coords, num_devices, top_k)
  walker.walk(entry, 1.0)
  return walker.finish()
