"""The STIV tasks at sampling time: which frames are given, from what input, with what text.

Every task is frame replacement (STIV_SPEC.md section 2) with a frame mask from
`stiv_jax.conditioning.frame_mask`; `long` chains a keyframe pass and one interpolation pass
per gap. `TaskRunner` turns prompts and pixel inputs into conditioning and calls a sampler.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np

from stiv_jax import conditioning


class TaskError(ValueError):
  """A user error in a task's inputs (missing image, wrong size, unknown task)."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One sampling task: its frame mode and which inputs it needs."""

  name: str
  frame_mode: str          # conditioning.frame_mask mode of one clip
  needs: str | None        # None | 'image' | 'video' | 'endpoints'
  empty_text: bool = False  # multiview: the text is always the empty prompt
  single_frame: bool = False  # t2i
  description: str = ""


TASKS: dict[str, TaskSpec] = {
    "t2i": TaskSpec("t2i", "none", None, single_frame=True, description="text to image"),
    "t2v": TaskSpec("t2v", "none", None, description="text to video"),
    "ti2v": TaskSpec("ti2v", "first", "image", description="text + first frame to video"),
    "v2v": TaskSpec("v2v", "first_k", "video", description="video prediction from first frames"),
    "interp": TaskSpec("interp", "first_last", "endpoints",
                       description="interpolation between a first and a last frame"),
    "tup": TaskSpec("tup", "every_other", "video",
                    description="temporal upsampling: every other frame given"),
    "long": TaskSpec("long", "first_last", None,
                     description="keyframes, then each gap filled by interpolation"),
    "multiview": TaskSpec("multiview", "first", "image", empty_text=True,
                          description="input view plus novel views, empty text"),
}


def get_task(name: str) -> TaskSpec:
  """The task named `name`, or a TaskError listing the known ones."""
  if name not in TASKS:
    raise TaskError(f"--task: unknown task {name!r}; expected one of {sorted(TASKS)}")
  return TASKS[name]


def clip_mask(task: TaskSpec, num_frames: int, k: int = 4) -> np.ndarray:
  """[num_frames] bool frames given (replaced) for one clip of `task`."""
  if task.single_frame:
    return np.zeros((1,), bool)
  return conditioning.frame_mask(task.frame_mode, num_frames, k=k)


def given_positions(task: TaskSpec, num_frames: int, k: int = 4) -> np.ndarray:
  """Indices of the frames a clip of `task` takes from its inputs."""
  return np.nonzero(clip_mask(task, num_frames, k))[0]


def tup_input_frames(num_frames: int) -> int:
  """Frames of --video a temporal-upsampling clip of `num_frames` output frames uses."""
  return len(range(0, num_frames, 2))


def _check_size(frames: np.ndarray, height: int, width: int, what: str, resize: bool,
                resize_fn: Callable[[np.ndarray, int, int], np.ndarray]) -> np.ndarray:
  """Checks (or resizes) uint8 frames [N, H, W, 3] to the model's pixel resolution."""
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise TaskError(f"{what}: expected RGB frames, got array of shape {frames.shape}")
  h, w = frames.shape[1:3]
  if (h, w) != (height, width):
    if not resize:
      raise TaskError(f"{what}: size {w}x{h} does not match the model's resolution "
                      f"{width}x{height}; pass --resize to resize it")
    frames = resize_fn(frames, height, width)
  return frames


@dataclasses.dataclass
class TaskInputs:
  """Pixel inputs of a task (uint8 RGB), before encoding."""

  image: np.ndarray | None = None       # [H, W, 3]: ti2v first frame, multiview input view
  last_image: np.ndarray | None = None  # [H, W, 3]: interp last frame
  video: np.ndarray | None = None       # [N, H, W, 3]: v2v, tup, interp (first/last)


def given_frames(task: TaskSpec, inputs: TaskInputs, num_frames: int, k: int = 4) -> np.ndarray:
  """uint8 frames [n_given, H, W, 3] placed at `given_positions`, from the task's inputs."""
  if task.needs is None:
    return np.zeros((0, 0, 0, 3), np.uint8)
  if task.needs == "image":
    if inputs.image is None:
      what = "input view" if task.empty_text else "first frame"
      raise TaskError(f"--task={task.name} needs --image (the {what})")
    return np.asarray(inputs.image)[None]
  if task.needs == "endpoints":
    if inputs.image is not None and inputs.last_image is not None:
      return np.stack([inputs.image, inputs.last_image])
    if inputs.video is not None:
      v = np.asarray(inputs.video)
      if v.shape[0] < 2:
        raise TaskError(f"--video: interp needs >= 2 frames (first and last), got {v.shape[0]}")
      return np.stack([v[0], v[-1]])
    raise TaskError("--task=interp needs --image and --last-image, or --video "
                    "(its first and last frame)")
  # 'video'
  if inputs.video is None:
    raise TaskError(f"--task={task.name} needs --video")
  v = np.asarray(inputs.video)
  need = k if task.frame_mode == "first_k" else tup_input_frames(num_frames)
  if v.shape[0] < need:
    raise TaskError(f"--video: --task={task.name} needs >= {need} frames, got {v.shape[0]}")
  return v[:need]


