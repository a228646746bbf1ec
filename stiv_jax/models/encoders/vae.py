"""Per-frame KL image autoencoder (the diffusers `AutoencoderKL` architecture) in Flax NNX.

`AutoencoderKL` mirrors the diffusers module tree attribute for attribute, so its parameter
paths are the diffusers checkpoint keys (see weights.key_map). `KLVideoAutoencoder` wraps it
as the project's VideoAutoencoder: jitted, NHWC, chunked frames, scaled/shifted latents.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stiv_jax.models.encoders import identity
from stiv_jax.models.encoders import weights as W

# Deprecated diffusers attention names (old checkpoints such as sd-vae-ft-ema) -> current ones.
LEGACY_ATTENTION_KEYS = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.",
                         ".proj_attn.": ".to_out.0."}
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class KLConfig:
  """Architecture of an AutoencoderKL (the fields of a diffusers config.json that matter)."""

  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  in_channels: int = 3
  out_channels: int = 3
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  scaling_factor: float = 0.18215
  shift_factor: float = 0.0

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  @classmethod
  def from_diffusers(cls, config: dict, source: str) -> "KLConfig":
    """Validates a diffusers AutoencoderKL config.json; names `source` and the bad field."""
    name = config.get("_class_name", "AutoencoderKL")
    if name != "AutoencoderKL":
      raise W.WeightImportError(f"{source}: _class_name {name!r} is not supported; "
                                "only 'AutoencoderKL' (KL autoencoder)")
    blocks = config.get("block_out_channels")
    if not blocks:
      raise W.WeightImportError(f"{source}: missing field 'block_out_channels'")
    n = len(blocks)
    for field, want in (("down_block_types", "DownEncoderBlock2D"),
                        ("up_block_types", "UpDecoderBlock2D")):
      got = list(config.get(field, [want] * n))
      if got != [want] * n:
        raise W.WeightImportError(f"{source}: {field}={got} is not supported; expected "
                                  f"{n} x {want!r}")
    act = config.get("act_fn", "silu")
    if act not in ("silu", "swish"):
      raise W.WeightImportError(f"{source}: act_fn={act!r} is not supported; expected 'silu'")
    shift = config.get("shift_factor")
    return cls(
        block_out_channels=tuple(int(c) for c in blocks),
        layers_per_block=int(config.get("layers_per_block", 1)),
        latent_channels=int(config.get("latent_channels", 4)),
        norm_num_groups=int(config.get("norm_num_groups", 32)),
        in_channels=int(config.get("in_channels", 3)),
        out_channels=int(config.get("out_channels", 3)),
        use_quant_conv=bool(config.get("use_quant_conv", True)),
        use_post_quant_conv=bool(config.get("use_post_quant_conv", True)),
        mid_block_add_attention=bool(config.get("mid_block_add_attention", True)),
        scaling_factor=float(config.get("scaling_factor", 0.18215)),
        shift_factor=float(shift) if shift is not None else 0.0)


# ---------------------------------------------------------------------------------------------
# Modules (attribute names = diffusers names).

_EPS = 1e-6


class ResnetBlock2D(nnx.Module):
  """GroupNorm-SiLU-Conv twice plus a (1x1 conv when widths differ) shortcut."""

  def __init__(self, cin: int, cout: int, groups: int, *, rngs: nnx.Rngs):
    self.norm1 = W.GroupNorm(cin, groups, _EPS)
    self.conv1 = W.Conv2d(cin, cout, 3, padding=1, rngs=rngs)
    self.norm2 = W.GroupNorm(cout, groups, _EPS)
    self.conv2 = W.Conv2d(cout, cout, 3, padding=1, rngs=rngs)
    self.conv_shortcut = W.Conv2d(cin, cout, 1, rngs=rngs) if cin != cout else None

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    if self.conv_shortcut is not None:
      x = self.conv_shortcut(x)
    return x + h


class AttentionBlock(nnx.Module):
  """Single-head spatial self-attention with GroupNorm and a residual (VAE mid-block)."""

  def __init__(self, channels: int, groups: int, *, rngs: nnx.Rngs):
    self.group_norm = W.GroupNorm(channels, groups, _EPS)
    self.to_q = W.Linear(channels, channels, rngs=rngs)
    self.to_k = W.Linear(channels, channels, rngs=rngs)
    self.to_v = W.Linear(channels, channels, rngs=rngs)
    self.to_out = nnx.List([W.Linear(channels, channels, rngs=rngs)])

  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    y = self.group_norm(x).reshape(n, h * w, c)
    q, k, v = self.to_q(y), self.to_k(y), self.to_v(y)
    logits = jnp.einsum("nqc,nkc->nqk", q * (c**-0.5), k,
                        preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # softmax in f32 (upcast).
    o = jnp.einsum("nqk,nkc->nqc", probs, v)
    return x + self.to_out[0](o).reshape(n, h, w, c)


class MidBlock(nnx.Module):
  """ResNet, (attention), ResNet at the lowest resolution."""

  def __init__(self, channels: int, groups: int, add_attention: bool, *, rngs: nnx.Rngs):
    self.resnets = nnx.List([ResnetBlock2D(channels, channels, groups, rngs=rngs)
                             for _ in range(2)])
    self.attentions = nnx.List(
        [AttentionBlock(channels, groups, rngs=rngs)] if add_attention else [])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.resnets[0](x)
    if len(self.attentions):
      x = self.attentions[0](x)
    return self.resnets[1](x)


class Downsample(nnx.Module):
  """Stride-2 3x3 conv with diffusers' asymmetric (0, 1) padding."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.conv = W.Conv2d(channels, channels, 3, stride=2, padding=((0, 1), (0, 1)), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(x)


