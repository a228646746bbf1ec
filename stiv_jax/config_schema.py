"""The config schema of `stiv-train`, `stiv-sample` and `stiv-prep`: every section, every field,
one default each.

Stage configs (experiments/configs/) start from `train_config()` and replace fields; the encode
settings of the video pipeline (data_pipeline/config.py) use `vae_config` / `text_config` too, so
a field means the same thing and has the same default everywhere. Fields whose default is None
(`optional()`) are taken from elsewhere when unset: the VAE's scaling/shift factors from its own
checkpoint at prep time and from the shards' latent contract at train time
(stiv_jax/data/contract.py), which then records them in the run's config.

Sections (`describe(train_config())` prints every field with its default):
  seed          parameter init seed and the per-step randomness (t, noise, conditions)
  model         the STIV DiT (model_config); latent [T, H, W, C] is the default bucket
  vae, text     frozen encoders ('pixel'/'kl', 'hash'/'clip'/'t5'); checked against the shards
  data          stiv_jax.data.pipeline.default_config() plus the GLOBAL batch_size and the seed
  flow          t_sampler uniform | logit_normal (logit_mean, logit_std) | shifted (shift),
                t_eps, mae_weight (MSE on MaskDiT-dropped tokens, 0 = off), loss_weighting
                none | data ((1 - t)^2 per example: the clean-latent error)
  conditioning  tasks {task: weight} over none/first/first_k/first_last/every_other/
                keyframe_stride/multiview (k, stride); text_dropout, image_dropout
  optimizer     name adafactor | adamw; lr, schedule constant|cosine (decay_steps,
                min_lr_ratio), warmup_steps, beta1, beta2 (adafactor: cap of the decay
                schedule; adamw: second-moment decay), clip_norm, weight_decay, ema_decay,
                ema_warmup; adafactor: decay_pow, update_clip, eps, min_dim_size_to_factor,
                factor_rule logical|shape|none (stiv_jax/train/optimizer.py),
                multiply_by_parameter_scale; adamw: adam_eps
  train         num_steps, max_bad_steps (stop after K non-finite in a row), fast_compile
                (unoptimised XLA, quick compiles), compile_ahead (every bucket before step 1)
  mesh          data/fsdp/tensor axis sizes (-1 = the rest); rules: logical -> mesh axes
  checkpoint    every_steps, keep_last, keep_every (0 = off), async_save
  metrics       every_steps, tensorboard, jsonl, peak_flops_per_device (0 = table/measured)
  init          progressive init (stiv_jax/train/stages.py): sources (a tuple of
                {path, include, exclude, use_ema}), rope_from_config, allow_missing
  lora          LoRA fine-tuning (stiv_jax/lora.py): rank (0 = off), alpha, dropout, targets
                (regex over parameter names); the base comes from init.sources, frozen
  sampling      stiv_jax.sampling.SamplerConfig: solver, steps, schedule, shift, guidance...
  eval          during-training evaluation every eval.every_steps (0 = off): val loss at fixed
                t on the data.holdout records, a sample grid, synthetic_score
"""
from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

# name -> (blocks, hidden, heads); head dim is 64 at every paper size (STIV_SPEC.md section 1).
MODEL_SIZES = {
    "XL": (28, 1152, 18),
    "XXL": (38, 1536, 24),
    "M": (46, 3072, 48),
    "demo": (4, 128, 2),   # CPU demo (make demo)
    "small": (2, 64, 2),   # unit tests
    "mid": (8, 512, 8),    # stiv-bench model / train-step
}
VAE_KINDS = ("pixel", "kl")
TEXT_KINDS = ("hash", "clip", "t5")


def optional(value: Any = None) -> config_dict.FieldReference:
  """A field that may be None ('not set: take it from elsewhere'); `--config.x=None` works."""
  return config_dict.FieldReference(value, field_type=object)


def _apply(c: ml_collections.ConfigDict, overrides: dict[str, Any], section: str) -> None:
  for k, v in overrides.items():
    if k not in c:
      raise ValueError(f"{section}.{k}: unknown field; expected one of {sorted(c.keys())}")
    setattr(c, k, v)


