"""Per-chip peaks and bandwidths of the plan targets, with the documents they come from.

`stiv-compile` sizes memory against `hbm_bytes` and turns the compiled TPU program into an
estimated step time with `peak_bf16`, `hbm_bw`, `ici_bw` and `mxu` (stiv_jax/tools/roofline.py).
Figures are the vendors' published per-chip numbers; GB is 1e9 bytes, GiB 2^30.

Sources (Google Cloud TPU documentation, read 2025):
  v5e  https://cloud.google.com/tpu/docs/v5e : 197 TFLOPs bf16, HBM2 16 GB at 819 GBps,
       bidirectional ICI 400 GBps per chip (1600 Gbps per direction), 4 ICI ports, 2D torus.
  v5p  https://cloud.google.com/tpu/docs/v5p : 459 TFLOPs bf16, 95 GiB HBM2e at 2765 GBps,
       bidirectional ICI 1200 GBps per chip (4800 Gbps), 3D torus (6 ports), 2 TensorCores
       per chip seen by JAX as one device (megacore); `v5p-N` names N TensorCores.
  v6e  https://cloud.google.com/tpu/docs/v6e : 918 TFLOPs bf16, 32 GB HBM at 1640 GBps,
       bidirectional ICI 800 GBps per chip (3584 Gbps), 4 ports, 2D torus.
  MXU  https://cloud.google.com/tpu/docs/system-architecture-tpu-vm : an MXU is 256 x 256
       multiply-accumulators on v6e, 128 x 128 on earlier TPUs; 4 MXUs per TensorCore (the
       v5e / v5p pages; v6e's page says 2 in one revision and 4 in another: 4 is the count the
       TPU compiler's own cycle estimate of a large matmul allows, 2 would put it above peak).
  clock: not published; derived as peak / (MXUs x side^2 x 2 FLOPs). The TPU compiler writes
       `estimated_cycles` per op into the compiled HLO; the roofline turns them into seconds
       with it (v5e 1.50 GHz, v5p 1.75 GHz per TensorCore, v6e 1.75 GHz).
  H100 / H200 (NVIDIA datasheets): 989 TFLOPs dense bf16; 80 GB HBM3 at 3.35 TB/s / 141 GB
       HBM3e at 4.8 TB/s; NVLink 900 GB/s. GPUs have no compile-only topology in JAX, so they
       are planned on fake CPU devices only.
"""
from __future__ import annotations

import dataclasses

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip (one JAX device)."""
  kind: str
  hbm_bytes: int          # memory a step may use is a fraction of this (stiv-compile)
  peak_bf16: float        # dense bf16 FLOP/s
  hbm_bw: float           # bytes/s
  ici_bw: float           # bidirectional interconnect bytes/s per chip, all ports together
  ici_ports: int          # links per chip (2 per torus dimension)
  mxu: int                # systolic array side: matmul dims are padded to multiples of it
  tpu_name: str           # jax.experimental.topologies name ('' = not a TPU)
  torus_dims: int         # 2 (v5e, v6e) or 3 (v5p)
  source: str
  mxus: int = 0           # MXUs per chip (per JAX device; v5p's megacore has 2 TensorCores)

  @property
  def clock_hz(self) -> float:
    """Core clock implied by the bf16 peak and the MXUs (0 when unknown: GPUs)."""
    return self.peak_bf16 / (self.mxus * self.mxu * self.mxu * 2) if self.mxus else 0.0


CHIPS = {
    "v5e": Chip("v5e", 16 * GIB, 197e12, 819e9, 400e9, 4, 128, "v5e", 2,
                "https://cloud.google.com/tpu/docs/v5e", mxus=4),
    "v5p": Chip("v5p", 95 * GIB, 459e12, 2765e9, 1200e9, 6, 128, "v5p", 3,
                "https://cloud.google.com/tpu/docs/v5p", mxus=8),
    "v6e": Chip("v6e", 32 * GIB, 918e12, 1640e9, 800e9, 4, 256, "v6e", 2,
                "https://cloud.google.com/tpu/docs/v6e", mxus=4),
    "h100": Chip("h100", 80 * GIB, 989e12, 3.35e12, 900e9, 18, 0, "", 0,
                 "NVIDIA H100 SXM datasheet"),
    "h200": Chip("h200", 141 * GIB, 989e12, 4.8e12, 900e9, 18, 0, "", 0,
                 "NVIDIA H200 SXM datasheet"),
}

# Slice shapes Google Cloud offers (the pages above); the TPU compiler accepts these grids.
TPU_SLICE_CHIPS = {
    "v5e": (1, 4, 8, 16, 32, 64, 128, 256),
    "v6e": (1, 4, 8, 16, 32, 64, 128, 256),
    "v5p": (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 6144),
}


def link_bandwidth(chip: Chip) -> float:
  """One ICI link's bandwidth in one direction (bytes/s)."""
  return chip.ici_bw / (2 * chip.ici_ports)


def table_markdown() -> str:
  """The chip table as markdown (WORKSPACE.md / MEMORY_PLAN.md)."""
  rows = ["| chip | bf16 peak TFLOP/s | HBM | HBM GB/s | ICI GB/s per chip (bidir.) | MXUs | "
          "clock (derived) | source |", "|---|---|---|---|---|---|---|---|"]
  for c in CHIPS.values():
    mxu = f"{c.mxus} x {c.mxu}x{c.mxu}" if c.mxus else "-"
    clock = f"{c.clock_hz / 1e9:.2f} GHz" if c.clock_hz else "-"
    rows.append(f"| {c.kind} | {c.peak_bf16 / 1e12:.0f} | {c.hbm_bytes / GIB:.0f} GiB | "
                f"{c.hbm_bw / 1e9:.0f} | {c.ici_bw / 1e9:.0f} | {mxu} | {clock} | {c.source} |")
  return "\n".join(rows)