def upsample_nearest2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling of NHWC."""
  n, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c))
  return x.reshape(n, 2 * h, 2 * w, c)


class Upsample(nnx.Module):
  """Nearest 2x upsampling then a 3x3 conv."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.conv = W.Conv2d(channels, channels, 3, padding=1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(upsample_nearest2x(x))


class EncoderBlock(nnx.Module):
  """`layers` ResNets then an optional downsampler."""

  def __init__(self, cin: int, cout: int, layers: int, groups: int, down: bool, *,
               rngs: nnx.Rngs):
    self.resnets = nnx.List([ResnetBlock2D(cin if i == 0 else cout, cout, groups, rngs=rngs)
                             for i in range(layers)])
    self.downsamplers = nnx.List([Downsample(cout, rngs=rngs)] if down else [])

  def __call__(self, x: jax.Array) -> jax.Array:
    for r in self.resnets:
      x = r(x)
    for d in self.downsamplers:
      x = d(x)
    return x


class DecoderBlock(nnx.Module):
  """`layers` ResNets then an optional upsampler."""

  def __init__(self, cin: int, cout: int, layers: int, groups: int, up: bool, *,
               rngs: nnx.Rngs):
    self.resnets = nnx.List([ResnetBlock2D(cin if i == 0 else cout, cout, groups, rngs=rngs)
                             for i in range(layers)])
    self.upsamplers = nnx.List([Upsample(cout, rngs=rngs)] if up else [])

  def __call__(self, x: jax.Array) -> jax.Array:
    for r in self.resnets:
      x = r(x)
    for u in self.upsamplers:
      x = u(x)
    return x