def model_config(size: str = "XL", **overrides) -> ml_collections.ConfigDict:
  """The `model` section for a named size; keyword overrides replace fields."""
  if size not in MODEL_SIZES:
    raise ValueError(f"model size {size!r} unknown; expected one of {sorted(MODEL_SIZES)}")
  depth, hidden, heads = MODEL_SIZES[size]
  c = ml_collections.ConfigDict()
  c.size = size
  # Latent video the model sees (after the frozen VAE): frames, height, width, channels. With
  # several shard buckets this is the default bucket (sampling size, compile plans).
  c.latent_channels = 8
  c.num_frames = 20          # latent frames at the base resolution (20 frames, stride 3)
  c.latent_height = 32       # 256 px / VAE factor 8
  c.latent_width = 32
  c.patch_t = 2              # temporal patch ("cubify"); 1 for a pure image model
  c.patch_s = 2              # spatial patch
  c.patch_inflation = "mean"  # T2I -> T2V kernel inflation: 'mean' (copy / patch_t) or 'center'
  # Transformer.
  c.depth = depth
  c.hidden = hidden
  c.heads = heads
  c.mlp_ratio = 4.0
  c.mlp_activation = "gelu_tanh"
  c.temporal_attention = True   # False: an image (T2I) model
  c.cross_attention = True
  c.qk_norm = True
  c.sandwich_norm = True
  c.norm_eps = 1e-6
  # Conditioning.
  c.text_dim = 1280          # text encoder width (the paper's CLIP-style tower: 1280)
  c.freq_dim = 256           # sinusoidal embedding size of time and micro-conditions
  c.micro_conditions = True
  # Output: 'velocity' (the paper: the network's output is v = x1 - eps) or 'data' (the network
  # predicts the clean latents x1 and returns v = (x1_hat - x_t) / max(1 - t, prediction_min_gap),
  # so the noise is removed analytically; the CPU demo, pixel-space stand-in latents).
  c.prediction = "velocity"
  c.prediction_min_gap = 0.05
  # RoPE: positions are multiplied by these factors (old_len / new_len to interpolate).
  c.rope_theta = 10000.0
  c.rope_scale_t = 1.0
  c.rope_scale_s = 1.0
  # Absolute positions added to the patch tokens: 'none' (the paper: RoPE only, relative) or
  # 'sincos' (a fixed frame/row/column table, no parameters; the CPU demo uses it: from pure
  # noise a RoPE-only network knows a token's place only from the edges of attention. Measured
  # at 300-400 demo steps it changed little; WORKSPACE.md "Demo quality").
  c.abs_pos_embed = "none"
  # MaskDiT.
  c.mask_ratio = 0.5
  c.mask_decoder_depth = 2
  # Compute.
  c.param_dtype = "float32"
  c.dtype = "float32"        # compute dtype: 'float32' or 'bfloat16'
  c.remat = "save_self_attn"  # none | full | save_self_attn | save_dots_no_batch
  c.scan_blocks = True
  # Attention kernel (stiv_jax.models.attention.attend): xla | cudnn (GPU flash attention via
  # jax.nn.dot_product_attention) | splash (TPU Pallas kernel; interpreted off TPU) | auto
  # (splash on TPU, jax's own choice elsewhere).
  c.attention_impl = "xla"
  # Modulation: 'shared' (adaLN-single, PixArt-alpha: one projection of the condition vector,
  # a learned table per block) | 'per_block' (DiT: each block its own SiLU + Linear).
  c.adaln = "shared"
  _apply(c, overrides, "model")
  return c


def vae_config(kind: str = "pixel", **overrides) -> ml_collections.ConfigDict:
  """The frozen VAE: 'pixel' stand-in (tests, demo; NOT a learned model) or 'kl' (a local
  diffusers AutoencoderKL folder or .safetensors)."""
  c = ml_collections.ConfigDict()
  c.kind = kind
  c.path = ""                # kl: diffusers folder or .safetensors ('' at train time: the shards')
  c.config = ""              # kl: config.json when `path` is a bare .safetensors file
  c.spatial_factor = optional()   # pixel: pooling factor (None: 8); kl: None = the checkpoint's
  c.latent_channels = optional()  # pixel: RGB + zero channels (None: 4); kl: None = checkpoint's
  c.scaling_factor = optional()  # latents = (z - shift) * scaling; None: the checkpoint's (1 pixel)
  c.shift_factor = optional()    # None: the checkpoint's (0 for pixel)
  c.batch_size = 16          # frames per VAE call
  c.sample = False           # kl: sample the posterior instead of its mean
  c.seed = 0                 # kl: key of posterior samples
  c.dtype = "float32"        # kl compute dtype: float32 | bfloat16
  _apply(c, overrides, "vae")
  return c


