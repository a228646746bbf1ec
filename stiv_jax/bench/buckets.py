"""`stiv-bench buckets`: steady-state training throughput over 3 buckets vs over 1, same run.

Two datasets of random latents in the demo's shape family, written here: one with three
aspect-ratio buckets of EQUAL token count ([T, 16, 16], [T, 8, 32], [T, 32, 8] latents: 64
patch tokens per frame each, so every step does the same work) and one with the square bucket
alone. The real train loop (stiv_jax.train.loop.train: one compiled step per bucket, compiled
ahead of time) runs the same number of steps on each; throughput is examples/s over the logged
intervals after the first (compile excluded), best of `--repeats` runs, alternating datasets.
ratio = with buckets / without (goal >= 0.95). Compile seconds per bucket are printed too.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np

from stiv_jax import config_schema as schema
from stiv_jax.data import contract as contract_lib
from stiv_jax.data import schema as schema_lib
from stiv_jax.data import writer as writer_lib
from stiv_jax.models.encoders.base import build_text_encoder, build_vae

THREE_BUCKETS = ((16, 16), (8, 32), (32, 8))


def write_dataset(path: str, config, shapes, records_per_bucket: int, seed: int = 0) -> None:
  """Random-latent records for each (h, w) latent shape, with the config's encoders' contract."""
  m = config.model
  vae, text = build_vae(config.vae), build_text_encoder(config.text)
  tokens, mask, pooled = text.encode_text(["a red circle moving right"])
  rng = np.random.default_rng(seed)
  with writer_lib.ShardWriter(path, contract=contract_lib.encoders_record(vae, text),
                              empty_prompt=text.encode_text([""])) as w:
    for h, wd in shapes:
      for i in range(records_per_bucket):
        w.write(schema_lib.ClipRecord(
            latents=rng.standard_normal((m.num_frames, h, wd, m.latent_channels)).astype("f4"),
            text=tokens[0], text_mask=mask[0], pooled=pooled[0],
            micro={"orig_height": 4 * h, "orig_width": 4 * wd, "crop_top": 0, "crop_left": 0,
                   "stride": 1, "num_frames": m.num_frames},
            caption="a red circle moving right", clip_id=f"b{h}x{wd}-{i}",
            caption_source="synthetic"))


def bench_config(data: str, steps: int, frames: int, batch: int):
  """The demo preset model (mask ratio 0.5) on `frames` latent frames, a metrics line every 5
  steps, one checkpoint at the end."""
  c = schema.train_config()
  c.model, c.vae, c.text = schema.cpu_preset("demo", num_frames=frames)
  c.data.path = data
  c.data.batch_size = batch
  c.optimizer.warmup_steps = 0
  c.optimizer.min_dim_size_to_factor = 64
  c.train.num_steps = steps
  c.checkpoint.every_steps = steps
  c.checkpoint.async_save = False
  c.metrics.every_steps = 5
  c.metrics.tensorboard = False
  return c


def steady_examples_per_s(workdir: str) -> float:
  """Median examples/s of the logged intervals after the first one."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rates = [json.loads(line)["examples_per_s"] for line in f]
  return float(np.median(rates[1:] if len(rates) > 1 else rates))


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=40)
  p.add_argument("--frames", type=int, default=8, help="latent frames per clip")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--repeats", type=int, default=2)
  args = p.parse_args(argv)
  import jax

  from stiv_jax.train import loop
  best = {"buckets": 0.0, "one_bucket": 0.0}
  compile_s: dict[str, float] = {}
  with tempfile.TemporaryDirectory() as tmp:
    data = {"buckets": os.path.join(tmp, "three"), "one_bucket": os.path.join(tmp, "one")}
    probe = bench_config("", args.steps, args.frames, args.batch)
    write_dataset(data["buckets"], probe, THREE_BUCKETS, 4 * args.batch)
    write_dataset(data["one_bucket"], probe, THREE_BUCKETS[:1], 12 * args.batch)
    for r in range(args.repeats):
      for name, path in data.items():
        workdir = os.path.join(tmp, f"{name}_{r}")
        summary = loop.train(bench_config(path, args.steps, args.frames, args.batch), workdir)
        best[name] = max(best[name], steady_examples_per_s(workdir))
        if name == "buckets":
          compile_s = summary["compile_s"]
  print(json.dumps({
      "benchmark": "buckets", "devices": jax.device_count(), "backend": jax.default_backend(),
      "latent_shapes": [[args.frames, h, w] for h, w in THREE_BUCKETS], "steps": args.steps,
      "batch": args.batch, "examples_per_s_buckets": round(best["buckets"], 3),
      "examples_per_s_one_bucket": round(best["one_bucket"], 3),
      "compile_s_per_bucket": compile_s,
      "ratio": round(best["buckets"] / best["one_bucket"], 4), "goal": ">= 0.95"}))


if __name__ == "__main__":
  main()