class TaskRunner:
  """Runs any task with a sampler, the frozen encoders and the model's latent geometry."""

  def __init__(self, sample_fn: Callable[..., np.ndarray], text_encoder: Any, vae: Any,
               model_cfg: Any, *, frame_stride: float | None = None, first_k: int = 4,
               keyframe_stride: float = 20.0, resize: bool = False,
               resize_fn: Callable[[np.ndarray, int, int], np.ndarray] | None = None,
               micro_defaults: dict[str, float] | None = None,
               latent_size: tuple[int, int] | None = None):
    """sample_fn(cond, null, seed=, progress=, noise_offset=) -> latents [B, T, h, w, C].

    micro_defaults: original size, crop and stride of what training saw (the latent
    contract's bucket statistics, stiv_jax.data.contract.bucket_micro); without them the
    micro-conditions say "uncropped, at the sampling resolution, stride 1". latent_size:
    (h, w) latents to sample (a trained bucket); default the model's.
    """
    self.sample_fn = sample_fn
    self.text_encoder = text_encoder
    self.vae = vae
    self.cfg = model_cfg
    self.micro_defaults = dict(micro_defaults or {})
    if frame_stride is None:
      frame_stride = self.micro_defaults.get("stride", 1.0)
    self.frame_stride = float(frame_stride)
    self.first_k = int(first_k)
    self.keyframe_stride = float(keyframe_stride)
    self.resize = resize
    if resize_fn is None:
      from stiv_jax.video_io import resize_frames
      resize_fn = resize_frames
    self.resize_fn = resize_fn
    f = int(vae.spatial_factor)
    self.latent_hw = tuple(int(x) for x in (latent_size or (model_cfg.latent_height,
                                                           model_cfg.latent_width)))
    self.height, self.width = self.latent_hw[0] * f, self.latent_hw[1] * f
    if int(vae.latent_channels) != int(model_cfg.latent_channels):
      raise TaskError(f"vae.latent_channels={vae.latent_channels} does not match "
                      f"model.latent_channels={model_cfg.latent_channels}")
    if int(text_encoder.dim) != int(model_cfg.text_dim):
      raise TaskError(f"text.dim={text_encoder.dim} does not match "
                      f"model.text_dim={model_cfg.text_dim}")

  # ------------------------------------------------------------------ pieces

  def encode_frames(self, frames: np.ndarray, what: str) -> np.ndarray:
    """uint8 [N, H, W, 3] -> latents [N, h, w, C] through the VAE (size checked or resized)."""
    frames = _check_size(np.asarray(frames), self.height, self.width, what, self.resize,
                         self.resize_fn)
    return np.asarray(self.vae.encode(frames.astype(np.float32) / 127.5 - 1.0), np.float32)

  def decode(self, latents: np.ndarray) -> np.ndarray:
    """Latents [B, T, h, w, C] -> frames [B, T, H, W, 3] in [-1, 1]."""
    b, t = latents.shape[:2]
    frames = np.asarray(self.vae.decode(latents.reshape((b * t,) + latents.shape[2:])))
    return frames.reshape((b, t) + frames.shape[1:])

  def micro(self, batch: int, num_frames: int, stride: float | None = None) -> np.ndarray:
    """[B, 6] micro-conditions (MICRO_CONDITIONS order): original size and crop from the
    defaults (else the sampling resolution, uncropped), the frame stride, the frame count."""
    d = self.micro_defaults
    row = np.array([d.get("orig_height", self.height), d.get("orig_width", self.width),
                    d.get("crop_top", 0.0), d.get("crop_left", 0.0),
                    self.frame_stride if stride is None else stride, num_frames], np.float32)
    return np.tile(row, (batch, 1))

  def text(self, prompts: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(cond text dict for the prompts, null dict of the empty prompt [1, ...])."""
    tok, mask, pooled = self.text_encoder.encode_text(list(prompts))
    ntok, nmask, npooled = self.text_encoder.encode_text([""])
    return ({"text": np.asarray(tok, np.float32), "text_mask": np.asarray(mask, bool),
             "pooled": np.asarray(pooled, np.float32)},
            {"text": np.asarray(ntok, np.float32), "text_mask": np.asarray(nmask, bool),
             "pooled": np.asarray(npooled, np.float32)})

  def clip(self, prompts: Sequence[str], mask: np.ndarray, given: np.ndarray | None, seed: int,
           stride: float | None = None, progress: bool = False,
           noise_offset: int = 0) -> np.ndarray:
    """Samples one clip per prompt with frames `mask` set to `given` latents.

    given: [n_given, h, w, C] shared by the batch, or [B, n_given, h, w, C] per sample.
    """
    b, t = len(prompts), int(mask.shape[0])
    (h, w), c = self.latent_hw, int(self.cfg.latent_channels)
    cond_latents = np.zeros((b, t, h, w, c), np.float32)
    idx = np.nonzero(mask)[0]
    if idx.size:
      g = np.asarray(given, np.float32)
      if g.ndim == 4:
        g = np.broadcast_to(g[None], (b,) + g.shape)
      cond_latents[:, idx] = g
    cond_text, null = self.text(prompts)
    cond = dict(cond_text, micro=self.micro(b, t, stride),
                cond_mask=np.broadcast_to(mask[None], (b, t)).copy(), cond_latents=cond_latents)
    return self.sample_fn(cond, null, seed=seed, progress=progress, noise_offset=noise_offset)

  # ------------------------------------------------------------------ tasks

  def run(self, task_name: str, prompts: Sequence[str], inputs: TaskInputs | None = None,
          seed: int = 0, num_frames: int | None = None, length: int | None = None,
          progress: bool = False) -> np.ndarray:
    """Latents [B, T, h, w, C] of `task_name` for each prompt (T = 1 for t2i)."""
    task = get_task(task_name)
    inputs = inputs or TaskInputs()
    prompts = [""] * len(prompts) if task.empty_text else list(prompts)
    if not prompts:
      raise TaskError("no prompts: pass --prompt or --prompts-file")
    t = 1 if task.single_frame else int(num_frames or self.cfg.num_frames)
    if task.name == "long":
      return self.long(prompts, length or 2 * t, seed=seed, num_frames=t, inputs=inputs,
                       progress=progress)
    mask = clip_mask(task, t, self.first_k)
    given = None
    if task.needs is not None:
      frames = given_frames(task, inputs, t, self.first_k)
      given = self.encode_frames(frames, f"--task={task.name} input")
    return self.clip(prompts, mask, given, seed, progress=progress)

  def long(self, prompts: Sequence[str], length: int, seed: int, num_frames: int,
           inputs: TaskInputs | None = None, progress: bool = False) -> np.ndarray:
    """Long video: keyframes at the keyframe stride, then each gap filled by interpolation.

    Needs K = ceil((length - 1) / (T - 1)) + 1 keyframes. One keyframe clip gives T of them;
    more are made by continuing from the last keyframe with the first-frame mode (a named
    simplification of a dedicated keyframe model). Gaps are sampled as one batch with the
    first_last mode at stride keyframe_stride / (T - 1), and joined sharing their endpoints.
    """
    t = int(num_frames)
    if t < 3:
      raise TaskError(f"long: clips need >= 3 frames to fill a gap, model has {t}")
    if length < 2:
      raise TaskError(f"--length: must be >= 2, got {length}")
    b = len(prompts)
    num_kf = math.ceil((length - 1) / (t - 1)) + 1
    first = np.zeros((t,), bool)
    given = None
    if inputs is not None and inputs.image is not None:
      first[0] = True
      given = self.encode_frames(np.asarray(inputs.image)[None], "--image")
    keyframes = self.clip(prompts, first, given, seed, stride=self.keyframe_stride,
                          progress=progress)
    chunk = 1
    while keyframes.shape[1] < num_kf:
      cont = np.zeros((t,), bool)
      cont[0] = True
      more = self.clip(prompts, cont, keyframes[:, -1:], seed, stride=self.keyframe_stride,
                       progress=progress, noise_offset=chunk * b)
      keyframes = np.concatenate([keyframes, more[:, 1:]], axis=1)
      chunk += 1
    keyframes = keyframes[:, :num_kf]
    gaps = num_kf - 1
    ends = np.stack([keyframes[:, :-1], keyframes[:, 1:]], axis=2)  # [B, gaps, 2, h, w, C]
    ends = ends.reshape((b * gaps,) + ends.shape[2:])
    mask = conditioning.frame_mask("first_last", t)
    fill = self.clip([p for p in prompts for _ in range(gaps)], mask, ends, seed,
                     stride=self.keyframe_stride / (t - 1), progress=progress,
                     noise_offset=(chunk + 1) * b * max(gaps, 1))
    fill = fill.reshape((b, gaps) + fill.shape[1:])
    pieces = [fill[:, g, :-1] for g in range(gaps)] + [fill[:, -1, -1:]]
    return np.concatenate(pieces, axis=1)[:, :length]
