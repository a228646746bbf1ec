"""`stiv-bench demo-quality`: trains the CPU demo recipe and scores what its model generates.

Writes the synthetic corpus with the fast path (stiv_jax.data.synthetic.write_synthetic_shards)
as the clips `make demo`'s video pipeline leaves: single-scene clips that show their whole
motion, about 1.25 per video (a quarter of the videos hold a hard cut: two scenes), and no fade to
black (the pipeline trims the dim end of a fade: under 5% of its clips dim at all, none below 0.7
of their first frame's range, where a fast-path clip with fade_fraction 0.25 halves it),
trains `config_schema.demo_train_config()` with the real train loop (its during-training
evaluation included), then samples the HELD-OUT prompts (stiv_jax/eval/prompts) at the
recipe's default steps and guidance: t2v, and ti2v from rendered first frames
(stiv_jax.eval.synthetic_suite). Prints wall minutes, steps, the accuracies, the background
level; ratio = the lowest of the three t2v accuracies (goal >= 0.8).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time


def clips_per_video() -> float:
  """Clips the video pipeline makes of one synthetic demo video: the share with a hard cut gives
  two scenes (make demo: 512 videos -> 646 clips)."""
  from stiv_jax.data import synthetic as corpus
  return 1.0 + corpus.CUT_FRACTION


def main(argv: list[str] | None = None) -> None:
  from stiv_jax import config_schema as schema
  from stiv_jax.eval import synthetic, synthetic_suite
  from stiv_jax.models.encoders.base import build_text_encoder, build_vae
  from stiv_jax.train import checkpoint as ckpt_lib
  from stiv_jax.train import loop

  p = argparse.ArgumentParser(prog="stiv-bench demo-quality", description=__doc__)
  p.add_argument("--workdir", default="", help="run folder (default: a temp dir, removed)")
  p.add_argument("--num_clips", type=int, default=round(schema.DEMO_NUM_VIDEOS * clips_per_video()),
                 help="fast-path clips (default: what make demo's pipeline makes of its videos)")
  p.add_argument("--steps", type=int, default=0, help="train steps (0: the recipe's)")
  p.add_argument("--prompts", default="heldout", help="'heldout', 'tune' or a prompts file")
  p.add_argument("--args", default="", help="demo config arguments, e.g. 'tiny'")
  p.add_argument("--samples_per_prompt", type=int, default=3,
                 help="samples of each prompt scored (make demo's 3)")
  args = p.parse_args(argv)

  start = time.perf_counter()
  load0 = os.getloadavg()[0]
  config = schema.demo_train_config(args.args)
  if args.steps:
    config.train.num_steps = args.steps
  prompts = synthetic.load_prompts(args.prompts)
  tmp = None if args.workdir else tempfile.mkdtemp(prefix="demo_quality_")
  root = args.workdir or tmp
  try:
    shards = os.path.join(root, "data", "shards")
    vae, text = build_vae(config.vae), build_text_encoder(config.text)
    if not os.path.exists(os.path.join(shards, "manifest.json")):
      write_demo_clips(shards, config, vae, text, args.num_clips)
    data_s = time.perf_counter() - start
    config.data.path = shards
    run_dir = os.path.join(root, "run")
    summary = loop.train(config, run_dir)
    train_s = time.perf_counter() - start - data_s
    _, model = ckpt_lib.load_ema_model(run_dir)
    report = synthetic_suite.run_suite(model, config, prompts, text_encoder=text, vae=vae,
                                       out_dir=os.path.join(root, "eval") if args.workdir else None,
                                       samples_per_prompt=args.samples_per_prompt)
    eval_s = time.perf_counter() - start - data_s - train_s
    t2v, ti2v = report["t2v"], report["ti2v"]
    during = _eval_seconds(os.path.join(run_dir, "metrics.jsonl"))
    out = {
        "bench": "demo-quality", "steps": summary["step"],
        "wall_minutes": round((time.perf_counter() - start) / 60.0, 2),
        "data_minutes": round(data_s / 60, 2), "train_minutes": round(train_s / 60, 2),
        "eval_minutes": round(eval_s / 60, 2), "prompts": t2v["n"],
        "color": t2v["color"], "shape": t2v["shape"], "direction": t2v["direction"],
        "samples_per_prompt": args.samples_per_prompt,
        "all": t2v["all"], "background": round(t2v["background"], 4),
        "ti2v_direction": ti2v["direction"], "ti2v_color": ti2v["color"],
        "ti2v_first_frame_psnr": round(ti2v["first_frame_psnr"], 2),
        "during_training_eval_share": round(during / max(train_s, 1e-9), 4),
        "sampling_steps": report["steps"], "guidance": report["guidance"],
        "load_start": round(load0, 2), "load_end": round(os.getloadavg()[0], 2),
        "ratio": min(t2v["color"], t2v["shape"], t2v["direction"]),
    }
    if args.workdir:
      out["sheets"] = report["sheets"]
  finally:
    if tmp:
      shutil.rmtree(tmp, ignore_errors=True)
  print(json.dumps(out))


def write_demo_clips(shards: str, config, vae, text, num_clips: int) -> dict:
  """The fast path's stand-in for `make demo`'s pipeline output (latent shards at `shards`):
  single-scene clips at the recipe's frames and stride, none fading to black; -> manifest."""
  from stiv_jax import config_schema as schema
  from stiv_jax.data import synthetic as corpus
  size = int(config.model.latent_height) * int(config.vae.spatial_factor)
  return corpus.write_synthetic_shards(shards, num_videos=num_clips, seed=0, vae=vae,
                                       text_encoder=text, size=size,
                                       frames=(int(config.model.num_frames),), overwrite=True,
                                       stride=schema.DEMO_STRIDE, fade_fraction=0.0)


def _eval_seconds(metrics_path: str) -> float:
  """Seconds the during-training evaluation took (its 'eval/seconds' rows of metrics.jsonl)."""
  total = 0.0
  if os.path.exists(metrics_path):
    with open(metrics_path) as fh:
      for line in fh:
        total += float(json.loads(line).get("eval/seconds", 0.0))
  return total


if __name__ == "__main__":
  main()
