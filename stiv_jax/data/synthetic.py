"""The synthetic corpus, pure part: moving coloured shapes on black, and its latent shards.

Each scene is one filled shape (7 colours x 3 shapes) moving at constant speed in one of 4
directions, captioned exactly "a {color} {shape} moving {direction}". A video is one scene, or
two scenes joined by a hard cut; some videos fade out to black. Everything is a pure function
of (seed, video number). Lives in stiv_jax (not data_pipeline) so that evaluation code and the
demo data preparation can reuse the renderer without depending on data_pipeline; the MP4
writer and the `stiv-prep synth` / `synth-shards` CLIs are in data_pipeline/synth.py.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from stiv_jax.data import contract as contract_lib
from stiv_jax.data import schema as schema_lib
from stiv_jax.data import writer as writer_lib

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "magenta": (255, 0, 255), "cyan": (0, 255, 255), "white": (255, 255, 255)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {  # (dx, dy) in image coordinates (y grows down)
    "left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Half-size of the shapes, as fractions of the frame size (drawn uniformly). At 64 px and the
# pixel VAE's factor 4 a shape spans 2.6-3.5 latent pixels of radius: a circle's cut corners
# are whole latent pixels, which at 0.12-0.18 (the first corpus) they were not, and the demo
# model drew every circle as a square (WORKSPACE.md, "Demo quality", sixth session).
RADIUS_RANGE = (0.16, 0.22)
# Share of generated videos holding a hard cut (two scenes): what a video pipeline splits.
CUT_FRACTION = 0.25


def caption_for(color: str, shape: str, direction: str) -> str:
  """The exact caption of a scene."""
  return f"a {color} {shape} moving {direction}"


@dataclasses.dataclass(frozen=True)
class SceneSpec:
  """One shot: a filled shape of half-size `radius` px, centre (x0, y0) at its first frame,
  moving `speed` px per frame in `direction`."""

  color: str
  shape: str
  direction: str
  radius: float
  x0: float
  y0: float
  speed: float

  def __post_init__(self):
    if self.color not in COLORS:
      raise ValueError(f"color: {self.color!r} not in {sorted(COLORS)}")
    if self.shape not in SHAPES:
      raise ValueError(f"shape: {self.shape!r} not in {SHAPES}")
    if self.direction not in DIRECTIONS:
      raise ValueError(f"direction: {self.direction!r} not in {sorted(DIRECTIONS)}")

  @property
  def caption(self) -> str:
    """The exact caption "a {color} {shape} moving {direction}"."""
    return caption_for(self.color, self.shape, self.direction)


def shape_mask(shape: str, cx: float, cy: float, radius: float,
               size: int | tuple[int, int]) -> np.ndarray:
  """[H, W] bool (size = H = W, or (H, W)): pixels, by their centres, inside the shape of
  half-size `radius` centred at (cx, cy). The one definition of the corpus geometry: square of
  side 2r, circle of radius r, apex-up triangle with base and height 2r."""
  h, w = (size, size) if np.isscalar(size) else size
  yy, xx = np.mgrid[0:int(h), 0:int(w)].astype(np.float32) + 0.5
  dx, dy = xx - cx, yy - cy
  if shape == "circle":
    return dx * dx + dy * dy <= radius * radius
  if shape == "square":
    return (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
  if shape == "triangle":  # apex up, base at the bottom; width grows from 0 to 2 * radius
    return (dy <= radius) & (np.abs(dx) <= (dy + radius) / 2)
  raise ValueError(f"shape: {shape!r} not in {SHAPES}")


def render_scene(spec: SceneSpec, *, size: int, num_frames: int) -> np.ndarray:
  """[num_frames, size, size, 3] uint8 frames of one scene (black background)."""
  dx, dy = DIRECTIONS[spec.direction]
  frames = np.zeros((num_frames, size, size, 3), np.uint8)
  color = np.asarray(COLORS[spec.color], np.uint8)
  for t in range(num_frames):
    cx = spec.x0 + dx * spec.speed * t
    cy = spec.y0 + dy * spec.speed * t
    frames[t][shape_mask(spec.shape, cx, cy, spec.radius, size)] = color
  return frames


def sample_scene(rng: np.random.Generator, *, size: int, num_frames: int,
                 exclude_color: str | None = None,
                 radius_range: tuple[float, float] = RADIUS_RANGE) -> SceneSpec:
  """A random scene whose shape (half-size drawn from radius_range x size) stays inside the
  frame while crossing much of it."""
  colors = [c for c in COLORS if c != exclude_color]
  color = colors[rng.integers(len(colors))]
  shape = SHAPES[rng.integers(len(SHAPES))]
  direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
  radius = size * rng.uniform(*radius_range)
  margin = size * 0.03
  lo, hi = margin + radius, size - margin - radius
  travel = (hi - lo) * rng.uniform(0.6, 1.0)
  speed = travel / max(num_frames - 1, 1)
  dx, dy = DIRECTIONS[direction]
  cross = rng.uniform(lo, hi)  # position across the motion
  start = lo if (dx + dy) > 0 else hi  # start on the side the shape moves away from
  x0, y0 = (start, cross) if dx else (cross, start)
  return SceneSpec(color, shape, direction, float(radius), float(x0), float(y0), float(speed))


@dataclasses.dataclass(frozen=True)
class VideoSpec:
  """A video: scenes back to back (hard cuts between them), optional fade to black at the end."""

  scenes: tuple[SceneSpec, ...]
  scene_frames: tuple[int, ...]
  fade_out_frames: int = 0

  @property
  def num_frames(self) -> int:
    """Total frames over all scenes."""
    return sum(self.scene_frames)


def render_video(spec: VideoSpec, *, size: int) -> np.ndarray:
  """[num_frames, size, size, 3] uint8 frames of a whole video (cuts and fade applied)."""
  frames = np.concatenate([render_scene(s, size=size, num_frames=n)
                           for s, n in zip(spec.scenes, spec.scene_frames)])
  f = min(spec.fade_out_frames, frames.shape[0])
  if f:
    gain = 1.0 - np.arange(1, f + 1, dtype=np.float32) / f  # last frame fully black
    tail = frames[-f:].astype(np.float32) * gain[:, None, None, None]
    frames[-f:] = np.round(tail).astype(np.uint8)
  return frames


def sample_video(rng: np.random.Generator, *, size: int, num_frames: int,
                 cut_fraction: float = CUT_FRACTION, fade_fraction: float = 0.25) -> VideoSpec:
  """A random video: two scenes with a hard cut with probability cut_fraction, a fade-out over
  the last quarter with probability fade_fraction (both decided by the rng)."""
  two = num_frames >= 4 and rng.random() < cut_fraction
  fade = rng.random() < fade_fraction
  if two:
    first = num_frames // 2
    lengths = (first, num_frames - first)
    a = sample_scene(rng, size=size, num_frames=lengths[0])
    # A different colour guarantees a visible cut.
    b = sample_scene(rng, size=size, num_frames=lengths[1], exclude_color=a.color)
    scenes = (a, b)
  else:
    lengths = (num_frames,)
    scenes = (sample_scene(rng, size=size, num_frames=num_frames),)
  fade_frames = max(num_frames // 4, 1) if fade else 0
  return VideoSpec(scenes, lengths, fade_frames)


def video_rng(seed: int, index: int) -> np.random.Generator:
  """The generator of video `index` (independent of how many videos are made)."""
  return np.random.default_rng([int(seed), int(index)])


def check_size(size: int, multiple: int) -> None:
  """Refuses a frame size below 8 px or not a multiple of `multiple` (codec / VAE factor)."""
  if size < 8 or size % multiple:
    raise ValueError(f"--size: {size} must be >= 8 and a multiple of {multiple}")


def shard_clip_spec(seed: int, index: int, *, size: int, frames: Sequence[int],
                    fade_fraction: float = 0.25,
                    radius_range: tuple[float, float] = RADIUS_RANGE) -> VideoSpec:
  """The single-scene clip `index` of a synthetic latent-shard corpus (frames[index % len])."""
  n = int(frames[index % len(frames)])
  rng = video_rng(seed, index)
  scene = sample_scene(rng, size=size, num_frames=n, radius_range=radius_range)
  fade = max(n // 4, 1) if rng.random() < fade_fraction else 0
  return VideoSpec((scene,), (n,), fade)


def write_synthetic_shards(output: str, *, num_videos: int, seed: int, vae, text_encoder,
                           size: int = 64, frames: Sequence[int] = (16,), fps: int = 8,
                           fade_fraction: float = 0.25, chunk: int = 64,
                           target_shard_bytes: int = 64 << 20, latents_dtype: str = "float16",
                           text_dtype: str = "float16", metadata: dict | None = None,
                           overwrite: bool = False, stride: int = 1,
                           radius_range: tuple[float, float] = RADIUS_RANGE) -> dict:
  """Renders single-scene clips in memory, encodes them, writes latent shards; -> manifest.

  Clip i has frames[i % len(frames)] frames, so several frame counts give several buckets. Each
  clip shows its scene's whole motion, as a clip encoded from a longer video at a frame stride
  would; `stride` is the micro-condition recorded for that (the demo's pipeline encodes its
  48-frame videos at a stride, so the fast path can record the same micro-conditions).
  """
  check_size(size, vae.spatial_factor)
  frames = tuple(int(f) for f in frames)
  if not frames or min(frames) < 1:
    raise ValueError(f"--frames: need positive frame counts, got {frames}")
  meta = {"generator": "stiv_jax.data.synthetic", "seed": seed, "size": size,
          "frames": list(frames), "radius_range": list(radius_range),
          "fps": fps, "text_dim": text_encoder.dim, "text_max_length": text_encoder.max_length,
          "vae_spatial_factor": vae.spatial_factor, "latent_channels": vae.latent_channels,
          **(metadata or {})}
  with writer_lib.ShardWriter(output, target_shard_bytes=target_shard_bytes,
                              latents_dtype=latents_dtype, text_dtype=text_dtype,
                              metadata=meta, overwrite=overwrite,
                              contract=contract_lib.encoders_record(vae, text_encoder),
                              empty_prompt=text_encoder.encode_text([""])) as w:
    for lo in range(0, num_videos, chunk):
      ids = range(lo, min(lo + chunk, num_videos))
      clips = [(i, shard_clip_spec(seed, i, size=size, frames=frames,
                                   fade_fraction=fade_fraction, radius_range=radius_range))
               for i in ids]
      tokens, mask, pooled = text_encoder.encode_text([s.scenes[0].caption for _, s in clips])
      for j, (i, spec) in enumerate(clips):
        pixels = render_video(spec, size=size).astype(np.float32) / 127.5 - 1.0
        latents = np.asarray(vae.encode(pixels), np.float32)
        n = spec.num_frames
        w.write(schema_lib.ClipRecord(
            latents=latents, text=tokens[j], text_mask=mask[j], pooled=pooled[j],
            micro={"orig_height": size, "orig_width": size, "crop_top": 0, "crop_left": 0,
                   "stride": int(stride), "num_frames": n},
            caption=spec.scenes[0].caption, clip_id=f"synth-{seed}-{i:06d}",
            source=f"synth://seed{seed}/video_{i:05d}", span=(0.0, n / fps),
            caption_source="synthetic"))
  return w.written_manifest