# text.pooling=None means the kind's own: CLIP pools its EOS token (as CLIP was trained); T5
# has no pooled output, so the mean over real tokens; the hash stand-in averages its words.
TEXT_POOLING = ("eos", "mean")
TEXT_DEFAULT_POOLING = {"hash": "mean", "clip": "eos", "t5": "mean"}


def text_config(kind: str = "hash", **overrides) -> ml_collections.ConfigDict:
  """The frozen text encoder: 'hash' stand-in (NOT a learned model), 'clip' (a CLIP-style
  causal tower) or 't5' (a T5 v1.1 / mT5 / UMT5 encoder), from local files."""
  c = ml_collections.ConfigDict()
  c.kind = kind
  c.path = ""                # clip/t5: transformers folder or .safetensors
  c.config = ""              # config.json when `path` is a bare .safetensors file
  c.tokenizer = ""           # '' = beside the weights (clip: tokenizer.json or vocab.json +
                             # merges.txt; t5: spiece.model); or a SentencePiece .model,
                             # a tokenizer.json, or a folder holding tokenizer files
  c.dim = 1280               # width of the token embeddings (must equal model.text_dim)
  c.max_length = 77          # tokens per caption, padded / truncated (special tokens kept)
  c.pad_id = optional()      # None: the tokenizer's pad id
  c.pooling = optional()     # eos | mean; None: TEXT_DEFAULT_POOLING[kind]
  c.batch_size = 16          # captions per encoder call
  c.dtype = "float32"        # compute dtype: float32 | bfloat16
  _apply(c, overrides, "text")
  return c


# CPU presets with the stand-in encoders: (model size, latent frames, latent side, channels,
# text width, text length, pixel-VAE factor). 'demo' is `make demo`'s model (64 px, 16 frames);
# 'tiny' is the unit-test model (32 px, 4 frames). Stage configs' `local`/`tiny` runs and the
# benchmarks use them too.
CPU_PRESETS = {
    "demo": ("demo", 16, 16, 4, 64, 16, 4),
    "tiny": ("small", 4, 8, 4, 16, 8, 4),
}


def cpu_preset(name: str, **model_overrides) -> tuple[ml_collections.ConfigDict, ...]:
  """(model, vae, text) sections of a CPU preset (stand-in encoders; remat off)."""
  if name not in CPU_PRESETS:
    raise ValueError(f"CPU preset {name!r} unknown; expected one of {sorted(CPU_PRESETS)}")
  size, frames, side, channels, text_dim, text_len, factor = CPU_PRESETS[name]
  model = model_config(size, **{
      "num_frames": frames, "latent_height": side, "latent_width": side,
      "latent_channels": channels, "text_dim": text_dim, "remat": "none", **model_overrides})
  vae = vae_config("pixel", spatial_factor=factor, latent_channels=channels)
  text = text_config("hash", dim=text_dim, max_length=text_len)
  return model, vae, text


def complete_section(name: str, cfg: Any) -> ml_collections.ConfigDict:
  """A complete encoder section ('vae' or 'text'): the schema's defaults for its kind, replaced
  by the fields `cfg` (a ConfigDict or dict) sets; an unknown kind or field is an error."""
  builder, kinds, default_kind = {"vae": (vae_config, VAE_KINDS, "pixel"),
                                  "text": (text_config, TEXT_KINDS, "hash")}[name]
  fields = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  kind = fields.pop("kind", default_kind)
  if kind not in kinds:
    raise ValueError(f"{name}.kind: unknown encoder kind {kind!r}; expected one of {list(kinds)}")
  return builder(kind, **fields)


def data_config(**overrides) -> ml_collections.ConfigDict:
  """The `data` section: the input pipeline's fields plus the global batch and shuffle seed."""
  from stiv_jax.data import pipeline
  c = pipeline.default_config()
  c.batch_size = 8           # GLOBAL batch; each process loads batch_size / process_count
  c.seed = 0                 # shuffle seed (the epoch plan is a function of it)
  _apply(c, overrides, "data")
  return c


def sampling_config(**overrides) -> ml_collections.ConfigDict:
  """The `sampling` section: stiv_jax.sampling.SamplerConfig's fields and defaults (the paper's:
  Euler, 50 steps, JIT-CFG 7.5 with renormalisation); stiv-sample and the evaluations read it."""
  import dataclasses
  from stiv_jax import sampling
  c = ml_collections.ConfigDict(dataclasses.asdict(sampling.SamplerConfig()))
  _apply(c, overrides, "sampling")
  return c


