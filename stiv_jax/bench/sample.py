"""`stiv-bench sample`: seconds per t2v sample at the demo config, JIT-CFG batched vs separate.

Batched: the conditional and unconditional branches run as ONE forward over a doubled batch.
Separate (the reference, same run): two forwards per step. Each runs on the mesh over every
device (on a CPU the host is split into one device per core, like the chips of an accelerator
host) and on a single device. Headline `ratio` = batched / separate at the SAME placement, the
mesh (goal <= 0.7); `ratio_same_placement` has it per placement and `ratio_best_vs_best` pits
the best batched against the best separate whatever their placement (with one sample the
batched forward puts its two branches on two devices, separate forwards of one sample cannot
be split). Random weights: the timing does not depend on their values.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stiv_jax import config_schema as schema
from stiv_jax import sampling
from stiv_jax.models.stiv import STIV


def random_model(cfg, seed: int = 0) -> nnx.Module:
  """An STIV with random parameters (numpy draws: no per-parameter compiles)."""
  abstract = nnx.eval_shape(lambda: STIV(cfg, rngs=nnx.Rngs(params=0)))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda a: jnp.asarray(0.02 * rng.standard_normal(a.shape), a.dtype), params)
  return nnx.merge(graphdef, params, rest)


def t2v_cond(cfg, batch: int, text_len: int) -> tuple[dict, dict]:
  """Conditioning of a t2v batch (random text embeddings, no conditioning frames)."""
  rng = np.random.default_rng(0)
  t = cfg.num_frames
  cond = dict(text=rng.standard_normal((batch, text_len, cfg.text_dim)).astype("f4"),
              text_mask=np.ones((batch, text_len), bool),
              pooled=rng.standard_normal((batch, cfg.text_dim)).astype("f4"),
              micro=np.tile(np.array([64, 64, 0, 0, 1, t], "f4"), (batch, 1)),
              cond_mask=np.zeros((batch, t), bool),
              cond_latents=np.zeros((batch, t, cfg.latent_height, cfg.latent_width,
                                     cfg.latent_channels), "f4"))
  null = dict(text=np.zeros((1, text_len, cfg.text_dim), "f4"),
              text_mask=np.ones((1, text_len), bool),
              pooled=np.zeros((1, cfg.text_dim), "f4"))
  return cond, null


def make_sampler(model, steps: int, batched: bool, mesh) -> sampling.Sampler:
  """A t2v JIT-CFG sampler with the branches in one forward (batched) or two."""
  return sampling.Sampler(model, sampling.SamplerConfig(steps=steps, batched_cfg=batched), mesh)


def placements() -> dict[str, jax.sharding.Mesh]:
  """Where to sample: the mesh over every device and, with several, a single device."""
  auto = (jax.sharding.AxisType.Auto,)
  out = {"mesh": sampling.default_mesh()}
  if jax.device_count() > 1:
    out["one_device"] = jax.make_mesh((1,), ("data",), axis_types=auto, devices=jax.devices()[:1])
  return out


def interleaved_seconds_per_sample(samplers: dict, cond, null, repeats: int) -> dict[str, float]:
  """Best full-run time per sampler divided by the batch; runs alternate between samplers so
  load from other processes hits both alike. The first run of each (compile) is not timed."""
  for s in samplers.values():
    s(cond, null, seed=0)
  best = {k: float("inf") for k in samplers}
  for r in range(repeats):
    for k, s in samplers.items():
      t0 = time.perf_counter()
      s(cond, null, seed=r)
      best[k] = min(best[k], time.perf_counter() - t0)
  b = cond["cond_latents"].shape[0]
  return {k: v / b for k, v in best.items()}


def split_host_into_core_devices(devices: int) -> int:
  """Makes the CPU platform `devices` devices (0: one per usable core) unless XLA_FLAGS already
  sets a count; must run before JAX starts a backend. Returns the count asked for."""
  n = devices or len(os.sched_getaffinity(0))
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
  return n


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--batch", type=int, default=1, help="samples per sampler call")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--text-len", type=int, default=16)
  p.add_argument("--preset", default="demo", choices=sorted(schema.CPU_PRESETS),
                 help="model of stiv_jax.config_schema.cpu_preset")
  p.add_argument("--cpu-devices", type=int, default=0,
                 help="CPU devices to split the host into (0: one per usable core)")
  args = p.parse_args()
  split_host_into_core_devices(args.cpu_devices)
  cfg = schema.cpu_preset(args.preset, mask_ratio=0.0)[0]
  model = random_model(cfg)
  cond, null = t2v_cond(cfg, args.batch, args.text_len)
  samplers = {}
  for where, mesh in placements().items():
    for mode in ("batched", "separate"):
      samplers[f"{mode}/{where}"] = make_sampler(model, args.steps, mode == "batched", mesh)
  times = interleaved_seconds_per_sample(samplers, cond, null, args.repeats)
  best = {mode: min(v for k, v in times.items() if k.startswith(mode + "/"))
          for mode in ("batched", "separate")}
  same = {w: round(times[f"batched/{w}"] / times[f"separate/{w}"], 4) for w in placements()}
  print(json.dumps({
      "benchmark": "sample", "task": "t2v",
      "preset": args.preset,
      "latents": [cfg.num_frames, cfg.latent_height, cfg.latent_width, cfg.latent_channels],
      "batch": args.batch, "steps": args.steps, "devices": jax.device_count(),
      "backend": jax.default_backend(),
      "s_per_sample": {k: round(v, 4) for k, v in times.items()},
      "ratio_same_placement": same,
      "s_per_sample_batched": round(best["batched"], 4),
      "s_per_sample_separate": round(best["separate"], 4),
      "ratio_best_vs_best": round(best["batched"] / best["separate"], 4),
      "ratio": same["mesh"], "placement": "mesh", "goal": "<= 0.7"}))


if __name__ == "__main__":
  main()
