"""The synthetic-corpus quality check of a trained model: t2v on prompts, ti2v from rendered
first frames, both read by the synthetic score (stiv_jax.eval.synthetic).

`run_suite(model, config, prompts)` samples one t2v video per prompt and one ti2v video per
prompt from a rendered first frame of that prompt's scene (stiv_jax.data.synthetic, a fixed
seed), scores both, and (with `out_dir`) writes the MP4s and one contact sheet per task.
Sampling follows the run's `sampling` section; the micro-condition stride is eval.frame_stride.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from stiv_jax import sampling, video_io
from stiv_jax.data import synthetic as corpus
from stiv_jax.eval import synthetic

SUITE_SEED = 1234  # scenes of the ti2v first frames (not a training seed)


def first_frames(prompts: Sequence[str], *, size: int, num_frames: int,
                 seed: int = SUITE_SEED) -> np.ndarray:
  """uint8 [N, size, size, 3]: the first frame of a rendered scene of each synthetic prompt
  (its color, shape and direction; size and start drawn as the corpus draws them)."""
  out = []
  for i, prompt in enumerate(prompts):
    want = synthetic.parse_prompt(prompt)
    missing = [k for k, v in want.items() if v is None]
    if missing:
      raise ValueError(f"prompt {prompt!r}: not a synthetic prompt 'a {{color}} {{shape}} moving "
                       f"{{direction}}' (missing {missing})")
    rng = corpus.video_rng(seed, i)
    for _ in range(1000):  # rejection: the corpus' own draw of size, start and speed
      scene = corpus.sample_scene(rng, size=size, num_frames=num_frames)
      if scene.direction == want["direction"]:
        break
    scene = corpus.SceneSpec(want["color"], want["shape"], want["direction"], scene.radius,
                             scene.x0, scene.y0, scene.speed)
    out.append(corpus.render_scene(scene, size=size, num_frames=1)[0])
  return np.stack(out)


def _write(out_dir: str, name: str, videos: Sequence[np.ndarray], fps: int) -> str:
  """Writes NAME_XXX.mp4 per video and NAME_sheet.png; returns the sheet's path."""
  os.makedirs(out_dir, exist_ok=True)
  for i, video in enumerate(videos):
    video_io.write_mp4(os.path.join(out_dir, f"{name}_{i:03d}.mp4"), video, fps=fps)
  sheet = os.path.join(out_dir, f"{name}_sheet.png")
  video_io.write_png(sheet, video_io.contact_sheet(list(videos)))
  return sheet


def run_suite(model: Any, config: Any, prompts: Sequence[str], *, text_encoder: Any = None,
              vae: Any = None, seed: int = 0, out_dir: str | None = None,
              fps: int = 8, samples_per_prompt: int = 1) -> dict[str, Any]:
  """{'t2v': score, 'ti2v': score, 'sheets': {...}} of `model` on synthetic `prompts`, each
  sampled `samples_per_prompt` times (other noise, other ti2v first frames): with 14 prompts one
  sample each, one sample more or less moves an accuracy by 0.07."""
  from stiv_jax.models.encoders.base import build_text_encoder, build_vae
  from stiv_jax.tasks import TaskRunner
  if int(samples_per_prompt) < 1:
    raise ValueError(f"samples_per_prompt: must be >= 1, got {samples_per_prompt}")
  prompts = list(prompts) * int(samples_per_prompt)
  if not prompts:
    raise ValueError("synthetic suite: no prompts")
  text_encoder = text_encoder or build_text_encoder(config.text)
  vae = vae or build_vae(config.vae)
  scfg = sampling.SamplerConfig.from_config(dict(config.get("sampling", {}) or {}))
  stride = float((config.get("eval", {}) or {}).get("frame_stride", 1.0))
  runner = TaskRunner(sampling.Sampler(model, scfg), text_encoder, vae, config.model,
                      frame_stride=stride)
  t2v = [video_io.to_uint8(v) for v in runner.decode(runner.run("t2v", prompts, seed=seed))]
  images = first_frames(prompts, size=runner.height, num_frames=int(config.model.num_frames))
  mask = np.zeros((int(config.model.num_frames),), bool)
  mask[0] = True
  given = runner.encode_frames(images, "synthetic first frames")[:, None]  # [N, 1, h, w, C]
  ti2v = [video_io.to_uint8(v) for v in runner.decode(runner.clip(prompts, mask, given, seed))]
  report: dict[str, Any] = {"t2v": synthetic.score(t2v, prompts),
                            "ti2v": synthetic.score(ti2v, prompts),
                            "steps": scfg.steps, "guidance": scfg.guidance}
  report["ti2v"]["first_frame_psnr"] = synthetic.mean_fidelity(
      synthetic.first_frame_fidelity(v, img) for v, img in zip(ti2v, images))
  if out_dir:
    report["sheets"] = {"t2v": _write(out_dir, "t2v", t2v, fps),
                        "ti2v": _write(out_dir, "ti2v", ti2v, fps)}
  return report
