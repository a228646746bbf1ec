"""`stiv-bench lora`: LoRA vs full fine-tuning of the 'mid' model, optimizer-state bytes and step.

Both run the real jitted train step (stiv_jax/train/step.py) on the same batch, mesh and
optimizer config (the schema's AdaFactor): full fine-tuning updates every parameter; LoRA
(rank 16 on the default targets, attention q/k/v/o and FFN of every block) updates only the
adapters, the base is a frozen argument. Both set optimizer.min_dim_size_to_factor = the rank,
so the adapters' second moments are factored too (A [.., in, r] into in and r); the full run's
extra factored small kernels change its bytes by under 1%. Headline `ratio` = LoRA
optimizer-state bytes / full (goal <= 0.05); step seconds, adapter count and compiled temporary bytes beside it. Random
weights (the base is the fresh init): the timing and sizes do not depend on their values.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from stiv_jax import lora as lora_lib
from stiv_jax import sharding as shd
from stiv_jax.bench.train_step import bench_config, host_batch
from stiv_jax.models.encoders.base import build_text_encoder
from stiv_jax.train import optimizer as opt_lib
from stiv_jax.train import state as state_lib
from stiv_jax.train import step as step_lib


def nbytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def compiled_step(c, lora: bool):
  """(compiled step, state, extra args, mesh, rules) of full or LoRA fine-tuning under c."""
  shd.set_partitioner(c.mesh)
  mesh = shd.make_mesh(c.mesh)
  rules = shd.rules_from_config(c.mesh.rules)
  tx = opt_lib.make_optimizer(c.optimizer)
  batch = shd.shard_batch(host_batch(c), mesh, rules)
  null = step_lib.null_text_arrays(build_text_encoder(c.text))
  bshard = shd.batch_shardings(batch, mesh, rules)
  if lora:
    base = lora_lib.fresh_base(c, mesh, rules)
    state, shardings = lora_lib.create_train_state(base, tx, c, mesh)
    fn = step_lib.jit_train_step(c, base.graphdef, tx, shardings, bshard, mesh,
                                 base_shardings=base.param_shardings)
    extra = (base.params,)
  else:
    graphdef, state, shardings = state_lib.create_train_state(
        lambda: state_lib.build_model(c.model, c.seed), tx, mesh, rules)
    fn = step_lib.jit_train_step(c, graphdef, tx, shardings, bshard, mesh)
    extra = ()
  compiled = fn.lower(state, batch, null, *extra).compile()
  return compiled, state, (batch, null, *extra), mesh


def measure(c, lora: bool, steps: int) -> dict:
  """Optimizer-state / trained-parameter bytes, median step seconds, compiled temp bytes."""
  compiled, state, args, _ = compiled_step(c, lora)
  out = {"opt_state_bytes": nbytes(state.opt_state), "trained_param_bytes": nbytes(state.params)}
  mem = compiled.memory_analysis()
  out["temp_bytes"] = int(getattr(mem, "temp_size_in_bytes", -1)) if mem is not None else -1
  state, m = compiled(state, *args)  # warm-up
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = compiled(state, *args)
    jax.block_until_ready((state.step, m))
    times.append(time.perf_counter() - t0)
  out["step_s"] = float(np.median(times))
  return out


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--rank", type=int, default=16)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--frames", type=int, default=8)
  p.add_argument("--size", type=int, default=32, help="latent height = width (16x16 tokens)")
  p.add_argument("--text_dim", type=int, default=256)
  p.add_argument("--text_len", type=int, default=32)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--remat", default="save_self_attn")
  p.add_argument("--mask_ratio", type=float, default=0.0,
                 help="MaskDiT ratio of the fine-tuning (0: the paper's unmasked SFT)")
  args = p.parse_args(argv)
  full_cfg = bench_config(args, args.mask_ratio, args.remat)
  lora_cfg = bench_config(args, args.mask_ratio, args.remat)
  lora_cfg.lora.rank = args.rank
  for c in (full_cfg, lora_cfg):
    c.optimizer.min_dim_size_to_factor = args.rank
  full = measure(full_cfg, False, args.steps)
  lora = measure(lora_cfg, True, args.steps)
  print(json.dumps({
      "benchmark": "lora", "model": "mid", "rank": args.rank, "targets": lora_cfg.lora.targets,
      "optimizer": full_cfg.optimizer.name, "full": full, "lora": lora,
      "adapter_fraction": round(lora["trained_param_bytes"] / full["trained_param_bytes"], 5),
      "step_time_ratio": round(lora["step_s"] / full["step_s"], 4),
      "ratio": round(lora["opt_state_bytes"] / full["opt_state_bytes"], 5), "goal": "<= 0.05",
      "config": {"batch": args.batch, "latent": [args.frames, args.size, args.size, 8],
                 "remat": args.remat, "mask_ratio": args.mask_ratio,
                 "devices": jax.device_count(), "platform": jax.devices()[0].platform}}))


if __name__ == "__main__":
  main()
