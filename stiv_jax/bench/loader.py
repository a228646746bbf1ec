"""`stiv-bench loader`: Grain loader throughput vs the demo train step's, measured in one run.

Writes a synthetic demo corpus (64x64 px, 16 frames, pixel VAE factor 4) to a temp dir unless
--data is given, then measures loader examples/s (stiv_jax.data.pipeline.loader_examples_per_s)
and the examples/s of the compiled demo train step on the same batches; ratio = loader / step
(goal >= 10: the input pipeline is never the bottleneck).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import numpy as np

from stiv_jax import config_schema as schema
from stiv_jax import sharding as shd
from stiv_jax.data import pipeline
from stiv_jax.models.encoders.base import build_text_encoder, build_vae
from stiv_jax.bench import train_step as train_step_bench


def step_examples_per_s(c, batches: list[dict[str, np.ndarray]]) -> float:
  """Examples/s of the demo train step (host batch sharding included), after one warm-up."""
  compiled, state, _, null, mesh, rules = train_step_bench.compile_step(c)
  state, m = compiled(state, shd.shard_batch(batches[0], mesh, rules), null)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for b in batches[1:]:
    state, m = compiled(state, shd.shard_batch(b, mesh, rules), null)
  jax.block_until_ready((state.step, m))
  return (len(batches) - 1) * c.data.batch_size / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--data", default="", help="latent-shard dir (default: write a temp corpus)")
  p.add_argument("--num_videos", type=int, default=128)
  p.add_argument("--loader_batches", type=int, default=50)
  p.add_argument("--step_batches", type=int, default=6)
  args = p.parse_args(argv)

  c = schema.train_config()
  c.model, c.vae, c.text = schema.cpu_preset("demo")
  with tempfile.TemporaryDirectory() as tmp:
    data = args.data
    if not data:
      from stiv_jax.data.synthetic import write_synthetic_shards
      data = os.path.join(tmp, "shards")
      write_synthetic_shards(data, num_videos=args.num_videos, seed=0, vae=build_vae(c.vae),
                             text_encoder=build_text_encoder(c.text), size=64, frames=(16,))
    c.data.path = data
    loader = pipeline.loader_examples_per_s(c.data, batch_size=c.data.batch_size,
                                            num_batches=args.loader_batches)
    it = pipeline.make_iterator(c.data, seed=0, batch_size=c.data.batch_size)
    try:
      batches = [next(it) for _ in range(args.step_batches)]
    finally:
      it.close()
    step = step_examples_per_s(c, batches)
  print(json.dumps({"loader_examples_per_s": loader, "step_examples_per_s": step,
                    "ratio": loader / step, "batch_size": c.data.batch_size,
                    "devices": jax.device_count()}))


if __name__ == "__main__":
  main()