def eval_config(**overrides) -> ml_collections.ConfigDict:
  """The `eval` section: the during-training evaluation (stiv_jax.eval.during_training
  .EvalConfig; every_steps 0 = off). Its held-out records are data.holdout."""
  import dataclasses
  from stiv_jax.eval.during_training import EvalConfig
  c = ml_collections.ConfigDict(dataclasses.asdict(EvalConfig()))
  _apply(c, overrides, "eval")
  return c


def train_config() -> ml_collections.ConfigDict:
  """Every section of a `stiv-train` config, with the paper's defaults (STIV_SPEC.md section 2)."""
  from stiv_jax import sharding
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = model_config("XL")
  c.vae = vae_config("pixel")
  c.text = text_config("hash")
  c.data = data_config()

  c.flow = ml_collections.ConfigDict()
  c.flow.t_sampler = "uniform"
  c.flow.logit_mean = 0.0
  c.flow.logit_std = 1.0
  c.flow.shift = 1.0
  c.flow.t_eps = 0.0
  c.flow.mae_weight = 0.0
  c.flow.loss_weighting = "none"   # none (the paper) | data: (1 - t)^2, the clean-latent error

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
  c.optimizer.factor_rule = "logical"   # logical (T5X-style axes) | shape (optax) | none
  c.optimizer.adam_eps = 1e-8           # adamw only
  c.optimizer.multiply_by_parameter_scale = False
  c.optimizer.weight_decay = 0.0
  c.optimizer.ema_decay = 0.9999
  c.optimizer.ema_warmup = False

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 400_000
  c.train.max_bad_steps = 20
  c.train.fast_compile = False  # True: XLA backend opt level 0 (quick compiles for tests/smoke)
  c.train.compile_ahead = True  # compile every bucket's step before step 1 (else on first sight)

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
  c.init.sources = ()           # ({'path', 'include', 'exclude', 'use_ema'}, ...) (stages.py)
  c.init.rope_from_config = ""  # source workdir whose model sizes set the RoPE scale factors
  c.init.allow_missing = ""     # regex of target params that may stay freshly initialised

  c.lora = lora_config()
  c.sampling = sampling_config()
  c.eval = eval_config()
  return c


# Attention q/k/v/o and FFN kernels of the main and decoder block stacks.
LORA_TARGETS = r"^(blocks|decoder)/((spatial|temporal|cross)/[qkvo]|fc[12])/kernel$"


def lora_config(**overrides) -> ml_collections.ConfigDict:
  """The `lora` section (stiv_jax/lora.py): rank 0 or empty targets = off (full training)."""
  c = ml_collections.ConfigDict()
  c.rank = 0                 # adapter rank r; 0 = off
  c.alpha = 16.0             # effective kernel W + (alpha / r) A B
  c.dropout = 0.0            # drop rate of the adapters' input features
  c.targets = LORA_TARGETS   # regex searched in parameter names ('blocks/spatial/q/kernel')
  _apply(c, overrides, "lora")
  return c


DEMO_NUM_VIDEOS = 512   # videos of the demo corpus (make demo's DEMO_VIDEOS, stiv-bench demo-quality)
# The demo's clips: 8 latent frames taken every 6th frame of a 48-frame shot (data_pipeline's
# 'demo' encode setting reads these), so a clip shows its shape's whole motion.
DEMO_FRAMES = 8
DEMO_STRIDE = 6
DEMO_ARGS = ("runlocal", "masked0", "tiny")


