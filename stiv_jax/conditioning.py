"""Which latent frames are replaced by clean conditions for each task, and condition dropout.

The task mix of a stage (STIV_SPEC.md section 2) picks per example which frames are replaced
(none: T2V, first: TI2V, first_k: video prediction, first_last: keyframe interpolation,
every_other: temporal upsampling, keyframe_stride: long-video keyframes, multiview: frame 0
with the empty prompt). Text is dropped to the empty prompt and the image condition is dropped
independently, per example, for classifier-free guidance.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

FRAME_MODES = ("none", "first", "first_k", "first_last", "every_other", "keyframe_stride")
# Tasks are frame modes plus 'multiview' (frame 0 given, text always the empty prompt).
TASKS = FRAME_MODES + ("multiview",)


def frame_mask(mode: str, num_frames: int, *, k: int = 4, stride: int = 2) -> np.ndarray:
  """[num_frames] bool, True for frames replaced by the clean condition under `mode`."""
  if num_frames < 1:
    raise ValueError(f"frame_mask: num_frames must be >= 1, got {num_frames}")
  m = np.zeros((num_frames,), bool)
  if mode == "none":
    pass
  elif mode == "first":
    m[0] = True
  elif mode == "first_k":
    if not 1 <= k < num_frames:
      raise ValueError(f"frame_mask('first_k'): k must be in [1, {num_frames}), got {k}")
    m[:k] = True
  elif mode == "first_last":
    if num_frames < 2:
      raise ValueError(f"frame_mask('first_last'): needs >= 2 frames, got {num_frames}")
    m[0] = m[-1] = True
  elif mode == "every_other":
    m[::2] = True
  elif mode == "keyframe_stride":
    if stride < 1:
      raise ValueError(f"frame_mask('keyframe_stride'): stride must be >= 1, got {stride}")
    m[::stride] = True
  else:
    raise ValueError(f"frame_mask: mode {mode!r} unknown; expected one of {FRAME_MODES}")
  return m


def task_frame_mode(task: str) -> str:
  """The frame mode a task uses ('multiview' replaces the first frame)."""
  return "first" if task == "multiview" else task


def task_table(cfg: Any, num_frames: int) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
  """(names, probabilities [n], frame masks [n, num_frames]) of the configured task mix."""
  tasks = dict(cfg.tasks)
  if not tasks:
    raise ValueError("conditioning.tasks: empty task mix")
  for name, w in tasks.items():
    if name not in TASKS:
      raise ValueError(f"conditioning.tasks: task {name!r} unknown; expected one of {TASKS}")
    if w < 0:
      raise ValueError(f"conditioning.tasks.{name}: weight must be >= 0, got {w}")
  names = tuple(sorted(tasks))
  weights = np.array([tasks[n] for n in names], np.float64)
  if weights.sum() <= 0:
    raise ValueError(f"conditioning.tasks: weights sum to {weights.sum()}, need > 0")
  masks = np.stack([frame_mask(task_frame_mode(n), num_frames, k=cfg.k, stride=cfg.stride)
                    for n in names])
  return names, (weights / weights.sum()).astype(np.float32), masks


def validate_conditioning_config(cfg: Any, num_frames: int) -> None:
  """Raises ValueError naming the field when the `conditioning` section is invalid."""
  for field in ("text_dropout", "image_dropout"):
    p = cfg[field]
    if not 0.0 <= p <= 1.0:
      raise ValueError(f"conditioning.{field}: must be in [0, 1], got {p}")
  task_table(cfg, num_frames)


class Conditions(NamedTuple):
  """Per-example condition choices of one batch."""
  cond_mask: jax.Array   # [B, T] bool, frames replaced by clean latents
  text_drop: jax.Array   # [B] bool, text replaced by the empty prompt
  task: jax.Array        # [B] int32 index into task_table names


def sample_conditions(key: jax.Array, batch_size: int, num_frames: int, cfg: Any) -> Conditions:
  """Samples task, image-condition dropout and text dropout per example (jax, jit-friendly)."""
  names, probs, masks = task_table(cfg, num_frames)
  k_task, k_img, k_txt = jax.random.split(key, 3)
  task = jax.random.categorical(k_task, jnp.log(jnp.asarray(probs)), shape=(batch_size,))
  cond_mask = jnp.asarray(masks)[task]
  img_drop = jax.random.bernoulli(k_img, cfg.image_dropout, (batch_size,))
  cond_mask = cond_mask & ~img_drop[:, None]
  text_drop = jax.random.bernoulli(k_txt, cfg.text_dropout, (batch_size,))
  if "multiview" in names:
    text_drop = text_drop | (task == names.index("multiview"))
  return Conditions(cond_mask, text_drop, task.astype(jnp.int32))


def drop_text(text: jax.Array, text_mask: jax.Array, pooled: jax.Array, drop: jax.Array,
              null_text: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Replaces the text of examples with drop[b] by the empty-prompt encoding `null_text`.

  null_text holds 'text' [L, D], 'text_mask' [L] and 'pooled' [D] (encode_text([""])[i][0]).
  """
  d3 = drop[:, None, None]
  text = jnp.where(d3, null_text["text"][None].astype(text.dtype), text)
  text_mask = jnp.where(drop[:, None], null_text["text_mask"][None], text_mask)
  pooled = jnp.where(drop[:, None], null_text["pooled"][None].astype(pooled.dtype), pooled)
  return text, text_mask, pooled
