"""Training a small KL autoencoder (the diffusers `AutoencoderKL` architecture) on frames.

Users bring a pretrained VAE; the CPU demo has none, so it trains a tiny one on its own footage
(`stiv-train-vae`). The loss is the pixel mean squared error of a posterior sample's
reconstruction plus `kl_weight` times the KL to N(0, I) per latent element: the posterior noise
keeps nearby latents decoding to nearby frames, so a DiT's imperfect latents still decode to
clean frames. No perceptual or adversarial loss: the synthetic corpus is flat colors.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from stiv_jax.models.encoders import vae as vae_lib


@dataclasses.dataclass(frozen=True)
class VAETrainConfig:
  """Every choice of a VAE training run (the CLI's flags)."""

  # Defaults: the run measured on the demo corpus (WORKSPACE.md, "Demo quality", sixth session:
  # 64 px frames, ~4 min on 2 cores, round-trip MSE 0.028).
  block_out_channels: tuple[int, ...] = (8, 16, 32, 32)   # spatial factor 2 ** (len - 1)
  layers_per_block: int = 1
  latent_channels: int = 8
  norm_num_groups: int = 8
  mid_block_add_attention: bool = True
  steps: int = 1600
  batch_size: int = 8
  lr: float = 3e-3
  warmup_steps: int = 20
  kl_weight: float = 1e-3
  seed: int = 0

  def kl_config(self, scaling_factor: float = 1.0, shift_factor: float = 0.0
                ) -> vae_lib.KLConfig:
    """The architecture (with the latent statistics measured after training)."""
    return vae_lib.KLConfig(
        block_out_channels=tuple(int(c) for c in self.block_out_channels),
        layers_per_block=int(self.layers_per_block), latent_channels=int(self.latent_channels),
        norm_num_groups=int(self.norm_num_groups),
        mid_block_add_attention=bool(self.mid_block_add_attention),
        scaling_factor=float(scaling_factor), shift_factor=float(shift_factor))

  def validate(self) -> None:
    """Names the bad field."""
    if not self.block_out_channels or min(self.block_out_channels) < 1:
      raise ValueError(f"block_out_channels: need positive widths, got {self.block_out_channels}")
    bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
    if bad:
      raise ValueError(f"norm_num_groups: {self.norm_num_groups} does not divide the widths "
                       f"{bad} of block_out_channels")
    for name in ("layers_per_block", "latent_channels", "steps", "batch_size"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
    if self.lr <= 0 or self.kl_weight < 0:
      raise ValueError(f"lr must be > 0 and kl_weight >= 0, got {self.lr}, {self.kl_weight}")


def vae_loss(model: vae_lib.AutoencoderKL, frames: jax.Array, key: jax.Array,
             kl_weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Frames [N, H, W, 3] in [-1, 1] -> (loss, metrics): reconstruction MSE of a posterior
  sample plus kl_weight x the mean per-element KL(q(z|x) || N(0, I))."""
  mean, logvar = model.encode_moments(frames)
  z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
  recon = model.decode(z)
  mse = jnp.mean(jnp.square(recon - frames))
  kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return mse + kl_weight * kl, {"mse": mse, "kl": kl}


def make_train_step(graphdef, tx: optax.GradientTransformation, kl_weight: float) -> Callable:
  """A jitted pure step: (params, opt_state, frames, key) -> (params, opt_state, metrics)."""

  def step(params, opt_state, frames, key):
    def loss_fn(p):
      return vae_loss(nnx.merge(graphdef, p), frames, key, kl_weight)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, {"loss": loss, **metrics}

  return jax.jit(step, donate_argnums=(0, 1))


def frame_batches(frames: np.ndarray, batch_size: int, seed: int) -> Iterator[np.ndarray]:
  """Endless seeded epochs over frames [N, H, W, 3] (float, [-1, 1]), batch_size at a time."""
  rng = np.random.default_rng(seed)
  n = frames.shape[0]
  if n < batch_size:
    raise ValueError(f"batch_size: {batch_size} is more than the {n} training frames")
  while True:
    order = rng.permutation(n)
    for lo in range(0, n - batch_size + 1, batch_size):
      yield frames[order[lo:lo + batch_size]]


def latent_statistics(model: vae_lib.AutoencoderKL, frames: np.ndarray, batch: int = 64
                      ) -> tuple[float, float]:
  """(mean, std) of the posterior means over `frames`: shift_factor = mean and
  scaling_factor = 1 / std give the DiT unit-variance latents (as diffusers' VAEs record)."""
  graphdef, state = nnx.split(model)
  enc = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode_moments(x)[0])
  zs = [np.asarray(enc(state, frames[i:i + batch])) for i in range(0, len(frames), batch)]
  z = np.concatenate(zs).astype(np.float64)
  return float(z.mean()), float(z.std())


def train_vae(frames: np.ndarray, cfg: VAETrainConfig, log: Callable[[str], None] = print
              ) -> tuple[vae_lib.AutoencoderKL, dict]:
  """Trains an AutoencoderKL on frames [N, H, W, 3] in [-1, 1]; -> (model whose config holds
  the measured scaling and shift factors, summary)."""
  cfg.validate()
  frames = np.asarray(frames, np.float32)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"frames: expected [N, H, W, 3], got {frames.shape}")
  f = 2 ** (len(cfg.block_out_channels) - 1)
  if frames.shape[1] % f or frames.shape[2] % f:
    raise ValueError(f"frames: size {frames.shape[1]}x{frames.shape[2]} is not a multiple of "
                     f"the spatial factor {f} of block_out_channels {cfg.block_out_channels}")
  model = vae_lib.AutoencoderKL(cfg.kl_config(), rngs=nnx.Rngs(params=cfg.seed))
  graphdef, params = nnx.split(model)
  warmup = min(int(cfg.warmup_steps), cfg.steps // 2)
  schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(cfg.steps, warmup + 1),
                                                cfg.lr * 0.05)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
  opt_state = tx.init(params)
  step = make_train_step(graphdef, tx, cfg.kl_weight)
  batches = frame_batches(frames, cfg.batch_size, cfg.seed)
  key = jax.random.key(cfg.seed)
  start, first = time.perf_counter(), {}
  for i in range(cfg.steps):
    params, opt_state, m = step(params, opt_state, next(batches), jax.random.fold_in(key, i))
    if i == 0 or (i + 1) % max(cfg.steps // 10, 1) == 0:
      m = {k: float(v) for k, v in m.items()}
      first = first or m
      log(f"vae step {i + 1}/{cfg.steps}: mse {m['mse']:.5f} kl {m['kl']:.3f} "
          f"({time.perf_counter() - start:.0f} s)")
  model = nnx.merge(graphdef, params)
  shift, std = latent_statistics(model, frames[: min(len(frames), 1024)])
  model.cfg = cfg.kl_config(scaling_factor=1.0 / max(std, 1e-6), shift_factor=shift)
  summary = {"steps": cfg.steps, "seconds": time.perf_counter() - start,
             "first_mse": first.get("mse"), "final_mse": m["mse"], "final_kl": m["kl"],
             "latent_mean": shift, "latent_std": std}
  return model, summary
