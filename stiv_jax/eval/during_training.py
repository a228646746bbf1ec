"""What the trainer evaluates every `eval.every_steps`: held-out loss at fixed t, fixed samples.

Everything is deterministic (fixed t values, noise keys, prompts and sampling seeds; the
held-out records are a fixed split of the shards, stiv_jax.data.pipeline.held_out_batches), so
curves and sample grids compare across steps and across runs. `DuringTrainingEval.run(step,
model)` returns scalars (val/loss per t, and with `eval.synthetic_score` the per-attribute
score of the samples, stiv_jax.eval.synthetic) and image strips (a row per sample, a column per
frame); `log_to_tensorboard` writes both with a tensorboardX SummaryWriter.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stiv_jax import conditioning, flow, sampling, video_io

DEFAULT_PROMPTS = ("a red circle moving right", "a blue square moving up",
                   "a yellow triangle moving left", "a green circle moving down")
LOSS_KEYS = ("latents", "text", "text_mask", "pooled", "micro")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Every choice of the during-training evaluation (the `eval` config section)."""

  every_steps: int = 0            # 0: off; else evaluate every N steps (and at the last step)
  num_buckets: int = 4            # val loss at the centres of this many equal t buckets of [0, 1]
  cond_mode: str = "none"         # frame mode of the validation loss (none: T2V, first: TI2V)
  seed: int = 0                   # fixed key of the validation noise
  max_batches: int = 4            # held-out batches used for the validation loss
  prompts: tuple[str, ...] = DEFAULT_PROMPTS  # t2v sample grid
  sample_seed: int = 0
  sample_steps: int = 0           # 0: the run's sampling.steps
  guidance: float = 0.0           # 0: the run's sampling.guidance
  ti2v_samples: int = 2           # TI2V samples from held-out first frames (and their captions)
  frame_stride: float = 1.0       # micro-condition stride of the samples
  synthetic_score: bool = False   # score samples by color/shape/direction (synthetic corpus)

  @classmethod
  def from_config(cls, section: Mapping[str, Any] | None = None) -> "EvalConfig":
    """Builds from an `eval` section; unknown fields and bad values are named."""
    values = dict(section or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise ValueError(f"eval: unknown fields {unknown}; expected some of {sorted(names)}")
    if "prompts" in values:
      values["prompts"] = tuple(values["prompts"])
    cfg = cls(**values)
    for name in ("every_steps", "sample_steps", "ti2v_samples", "max_batches"):
      if getattr(cfg, name) < 0:
        raise ValueError(f"eval.{name}: must be >= 0, got {getattr(cfg, name)}")
    if cfg.num_buckets < 1:
      raise ValueError(f"eval.num_buckets: must be >= 1, got {cfg.num_buckets}")
    if cfg.cond_mode not in conditioning.FRAME_MODES:
      raise ValueError(f"eval.cond_mode: {cfg.cond_mode!r} unknown; expected one of "
                       f"{conditioning.FRAME_MODES}")
    if cfg.every_steps and not cfg.prompts:
      raise ValueError("eval.prompts: empty; the sample grid needs at least one prompt")
    return cfg

  @property
  def t_values(self) -> np.ndarray:
    """The fixed flow times of the validation loss: bucket centres."""
    return (np.arange(self.num_buckets) + 0.5) / self.num_buckets


def _fixed_t_loss(graphdef, state, batch, eps, t, cond_mask):
  """Per-example flow loss [B] at times t [B] (unmasked model, T2V/TI2V by cond_mask)."""
  model = nnx.merge(graphdef, state)
  x1 = batch["latents"]
  xt = flow.noise_latents(x1, eps, t)
  out = model(xt, t, batch["text"], batch["text_mask"], batch["pooled"], batch["micro"],
              cond_mask=cond_mask, cond_latents=x1, mask_key=None)
  keep = jnp.ones(x1.shape[:4], jnp.float32)
  _, per_example = flow.flow_loss(out.velocity, flow.velocity_target(x1, eps), keep, cond_mask)
  return per_example


def bucket_name(t: float) -> str:
  """Scalar name of the validation loss at time t."""
  return f"val/loss_t{t:.3f}"


class DuringTrainingEval:
  """Validation loss at fixed t on held-out batches, and a fixed grid of samples."""

  def __init__(self, config: Any, held_out: Sequence[Mapping[str, np.ndarray]],
               text_encoder: Any, vae: Any, eval_cfg: EvalConfig | None = None):
    """config: the run config (model, sampling, eval); held_out: fixed pipeline batches
    (held_out_batches); an empty list skips the validation loss and the TI2V samples."""
    self.config = config
    self.cfg = eval_cfg or EvalConfig.from_config(config.get("eval", None))
    self.held_out = [dict(b) for b in held_out][: max(self.cfg.max_batches, 1)]
    self.text_encoder = text_encoder
    self.vae = vae
    section = dict(config.get("sampling", {}) or {})
    self.sampler_cfg = sampling.SamplerConfig.from_config(
        section, steps=self.cfg.sample_steps or None, guidance=self.cfg.guidance or None)
    self._loss_fns: dict[Any, Any] = {}
    self._noise: list[list[np.ndarray]] = []
    self.seconds = 0.0  # wall time spent in run()
    if self.cfg.synthetic_score:
      from stiv_jax.eval import synthetic
      bad = [p for p in self.cfg.prompts if None in synthetic.parse_prompt(p).values()]
      if bad:
        raise ValueError(f"eval.prompts: {bad[0]!r} is not a synthetic prompt "
                         "'a {color} {shape} moving {direction}' (eval.synthetic_score)")

  @classmethod
  def from_config(cls, config: Any, batch_size: int | None = None) -> "DuringTrainingEval":
    """Built from the run config: held-out batches of data.holdout, the config's encoders."""
    from stiv_jax.data import pipeline
    from stiv_jax.models.encoders.base import build_text_encoder, build_vae
    cfg = EvalConfig.from_config(config.get("eval", None))
    held = pipeline.held_out_batches(config.data, batch_size=batch_size or config.data.batch_size,
                                     max_batches=max(cfg.max_batches, 1))
    return cls(config, held, build_text_encoder(config.text), build_vae(config.vae), cfg)

  def log(self, step: int, model: nnx.Module, tb_writer: Any = None) -> dict[str, float]:
    """run(), the image strips to TensorBoard (if a writer is given), one console line; returns
    the scalars (the caller writes them with the training metrics)."""
    scalars, images = self.run(step, model)
    if tb_writer is not None:
      for k, image in images.items():
        tb_writer.add_image(k, np.asarray(image), step, dataformats="HWC")
    parts = [f"{k.split('/', 1)[1]}={v:.3g}" for k, v in scalars.items()
             if k.startswith("score/") and not k.endswith("_all")]
    loss = f" val/loss={scalars['val/loss']:.4g}" if "val/loss" in scalars else ""
    print(f"[eval {step}]{loss} {' '.join(parts)} ({scalars['eval/seconds']:.1f} s)", flush=True)
    return scalars

  def due(self, step: int, last_step: int | None = None) -> bool:
    """Whether to evaluate after `step` (every eval.every_steps, and at the last step)."""
    n = self.cfg.every_steps
    return bool(n) and (step % n == 0 or step == last_step)

  def validation_loss(self, model: nnx.Module) -> dict[str, float]:
    """{'val/loss', 'val/loss_t0.125', ...}: every held-out example at each fixed t."""
    if not self.held_out:
      return {}
    graphdef, state = nnx.split(model)
    fn = self._loss_fns.get(graphdef)
    if fn is None:
      fn = jax.jit(lambda s, b, e, t, m: _fixed_t_loss(graphdef, s, b, e, t, m))
      self._loss_fns[graphdef] = fn
    ts = self.cfg.t_values
    sums, count = np.zeros(len(ts)), 0
    key = jax.random.key(self.cfg.seed)
    for i, batch in enumerate(self.held_out):
      b, t_frames = batch["latents"].shape[:2]
      mask = np.broadcast_to(conditioning.frame_mask(self.cfg.cond_mode, t_frames)[None],
                             (b, t_frames))
      arrays = {k: jnp.asarray(batch[k]) for k in LOSS_KEYS}
      if len(self._noise) <= i:  # the same noise at every evaluation
        self._noise.append([jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), j),
                                              batch["latents"].shape) for j in range(len(ts))])
      for j, t in enumerate(ts):
        per = fn(state, arrays, self._noise[i][j], jnp.full((b,), t, jnp.float32),
                 jnp.asarray(mask))
        sums[j] += float(np.asarray(per).sum())
      count += b
    out = {bucket_name(t): float(sums[j] / count) for j, t in enumerate(ts)}
    out["val/loss"] = float(sums.sum() / (count * len(ts)))
    return out

  def samples(self, model: nnx.Module) -> dict[str, tuple[np.ndarray, str]]:
    """Fixed samples {name: (uint8 video [T, H, W, 3], its prompt)}: t2v per prompt and ti2v
    on held-out first frames with their captions, drawn as ONE sampler batch (one compile)."""
    from stiv_jax.tasks import TaskRunner
    sampler = sampling.Sampler(model, self.sampler_cfg)
    runner = TaskRunner(sampler, self.text_encoder, self.vae, self.config.model,
                        frame_stride=self.cfg.frame_stride)
    prompts = list(self.cfg.prompts)
    t = int(self.config.model.num_frames)
    latent = (t, int(self.config.model.latent_height), int(self.config.model.latent_width),
              int(self.config.model.latent_channels))
    text, null = runner.text(prompts)
    n = len(prompts)
    cond = dict(text, micro=runner.micro(n, t), cond_mask=np.zeros((n, t), bool),
                cond_latents=np.zeros((n,) + latent, np.float32))
    names = [(f"t2v/{i:02d}", p) for i, p in enumerate(prompts)]
    batch = self.held_out[0] if self.held_out else None
    k = 0 if batch is None else min(self.cfg.ti2v_samples, batch["latents"].shape[0])
    if k and tuple(batch["latents"].shape[1:]) == latent:
      first = np.zeros((k,) + latent, np.float32)
      first[:, 0] = batch["latents"][:k, 0]
      mask = np.broadcast_to(conditioning.frame_mask("first", t)[None], (k, t))
      extra = {"text": batch["text"][:k], "text_mask": batch["text_mask"][:k],
               "pooled": batch["pooled"][:k], "micro": runner.micro(k, t),
               "cond_mask": mask, "cond_latents": first}
      cond = {key: np.concatenate([np.asarray(cond[key]), np.asarray(extra[key])]).astype(
          np.asarray(cond[key]).dtype) for key in cond}
      captions = batch.get("caption", [""] * k)
      names += [(f"ti2v/{i:02d}", str(captions[i])) for i in range(k)]
    latents = sampler(cond, null, seed=self.cfg.sample_seed)
    videos = runner.decode(latents)
    return {name: (video_io.to_uint8(v), prompt) for (name, prompt), v in zip(names, videos)}

  def run(self, step: int, model: nnx.Module) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(scalars, images) at `step`: val losses, sample scores, and one strip per task."""
    start = time.perf_counter()
    scalars = self.validation_loss(model)
    videos = self.samples(model)
    images = {}
    for task in ("t2v", "ti2v"):
      items = [(k, v) for k, v in videos.items() if k.startswith(task + "/")]
      if not items:
        continue
      images[f"samples/{task}"] = video_io.contact_sheet([v for _, (v, _) in items])
      if self.cfg.synthetic_score:
        from stiv_jax.eval import synthetic
        result = synthetic.score([v for _, (v, _) in items], [p for _, (_, p) in items])
        for key in (*synthetic.ATTRIBUTES, "all", "background"):
          if key in result:
            scalars[f"score/{task}_{key}"] = float(result[key])
    elapsed = time.perf_counter() - start
    self.seconds += elapsed
    scalars["eval/seconds"] = elapsed
    return scalars, images


def for_run(config: Any, lora: bool = False) -> DuringTrainingEval | None:
  """The evaluator of a training run, or None when eval.every_steps is 0. Its cadence must be a
  multiple of metrics.every_steps: its scalars are written with that step's metrics."""
  cfg = EvalConfig.from_config(config.get("eval", None))
  if not cfg.every_steps:
    return None
  if cfg.every_steps % int(config.metrics.every_steps):
    raise ValueError(f"eval.every_steps={cfg.every_steps} must be a multiple of "
                     f"metrics.every_steps={config.metrics.every_steps}")
  if lora:  # SIMPLIFIED: the LoRA state merges differently; its runs are evaluated after
    print("eval.every_steps: skipped for a LoRA run (sample its checkpoints instead)", flush=True)
    return None
  if not int(config.data.get("holdout", 0)):
    print("eval: data.holdout is 0, so no validation loss or TI2V samples (samples only)",
          flush=True)
  return DuringTrainingEval.from_config(config)


def log_to_tensorboard(writer: Any, step: int, scalars: Mapping[str, float],
                       images: Mapping[str, np.ndarray]) -> None:
  """Writes scalars, and each image strip (uint8 [H, W, 3]) as an image."""
  for k, v in scalars.items():
    writer.add_scalar(k, v, step)
  for k, image in images.items():
    writer.add_image(k, np.asarray(image), step, dataformats="HWC")
