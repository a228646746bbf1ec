"""Train metrics: clu.metrics accumulation, throughput/MFU, and TensorBoard + JSONL + console.

FLOPs come from the analytic count in stiv_jax.models.flops; MFU compares achieved FLOP/s per
device with a peak table (bf16 dense peaks of accelerators) or, on CPU, the matmul rate measured
at start-up on this machine (fake CPU devices share the cores, so the rate is split among them).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

# Peak dense bf16 FLOP/s per device (chip), matched by substring of device_kind (lower case).
PEAK_FLOPS = (
    ("v6 lite", 918e12), ("v6e", 918e12), ("v5p", 459e12), ("v5 lite", 197e12),
    ("v5e", 197e12), ("v4", 275e12), ("h200", 989e12), ("h100", 989e12),
)


def measure_cpu_matmul_flops(n: int = 512, repeats: int = 5) -> float:
  """FLOP/s of an f32 [n, n] @ [n, n] matmul on the first device (best of `repeats`)."""
  dev = jax.devices()[0]
  a = jax.device_put(jnp.ones((n, n), jnp.float32), dev)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n ** 3 / best


def peak_flops_per_device(override: float = 0.0) -> tuple[float, str]:
  """(peak FLOP/s per device, where it came from): config override, table, or measured CPU rate."""
  if override > 0:
    return float(override), "config"
  kind = jax.devices()[0].device_kind.lower()
  for key, peak in PEAK_FLOPS:
    if key in kind:
      return peak, f"table:{key}"
  if jax.devices()[0].platform == "cpu":
    return measure_cpu_matmul_flops() / max(jax.local_device_count(), 1), "measured_cpu_matmul"
  return 0.0, f"unknown device {kind!r}"


def step_flops(model_cfg: Any, batch: int, num_frames: int, height: int, width: int,
               text_len: int) -> float:
  """Analytic model FLOPs of one train step (forward + backward) on a global batch."""
  from stiv_jax.models import flops
  return flops.train_step_flops(model_cfg, batch, num_frames, height, width, text_len,
                                masked=float(model_cfg.mask_ratio) > 0)


def tokens_per_example(model_cfg: Any, num_frames: int, height: int, width: int) -> int:
  """Patch tokens of one example (before MaskDiT drops any)."""
  tp = max(num_frames, model_cfg.patch_t) // model_cfg.patch_t
  return tp * (height // model_cfg.patch_s) * (width // model_cfg.patch_s)


class Accumulator:
  """Averages step metrics between reports with clu.metrics (loss per t quarter included)."""

  def __init__(self):
    self.reset()

  def reset(self) -> None:
    self.avg: dict[str, clu_metrics.Average] = {}
    self.last: dict[str, float] = {}
    self.steps = 0

  def _add(self, name: str, total: float, count: float) -> None:
    new = clu_metrics.Average(total=jnp.float32(total), count=jnp.float32(count))
    self.avg[name] = self.avg[name].merge(new) if name in self.avg else new

  def update(self, m: Mapping[str, np.ndarray]) -> None:
    """Adds one step's host metrics (the train step's metrics dict, fetched)."""
    finite = bool(m["finite"])
    if finite:
      self._add("loss", float(m["loss"]), 1.0)
      self._add("grad_norm", float(m["grad_norm"]), 1.0)
      for i, (s, c) in enumerate(zip(m["t_bucket_loss_sum"], m["t_bucket_count"])):
        if c > 0:
          self._add(f"loss_t{i}", float(s), float(c))
    self.last = {"lr": float(m["lr"]), "skipped": float(m["skipped_total"]),
                 "bad_streak": float(m["bad_streak"])}
    self.steps += 1

  def compute(self) -> dict[str, float]:
    out = {k: float(v.compute()) for k, v in self.avg.items()}
    out.update(self.last)
    return out


class Writer:
  """Writes scalars to TensorBoard (tensorboardX), metrics.jsonl and one console line."""

  def __init__(self, workdir: str, *, tensorboard: bool = True, jsonl: bool = True,
               enabled: bool = True):
    self.enabled = enabled
    self.tb = None
    self.jsonl = None
    self.tb_dir = os.path.join(workdir, "tensorboard")
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    if not enabled:
      return
    if tensorboard:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(self.tb_dir)
    if jsonl:
      self.jsonl = open(self.jsonl_path, "a")

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    if self.tb is not None:
      for k, v in scalars.items():
        self.tb.add_scalar(k, v, step)
      self.tb.flush()
    if self.jsonl is not None:
      self.jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}})
                       + "\n")
      self.jsonl.flush()
    keys = ("loss", "grad_norm", "lr", "skipped", "steps_per_s", "examples_per_s",
            "tflops_per_device", "mfu", "input_wait_frac")
    parts = [f"{k}={scalars[k]:.4g}" for k in keys if k in scalars]
    buckets = [f"{scalars[f'loss_t{i}']:.3f}" for i in range(4) if f"loss_t{i}" in scalars]
    print(f"[step {step}] " + " ".join(parts) + (f" loss_t=[{','.join(buckets)}]"
                                                  if buckets else ""), flush=True)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()
    if self.jsonl is not None:
      self.jsonl.close()


class Interval:
  """Work done since the last report (FLOPs, tokens, examples summed over its steps, which may
  come from different buckets) and the rates it gives."""

  def __init__(self):
    self.reset()

  def reset(self) -> None:
    self.start, self.steps, self.flops, self.tokens, self.examples = time.perf_counter(), 0, 0.0, 0, 0

  def add(self, flops: float, tokens: int, examples: int) -> None:
    self.steps += 1
    self.flops += flops
    self.tokens += tokens
    self.examples += examples

  def rates(self, *, wait: float, peak: float) -> dict[str, float]:
    """steps/s, examples/s, tokens/s, TFLOP/s per device, MFU and the input-wait share."""
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    per_dev = self.flops / elapsed / jax.device_count()
    out = {"steps_per_s": self.steps / elapsed, "examples_per_s": self.examples / elapsed,
           "tokens_per_s": self.tokens / elapsed, "tflops_per_device": per_dev / 1e12,
           "input_wait_frac": wait / elapsed}
    if peak > 0:
      out["mfu"] = per_dev / peak
    return out


class BucketTimes:
  """Per-bucket step time in steady state: with one step in flight, the gap between two metric
  fetches is the run time of the step fetched second, credited to its bucket."""

  def __init__(self):
    self.seconds: dict[str, list[float]] = {}
    self._last: float | None = None

  def start(self) -> None:
    self._last = time.perf_counter()

  def tick(self, key: str) -> None:
    now = time.perf_counter()
    if self._last is not None:
      self.seconds.setdefault(key, []).append(now - self._last)
    self._last = now

  def rates(self, flops_of: Mapping[str, float], tokens_of: Mapping[str, int], batch: int,
            peak: float) -> dict[str, float]:
    """bucket/<key>/{step_s, examples_per_s, mfu} (median step time since the last call)."""
    out = {}
    for key, times in self.seconds.items():
      if not times:
        continue
      step_s = float(np.median(times))
      out[f"bucket/{key}/step_s"] = step_s
      out[f"bucket/{key}/examples_per_s"] = batch / step_s
      if peak > 0 and key in flops_of:
        out[f"bucket/{key}/mfu"] = flops_of[key] / step_s / jax.device_count() / peak
    self.seconds = {k: [] for k in self.seconds}
    return out
