"""What the trainer evaluates every N steps: validation loss per t-bucket, and fixed samples.

Both are deterministic (fixed keys, prompts and seeds) so curves and sample grids are
comparable across steps. `DuringTrainingEval` compiles once and is called with the current
(EMA) model; `log_to_tensorboard` writes its results with a tensorboardX SummaryWriter.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stiv_jax import conditioning, flow, sampling
from stiv_jax import video_io

DEFAULT_PROMPTS = ("a red circle moving right", "a blue square moving up",
                   "a yellow triangle moving left", "a green circle moving down")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Every choice of the during-training evaluation (from an `eval` config section)."""

  num_buckets: int = 4            # equal-width t buckets of [0, 1]
  cond_mode: str = "none"         # frame mode of the validation loss (none: T2V, first: TI2V)
  seed: int = 0                   # fixed key for t and noise of the validation loss
  prompts: tuple[str, ...] = DEFAULT_PROMPTS
  sample_seed: int = 0
  sample_steps: int = 20
  guidance: float = 4.0
  ti2v_samples: int = 2           # TI2V samples conditioned on held-out first frames
  frame_stride: float = 1.0       # micro-condition stride of the samples

  @classmethod
  def from_config(cls, section: Mapping[str, Any] | None = None) -> "EvalConfig":
    values = dict(section or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise ValueError(f"eval: unknown fields {unknown}; expected some of {sorted(names)}")
    if "prompts" in values:
      values["prompts"] = tuple(values["prompts"])
    cfg = cls(**values)
    if cfg.num_buckets < 1:
      raise ValueError(f"eval.num_buckets: must be >= 1, got {cfg.num_buckets}")
    if cfg.cond_mode not in conditioning.FRAME_MODES:
      raise ValueError(f"eval.cond_mode: {cfg.cond_mode!r} unknown; expected one of "
                       f"{conditioning.FRAME_MODES}")
    return cfg


def _bucket_loss(graphdef, state, batch, eps, t, cond_mask):
  """Per-example flow loss [B] at times t [B] (unmasked model, T2V/TI2V by cond_mask)."""
  model = nnx.merge(graphdef, state)
  x1 = batch["latents"]
  xt = flow.noise_latents(x1, eps, t)
  out = model(xt, t, batch["text"], batch["text_mask"], batch["pooled"], batch["micro"],
              cond_mask=cond_mask, cond_latents=x1, mask_key=None)
  keep = jnp.ones(x1.shape[:4], jnp.float32)
  _, per_example = flow.flow_loss(out.velocity, flow.velocity_target(x1, eps), keep, cond_mask)
  return per_example


class DuringTrainingEval:
  """Validation loss per t-bucket on held-out batches, and a fixed set of samples."""

  def __init__(self, config: Any, held_out: Sequence[Mapping[str, np.ndarray]],
               text_encoder: Any, vae: Any, eval_cfg: EvalConfig | None = None):
    """config: the run config (model section); held_out: a few fixed batches (pipeline dicts)."""
    self.config = config
    self.cfg = eval_cfg or EvalConfig.from_config(config.get("eval", None))
    self.held_out = [dict(b) for b in held_out]
    if not self.held_out:
      raise ValueError("during-training eval: no held-out batches")
    self.text_encoder = text_encoder
    self.vae = vae
    self._loss_fns: dict[Any, Any] = {}

  def validation_loss(self, model: nnx.Module) -> dict[str, float]:
    """{'val/loss', 'val/loss_t0.00-0.25', ...}: every example at one t in each bucket."""
    graphdef, state = nnx.split(model)
    fn = self._loss_fns.get(graphdef)
    if fn is None:
      fn = jax.jit(lambda s, b, e, t, m: _bucket_loss(graphdef, s, b, e, t, m))
      self._loss_fns[graphdef] = fn
    n = self.cfg.num_buckets
    sums, counts = np.zeros(n), np.zeros(n)
    key = jax.random.key(self.cfg.seed)
    for i, batch in enumerate(self.held_out):
      b, t_frames = batch["latents"].shape[:2]
      mask = conditioning.frame_mask(self.cfg.cond_mode, t_frames)
      mask = np.broadcast_to(mask[None], (b, t_frames))
      kb = jax.random.fold_in(key, i)
      arrays = {k: jnp.asarray(v) for k, v in batch.items()
                if k in ("latents", "text", "text_mask", "pooled", "micro")}
      for j in range(n):
        kj = jax.random.fold_in(kb, j)
        u = jax.random.uniform(jax.random.fold_in(kj, 0), (b,))
        t = (j + u) / n
        eps = jax.random.normal(jax.random.fold_in(kj, 1), batch["latents"].shape)
        per = np.asarray(fn(state, arrays, eps, t, jnp.asarray(mask)))
        sums[j] += per.sum()
        counts[j] += b
    out = {f"val/loss_t{j / n:.2f}-{(j + 1) / n:.2f}": float(sums[j] / counts[j]) for j in range(n)}
    out["val/loss"] = float(sums.sum() / counts.sum())
    return out

  def samples(self, model: nnx.Module) -> dict[str, np.ndarray]:
    """Fixed samples as uint8 videos [T, H, W, 3]: t2v per prompt, ti2v on held-out frames."""
    from stiv_jax.tasks import TaskRunner
    scfg = sampling.SamplerConfig(steps=self.cfg.sample_steps, guidance=self.cfg.guidance)
    sampler = sampling.Sampler(model, scfg)
    runner = TaskRunner(sampler, self.text_encoder, self.vae, self.config.model,
                        frame_stride=self.cfg.frame_stride)
    out = {}
    t2v = runner.run("t2v", list(self.cfg.prompts), seed=self.cfg.sample_seed)
    for i, (prompt, video) in enumerate(zip(self.cfg.prompts, runner.decode(t2v))):
      out[f"samples/t2v_{i}_{prompt.replace(' ', '_')}"] = video_io.to_uint8(video)
    k = min(self.cfg.ti2v_samples, self.held_out[0]["latents"].shape[0])
    if k:
      batch = self.held_out[0]
      t = int(self.config.model.num_frames)
      mask = conditioning.frame_mask("first", t)
      cond = {"text": batch["text"][:k], "text_mask": batch["text_mask"][:k],
              "pooled": batch["pooled"][:k], "micro": runner.micro(k, t),
              "cond_mask": np.broadcast_to(mask[None], (k, t)).copy(),
              "cond_latents": np.zeros((k, t) + batch["latents"].shape[2:], np.float32)}
      cond["cond_latents"][:, 0] = batch["latents"][:k, 0]
      null = runner.text([""])[1]
      lat = sampler(cond, null, seed=self.cfg.sample_seed)
      for i, video in enumerate(runner.decode(lat)):
        out[f"samples/ti2v_{i}"] = video_io.to_uint8(video)
    return out


def log_to_tensorboard(writer: Any, step: int, losses: Mapping[str, float],
                       videos: Mapping[str, np.ndarray]) -> None:
  """Writes scalars, and each video as an image strip of its frames (no moviepy needed)."""
  for k, v in losses.items():
    writer.add_scalar(k, v, step)
  for k, video in videos.items():
    strip = video_io.contact_sheet([video])
    writer.add_image(k, strip, step, dataformats="HWC")