class Encoder(nnx.Module):
  """Frames [N, H, W, 3] -> moments [N, H/f, W/f, 2C] (mean and log-variance)."""

  def __init__(self, cfg: KLConfig, *, rngs: nnx.Rngs):
    ch, g = cfg.block_out_channels, cfg.norm_num_groups
    self.conv_in = W.Conv2d(cfg.in_channels, ch[0], 3, padding=1, rngs=rngs)
    self.down_blocks = nnx.List([
        EncoderBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, i < len(ch) - 1,
                     rngs=rngs) for i in range(len(ch))])
    self.mid_block = MidBlock(ch[-1], g, cfg.mid_block_add_attention, rngs=rngs)
    self.conv_norm_out = W.GroupNorm(ch[-1], g, _EPS)
    self.conv_out = W.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv_in(x)
    for b in self.down_blocks:
      x = b(x)
    x = self.mid_block(x)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class Decoder(nnx.Module):
  """Latents [N, h, w, C] -> frames [N, h*f, w*f, 3]."""

  def __init__(self, cfg: KLConfig, *, rngs: nnx.Rngs):
    ch, g = cfg.block_out_channels[::-1], cfg.norm_num_groups
    self.conv_in = W.Conv2d(cfg.latent_channels, ch[0], 3, padding=1, rngs=rngs)
    self.mid_block = MidBlock(ch[0], g, cfg.mid_block_add_attention, rngs=rngs)
    self.up_blocks = nnx.List([
        DecoderBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, g, i < len(ch) - 1,
                     rngs=rngs) for i in range(len(ch))])
    self.conv_norm_out = W.GroupNorm(ch[-1], g, _EPS)
    self.conv_out = W.Conv2d(ch[-1], cfg.out_channels, 3, padding=1, rngs=rngs)

  def __call__(self, z: jax.Array) -> jax.Array:
    x = self.mid_block(self.conv_in(z))
    for b in self.up_blocks:
      x = b(x)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
  """The KL autoencoder; `encode_moments` / `decode` work on unscaled latents."""

  def __init__(self, cfg: KLConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    c = cfg.latent_channels
    self.encoder = Encoder(cfg, rngs=rngs)
    self.decoder = Decoder(cfg, rngs=rngs)
    self.quant_conv = W.Conv2d(2 * c, 2 * c, 1, rngs=rngs) if cfg.use_quant_conv else None
    self.post_quant_conv = W.Conv2d(c, c, 1, rngs=rngs) if cfg.use_post_quant_conv else None

  def encode_moments(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """-> (mean, logvar clamped to [-30, 20]) of the diagonal Gaussian posterior."""
    h = self.encoder(x)
    if self.quant_conv is not None:
      h = self.quant_conv(h)
    mean, logvar = jnp.split(h, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def decode(self, z: jax.Array) -> jax.Array:
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z)


# ---------------------------------------------------------------------------------------------
# Pure jitted entry points and the VideoAutoencoder wrapper.


def encode_scaled(graphdef, state, frames: jax.Array, key: jax.Array | None, *,
                  sample: bool, scaling: float, shift: float) -> jax.Array:
  """Frames in [-1, 1] -> (posterior mean or sample - shift) * scaling, float32."""
  model = nnx.merge(graphdef, state)
  mean, logvar = model.encode_moments(frames)
  mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
  z = mean
  if sample:
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, jnp.float32)
  return (z - shift) * scaling


def decode_scaled(graphdef, state, latents: jax.Array, *, scaling: float, shift: float,
                  dtype: Any) -> jax.Array:
  """Scaled latents -> frames (float32, not clipped, as diffusers' decode)."""
  model = nnx.merge(graphdef, state)
  z = (latents / scaling + shift).astype(dtype)
  return model.decode(z).astype(jnp.float32)


def _buckets(batch_size: int) -> list[int]:
  sizes, b = [], 1
  while b < batch_size:
    sizes.append(b)
    b *= 2
  return sizes + [batch_size]


def run_chunked(fn, inputs: Sequence[np.ndarray], batch_size: int, key: jax.Array | None = None):
  """Applies jitted `fn(*chunks[, key])` over the leading axis of `inputs` in chunks of at most
  `batch_size`, zero-padding each chunk up to a power-of-two bucket so at most
  log2(batch_size) + 1 shapes are ever compiled. Returns numpy (a tuple if `fn` returns one)."""
  n_total = inputs[0].shape[0]
  buckets = _buckets(batch_size)
  outs = []
  for start in range(0, n_total, batch_size):
    chunks = [x[start:start + batch_size] for x in inputs]
    n = chunks[0].shape[0]
    size = next(b for b in buckets if b >= n)
    chunks = [np.concatenate([c, np.zeros((size - n, *c.shape[1:]), c.dtype)]) if size > n
              else c for c in chunks]
    extra = () if key is None else (jax.random.fold_in(key, start),)
    out = fn(*chunks, *extra)
    outs.append(jax.tree.map(lambda a: np.asarray(a)[:n], out))
  if not outs:
    raise ValueError("run_chunked: empty batch (N = 0)")
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outs)


