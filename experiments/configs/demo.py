"""The CPU demo (`make demo`): the small STIV on the synthetic corpus, T2V + TI2V, a few minutes.

Argument (comma-separated, optional): `runlocal` (a few steps, frequent checkpoints),
`masked0` (mask ratio 0), `tiny` (the unit-test model: 'small' size, latents [4, 8, 8, 4], text
dim 16, 32x32 px with the pixel VAE factor 4). Every section below is the config schema of `stiv-train`; stage configs
(experiments/configs/*.py) build on `base_train_config()` and replace fields.

Schema:
  seed                      parameter init seed and the per-step randomness (t, noise, conditions)
  model                     common.model_config(...) (model issue); latent [T, H, W, C] must match data
  vae, text                 frozen encoder sections (the train step needs the text encoder's empty prompt)
  data.path                 folder of shards (stiv-prep synth-shards --output=DIR writes DIR/shards)
  data.batch_size           GLOBAL batch; each process loads batch_size / process_count
  data.num_frames, data.*   passed to stiv_jax.data.pipeline.make_iterator
  flow.t_sampler            uniform | logit_normal (logit_mean, logit_std) | shifted (shift)
  flow.mae_weight           weight of the MSE on MaskDiT-dropped tokens (0 = off; MaskDiT used 0.1)
  conditioning.tasks        {task: weight}; tasks none/first/first_k/first_last/every_other/
                            keyframe_stride/multiview (k, stride); text_dropout, image_dropout
  optimizer                 adafactor: lr, schedule constant|cosine (decay_steps, min_lr_ratio),
                            warmup_steps, beta1, beta2 (cap of the decay schedule), decay_pow,
                            clip_norm (global), update_clip, eps, min_dim_size_to_factor,
                            multiply_by_parameter_scale, weight_decay, ema_decay, ema_warmup
  train.num_steps           total optimizer steps; train.max_bad_steps: stop after K non-finite in a row;
                            train.fast_compile: unoptimised XLA code, quick compiles (tests)
  mesh.data/fsdp/tensor     mesh axis sizes (-1 = all remaining devices); mesh.rules: logical -> axes
  checkpoint                every_steps, keep_last, keep_every (0 = off), async_save
  metrics                   every_steps, tensorboard, jsonl, peak_flops_per_device (0 = table/measured)
  init                      progressive init from another stage (stiv_jax/train/stages.py): sources
                            [{path, include, exclude, use_ema}], rope_from_config, allow_missing
"""
from __future__ import annotations

import ml_collections

from experiments.configs import common
from stiv_jax import sharding


def base_train_config() -> ml_collections.ConfigDict:
  """Every non-model section with the paper's defaults (STIV_SPEC.md section 2)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.path = ""
  c.data.batch_size = 8
  c.data.shuffle = True
  c.data.seed = 0
  c.data.worker_count = 0
  c.data.prefetch = 2
  c.data.num_epochs = -1        # -1: repeat forever

  c.flow = ml_collections.ConfigDict()
  c.flow.t_sampler = "uniform"
  c.flow.logit_mean = 0.0
  c.flow.logit_std = 1.0
  c.flow.shift = 1.0
  c.flow.t_eps = 0.0
  c.flow.mae_weight = 0.0

  c.conditioning = ml_collections.ConfigDict()
  c.conditioning.tasks = ml_collections.ConfigDict({"none": 0.5, "first": 0.5})  # STIV: T2V + TI2V
  c.conditioning.k = 4
  c.conditioning.stride = 2
  c.conditioning.text_dropout = 0.1
  c.conditioning.image_dropout = 0.08

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adafactor"
  c.optimizer.lr = 2e-4
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 1000
  c.optimizer.decay_steps = 400_000
  c.optimizer.min_lr_ratio = 0.0
  c.optimizer.beta1 = 0.9
  c.optimizer.beta2 = 0.999
  c.optimizer.decay_pow = 0.8
  c.optimizer.eps = 1e-30
  c.optimizer.clip_norm = 1.0
  c.optimizer.update_clip = 1.0
  c.optimizer.min_dim_size_to_factor = 128
  c.optimizer.multiply_by_parameter_scale = False
  c.optimizer.weight_decay = 0.0
  c.optimizer.ema_decay = 0.9999
  c.optimizer.ema_warmup = False

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 400_000
  c.train.max_bad_steps = 20
  c.train.fast_compile = False  # True: XLA backend opt level 0 (quick compiles for tests/smoke)

  c.mesh = sharding.mesh_config(data=-1, fsdp=1, tensor=1)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep_last = 3
  c.checkpoint.keep_every = 0
  c.checkpoint.async_save = True

  c.metrics = ml_collections.ConfigDict()
  c.metrics.every_steps = 50
  c.metrics.tensorboard = True
  c.metrics.jsonl = True
  c.metrics.peak_flops_per_device = 0.0   # 0: from the device table (CPU: measured matmul rate)

  c.init = ml_collections.ConfigDict()
  c.init.sources = []           # [{'path', 'include', 'exclude', 'use_ema'}] (stages.py)
  c.init.rope_from_config = ""  # source workdir whose model sizes set the RoPE scale factors
  c.init.allow_missing = ""     # regex of target params that may stay freshly initialised
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo config: 64x64 px, 16 frames, pixel VAE factor 4 -> latents [16, 16, 16, 4]."""
  args = set(filter(None, (arg or "").split(",")))
  unknown = args - {"runlocal", "masked0", "tiny"}
  if unknown:
    raise ValueError(f"demo.py: unknown config argument(s) {sorted(unknown)}")
  c = base_train_config()
  c.model = common.model_config(
      "demo", num_frames=16, latent_height=16, latent_width=16, latent_channels=4,
      text_dim=64, remat="none")
  c.vae = common.vae_config("pixel", spatial_factor=4, latent_channels=4)
  c.text = common.text_config("hash", dim=64, max_length=16)
  c.data.path = "workdir/demo_data/prep/shards"  # make demo: stiv-prep run --output=workdir/demo_data/prep
  c.data.batch_size = 8
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 20
  c.optimizer.ema_decay = 0.999
  c.optimizer.ema_warmup = True
  c.optimizer.min_dim_size_to_factor = 64
  c.train.num_steps = 300
  c.checkpoint.every_steps = 100
  c.checkpoint.keep_last = 2
  c.checkpoint.keep_every = 200
  c.metrics.every_steps = 10
  if "tiny" in args:
    c.model = common.model_config(
        "small", num_frames=4, latent_height=8, latent_width=8, latent_channels=4, text_dim=16,
        remat="none")
    c.text = common.text_config("hash", dim=16, max_length=8)
    c.optimizer.min_dim_size_to_factor = 16
    c.train.fast_compile = True
  if "masked0" in args:
    c.model.mask_ratio = 0.0
  if "runlocal" in args:
    c.train.num_steps = 6
    c.checkpoint.every_steps = 2
    c.metrics.every_steps = 2
  return c
