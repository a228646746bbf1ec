"""Frame masks per task, the sampled task mix and condition dropout."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from stiv_jax import conditioning as cond


def _cfg(tasks, text=0.1, image=0.08):
  return ml_collections.ConfigDict(dict(tasks=tasks, k=4, stride=3, text_dropout=text,
                                        image_dropout=image))


@pytest.mark.parametrize("mode,expected", [
    ("none", [0, 0, 0, 0, 0, 0, 0, 0]),
    ("first", [1, 0, 0, 0, 0, 0, 0, 0]),
    ("first_k", [1, 1, 1, 1, 0, 0, 0, 0]),
    ("first_last", [1, 0, 0, 0, 0, 0, 0, 1]),
    ("every_other", [1, 0, 1, 0, 1, 0, 1, 0]),
    ("keyframe_stride", [1, 0, 0, 1, 0, 0, 1, 0]),
])
def test_frame_mask(mode, expected):
  m = cond.frame_mask(mode, 8, k=4, stride=3)
  assert m.dtype == bool
  np.testing.assert_array_equal(m, np.array(expected, bool))


def test_frame_mask_errors():
  with pytest.raises(ValueError, match="mode 'sideways'"):
    cond.frame_mask("sideways", 8)
  with pytest.raises(ValueError, match="first_k"):
    cond.frame_mask("first_k", 4, k=4)
  with pytest.raises(ValueError, match="conditioning.tasks"):
    cond.task_table(_cfg({"t2x": 1.0}), 8)
  with pytest.raises(ValueError, match="conditioning.text_dropout"):
    cond.validate_conditioning_config(_cfg({"none": 1.0}, text=1.5), 8)


def test_sampling_rates_and_task_mix():
  c = _cfg({"none": 0.5, "first": 0.25, "first_last": 0.25})
  n = 40000
  out = cond.sample_conditions(jax.random.key(0), n, 8, c)
  names, probs, masks = cond.task_table(c, 8)
  task = np.asarray(out.task)
  freq = np.bincount(task, minlength=len(names)) / n
  np.testing.assert_allclose(freq, probs, atol=0.01)
  assert abs(np.asarray(out.text_drop).mean() - 0.1) < 0.01
  # Conditioning tasks lose their frames when the image condition is dropped (8%).
  cm = np.asarray(out.cond_mask)
  has_cond = task != names.index("none")
  kept = cm[has_cond].any(axis=1).mean()
  assert abs(kept - 0.92) < 0.01
  # When not dropped, the mask is exactly the task's frame mask.
  rows = has_cond & cm.any(axis=1)
  np.testing.assert_array_equal(cm[rows], masks[task[rows]])
  assert not cm[~has_cond].any()
  # Same key -> same draw.
  again = cond.sample_conditions(jax.random.key(0), n, 8, c)
  np.testing.assert_array_equal(np.asarray(again.cond_mask), cm)


def test_multiview_always_drops_text():
  out = cond.sample_conditions(jax.random.key(1), 1000, 4, _cfg({"multiview": 1.0}, text=0.0,
                                                                  image=0.0))
  assert np.asarray(out.text_drop).all()
  np.testing.assert_array_equal(np.asarray(out.cond_mask)[:, 0], True)
  assert not np.asarray(out.cond_mask)[:, 1:].any()


def test_drop_text_uses_null_prompt():
  text = jnp.ones((3, 5, 2))
  mask = jnp.ones((3, 5), bool)
  pooled = jnp.ones((3, 2))
  null = {"text": jnp.zeros((5, 2)), "text_mask": jnp.array([1, 1, 0, 0, 0], bool),
          "pooled": jnp.full((2,), -1.0)}
  t, m, p = cond.drop_text(text, mask, pooled, jnp.array([False, True, False]), null)
  np.testing.assert_array_equal(t[1], 0.0)
  np.testing.assert_array_equal(t[0], 1.0)
  np.testing.assert_array_equal(m[1], [1, 1, 0, 0, 0])
  np.testing.assert_array_equal(p[1], -1.0)
  np.testing.assert_array_equal(p[2], 1.0)