class KLVideoAutoencoder:
  """VideoAutoencoder over a frozen AutoencoderKL: jitted per-frame encode/decode."""

  def __init__(self, model: AutoencoderKL, *, scaling_factor: float, shift_factor: float,
               batch_size: int = 8, sample: bool = False, seed: int = 0,
               dtype: str = "float32", weights: dict | None = None):
    if dtype not in _DTYPES:
      raise ValueError(f"vae.dtype: {dtype!r} not supported; expected one of {list(_DTYPES)}")
    if batch_size < 1:
      raise ValueError(f"vae.batch_size: must be >= 1, got {batch_size}")
    cfg = model.cfg
    self.config = cfg
    self.spatial_factor = cfg.spatial_factor
    self.latent_channels = cfg.latent_channels
    self.scaling_factor = float(scaling_factor)
    self.shift_factor = float(shift_factor)
    self.batch_size = int(batch_size)
    self.sample = bool(sample)
    self.dtype_name = dtype
    self.dtype = _DTYPES[dtype]
    self.weights = weights  # identity.weights_identity record of the files it was loaded from
    graphdef, state = nnx.split(model)
    self._graphdef = graphdef
    self._state = jax.tree.map(lambda a: a.astype(self.dtype), state)
    self._key = jax.random.key(seed)
    enc = jax.jit(lambda s, x, k: encode_scaled(
        graphdef, s, x.astype(self.dtype), k, sample=self.sample,
        scaling=self.scaling_factor, shift=self.shift_factor))
    dec = jax.jit(lambda s, z: decode_scaled(
        graphdef, s, z, scaling=self.scaling_factor, shift=self.shift_factor,
        dtype=self.dtype))
    self._encode_jit, self._decode_jit = enc, dec

  def identity(self) -> dict:
    """The latent-contract record of this VAE (weights hash, sizes, factors applied)."""
    return {"kind": "kl", "weights": self.weights, "spatial_factor": self.spatial_factor,
            "latent_channels": self.latent_channels, "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor, "sample": self.sample, "dtype": self.dtype_name}

  # -- validation ------------------------------------------------------------------------------
  def _check(self, x: np.ndarray, name: str, channels: int, factor: int) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if (x.ndim != 4 or x.shape[0] == 0 or x.shape[-1] != channels or x.shape[1] % factor
        or x.shape[2] % factor):
      raise ValueError(
          f"KLVideoAutoencoder.{name}: expected shape [N, H, W, {channels}] (N >= 1) with H, W "
          f"multiples of {factor}, got {x.shape}")
    return x

  # -- VideoAutoencoder ----------------------------------------------------------------------
  def encode(self, frames: np.ndarray, key: jax.Array | None = None) -> np.ndarray:
    """[N, H, W, 3] in [-1, 1] -> [N, H/f, W/f, C] scaled latents (mean, or a sample)."""
    frames = self._check(frames, "encode", self.config.in_channels, self.spatial_factor)
    if key is None:
      self._key, key = jax.random.split(self._key)
    return run_chunked(lambda x, k: self._encode_jit(self._state, x, k), [frames],
                       self.batch_size, key)

  def decode(self, latents: np.ndarray) -> np.ndarray:
    """[N, h, w, C] scaled latents -> [N, h*f, w*f, 3] frames (about [-1, 1])."""
    latents = self._check(latents, "decode", self.latent_channels, 1)
    return run_chunked(lambda z: self._decode_jit(self._state, z), [latents],
                       self.batch_size)

  def encode_video(self, video: np.ndarray, key: jax.Array | None = None) -> np.ndarray:
    """[B, T, H, W, 3] -> [B, T, H/f, W/f, C], time folded into the batch."""
    video = np.asarray(video, np.float32)
    if video.ndim != 5:
      raise ValueError(f"KLVideoAutoencoder.encode_video: expected [B, T, H, W, 3], "
                       f"got {video.shape}")
    b, t = video.shape[:2]
    z = self.encode(video.reshape(b * t, *video.shape[2:]), key)
    return z.reshape(b, t, *z.shape[1:])

  def decode_video(self, latents: np.ndarray) -> np.ndarray:
    """[B, T, h, w, C] -> [B, T, h*f, w*f, 3], time folded into the batch."""
    latents = np.asarray(latents, np.float32)
    if latents.ndim != 5:
      raise ValueError(f"KLVideoAutoencoder.decode_video: expected [B, T, h, w, C], "
                       f"got {latents.shape}")
    b, t = latents.shape[:2]
    x = self.decode(latents.reshape(b * t, *latents.shape[2:]))
    return x.reshape(b, t, *x.shape[1:])


def diffusers_config(cfg: KLConfig) -> dict:
  """The diffusers config.json of an AutoencoderKL architecture (what `from_diffusers` reads)."""
  n = len(cfg.block_out_channels)
  return {"_class_name": "AutoencoderKL", "act_fn": "silu",
          "block_out_channels": list(cfg.block_out_channels),
          "down_block_types": ["DownEncoderBlock2D"] * n,
          "up_block_types": ["UpDecoderBlock2D"] * n,
          "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
          "latent_channels": cfg.latent_channels, "layers_per_block": cfg.layers_per_block,
          "norm_num_groups": cfg.norm_num_groups,
          "mid_block_add_attention": cfg.mid_block_add_attention,
          "use_quant_conv": cfg.use_quant_conv, "use_post_quant_conv": cfg.use_post_quant_conv,
          "scaling_factor": cfg.scaling_factor, "shift_factor": cfg.shift_factor}


def save_autoencoder_kl(model: AutoencoderKL, folder: str) -> str:
  """Writes `model` as a diffusers folder (config.json + diffusion_pytorch_model.safetensors,
  PyTorch layout) that diffusers and `load_autoencoder_kl` both read; files land atomically."""
  import json
  import os
  from safetensors.numpy import save_file
  os.makedirs(folder, exist_ok=True)
  weights = os.path.join(folder, WEIGHT_FILES[0])
  save_file(W.torch_state_dict(model), weights + ".tmp", metadata={"format": "pt"})
  os.replace(weights + ".tmp", weights)
  config = os.path.join(folder, "config.json")
  with open(config + ".tmp", "w") as f:
    json.dump(diffusers_config(model.cfg), f, indent=2, sort_keys=True)
  os.replace(config + ".tmp", config)
  return folder


def load_autoencoder_kl(path: str, config_path: str | None = None) -> AutoencoderKL:
  """Builds an AutoencoderKL from a local diffusers folder or .safetensors (+ config.json)."""
  config, config_file, files, source = W.resolve_checkpoint(path, WEIGHT_FILES, config_path)
  cfg = KLConfig.from_diffusers(config, config_file)
  model = AutoencoderKL(cfg, rngs=nnx.Rngs(params=0))
  W.load_into(model, W.read_safetensors(files), source=source, renames=LEGACY_ATTENTION_KEYS)
  return model


def load_vae(cfg) -> KLVideoAutoencoder:
  """Factory for `vae.kind == 'kl'`: fields path, config, scaling_factor, shift_factor
  (None = from the checkpoint config), batch_size, sample, seed, dtype."""
  path = W.cfg_get(cfg, "path")
  if not path:
    raise ValueError("vae.path: required for vae.kind='kl' (diffusers folder or .safetensors)")
  config_path = W.cfg_get(cfg, "config")
  model = load_autoencoder_kl(path, config_path)
  scaling = W.cfg_get(cfg, "scaling_factor")
  shift = W.cfg_get(cfg, "shift_factor")
  return KLVideoAutoencoder(
      model,
      scaling_factor=model.cfg.scaling_factor if scaling is None else scaling,
      shift_factor=model.cfg.shift_factor if shift is None else shift,
      batch_size=int(W.cfg_get(cfg, "batch_size", 8)),
      sample=bool(W.cfg_get(cfg, "sample", False)),
      seed=int(W.cfg_get(cfg, "seed", 0)),
      dtype=W.cfg_get(cfg, "dtype", "float32"),
      weights=identity.weights_identity(path, [config_path] if config_path else []))