def demo_train_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The CPU demo recipe (`make demo`, `stiv-bench demo-quality`): the 'demo' preset on the
  synthetic corpus, T2V + TI2V, what a 2-core CPU learns shape and motion with in minutes
  (WORKSPACE.md, "Demo quality", has the evidence for each choice). The paper's defaults stay
  those of train_config(); this recipe replaces them.

  arg (comma-separated, optional): runlocal (a few steps), masked0 (mask ratio 0), tiny (the
  unit-test model, 32 px, 4 frames, quick compiles, with the paper's model defaults: masked,
  velocity output; no held-out split and no during-training evaluation).
  """
  args = set(filter(None, (arg or "").split(",")))
  unknown = args - set(DEMO_ARGS)
  if unknown:
    raise ValueError(f"demo config: unknown argument(s) {sorted(unknown)}; expected some of "
                     f"{DEMO_ARGS}")
  c = train_config()
  # Unmasked, and the network predicts the clean latents: with the pixel-space stand-in VAE
  # every bit of latent noise a velocity network fails to pass through is left in the sample.
  # Absolute frame/row/column positions beside RoPE: the recipe's measured runs used them
  # (WORKSPACE.md, "Demo quality"; at 300-400 steps they changed little either way).
  # Two blocks and no decoder blocks (the 'demo' preset has 4 + 2): from pure noise the deep
  # stack learns the caption's layout far slower per step (four clips, trained at t = 0 only:
  # 4 + 2 blocks still at the caption-blind mean, 0.039, after 200 steps; 1 block 0.022 at 200
  # and 0.003 at 300). One block learns direction fastest but never uses the shape word (held-out
  # shape 0.36 at 3500 steps); two blocks at ~9.5 steps/s on 2 idle cores reach direction 1.0 by
  # 4000 steps and draw triangles on request (held-out shape 0.57 at 6000-7000 steps; circles
  # still come out square). WORKSPACE.md, "Demo quality", has the runs.
  c.model, c.vae, c.text = cpu_preset("demo", mask_ratio=0.0, prediction="data",
                                       num_frames=DEMO_FRAMES, abs_pos_embed="sincos",
                                       depth=2, mask_decoder_depth=0)
  c.data.path = "workdir/demo_data/prep/shards"  # make demo: stiv-prep run --output=...prep
  # Batch 4 at lr 2e-3: the same 1000-step quality as batch 8 at lr 1e-3 in half the time
  # (measured on the 4 + 2-block model).
  c.data.batch_size = 4
  c.data.holdout = 16               # records never trained on: the validation loss, TI2V grid
  # Flow times drawn toward the noise end (logit-normal, mean -0.8, std 0.8, as JiT does for
  # x-prediction): the velocity loss of a data-predicting network weighs an x error by
  # 1 / (1 - t)^2, so uniform t spends the network on the clean end and leaves the noise end,
  # where shape, position and direction are decided, under-trained (WORKSPACE.md, "Demo
  # quality": x1 error from pure noise 0.21 -> 0.18, at t = 0.3 0.20 -> 0.10 on one clip).
  c.flow.t_sampler = "logit_normal"
  c.flow.logit_mean = -0.8
  c.flow.logit_std = 0.8
  c.optimizer.lr = 2e-3
  c.optimizer.warmup_steps = 20
  c.optimizer.ema_decay = 0.999
  c.optimizer.ema_warmup = True
  c.optimizer.min_dim_size_to_factor = 64
  c.train.num_steps = 6000
  c.checkpoint.every_steps = 500
  c.checkpoint.keep_last = 2
  c.checkpoint.keep_every = 0
  c.metrics.every_steps = 25
  c.sampling.steps = 25
  c.sampling.guidance = 3.0
  from stiv_jax.eval import synthetic
  c.eval.every_steps = 1000
  c.eval.sample_steps = 12   # the grids at half the final steps: the evaluation stays < 10%
  c.eval.prompts = tuple(synthetic.load_prompts("tune"))
  c.eval.synthetic_score = True
  c.eval.ti2v_samples = 4
  c.eval.max_batches = 2
  c.eval.frame_stride = float(DEMO_STRIDE)   # the samples' stride micro-condition, as trained
  if "tiny" in args:  # the unit-test model with the paper's model defaults (masked, velocity)
    c.model, c.vae, c.text = cpu_preset("tiny")
    c.flow = train_config().flow          # the paper's uniform t, like the model defaults
    c.data.batch_size = 8
    c.optimizer.lr = 1e-3
    c.optimizer.min_dim_size_to_factor = 16
    c.train.fast_compile = True
    c.data.holdout = 0
    c.eval.every_steps = 0
    c.eval.frame_stride = 1.0
  if "masked0" in args:
    c.model.mask_ratio = 0.0
  if "runlocal" in args:
    c.train.num_steps = 6
    c.checkpoint.every_steps = 2
    c.metrics.every_steps = 2
    c.eval.every_steps = 6
    c.eval.prompts = c.eval.prompts[:2]
    c.sampling.steps = 2
    c.eval.sample_steps = 0    # the run's 2
  return c


def describe(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """'section.field = default' lines of every leaf field (for `stiv-train --help`)."""
  lines = []
  for key in sorted(config.keys()):
    value = config[key]
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict) and key != "tasks":
      lines.extend(describe(value, name + "."))
    else:
      shown = dict(value) if isinstance(value, ml_collections.ConfigDict) else value
      lines.append(f"{name} = {shown!r}")
  return lines
