"""Rectified-flow math: noising, targets, t samplers, masked loss and t buckets."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from stiv_jax import flow


def _cfg(**kw):
  c = ml_collections.ConfigDict(dict(t_sampler="uniform", logit_mean=0.0, logit_std=1.0,
                                     shift=1.0, t_eps=0.0, mae_weight=0.0))
  c.update(kw)
  return c


def test_noise_endpoints_and_velocity():
  k1, k2 = jax.random.split(jax.random.key(0))
  x1 = jax.random.normal(k1, (2, 3, 4, 4, 2))
  eps = jax.random.normal(k2, x1.shape)
  np.testing.assert_allclose(flow.noise_latents(x1, eps, jnp.zeros(2)), eps)
  np.testing.assert_allclose(flow.noise_latents(x1, eps, jnp.ones(2)), x1)
  t = jnp.array([0.25, 0.75])
  xt = flow.noise_latents(x1, eps, t)
  np.testing.assert_allclose(xt[1], 0.75 * x1[1] + 0.25 * eps[1], rtol=1e-6)
  # The velocity is the time derivative of x_t.
  d = (flow.noise_latents(x1, eps, t + 1e-3) - xt) / 1e-3
  np.testing.assert_allclose(d, flow.velocity_target(x1, eps), atol=2e-2)


@pytest.mark.parametrize("kind,check", [
    ("uniform", lambda t: abs(t.mean() - 0.5) < 0.02),
    ("logit_normal", lambda t: abs(np.median(t) - 0.5) < 0.02 and t.std() < 0.25),
    ("shifted", lambda t: t.mean() < 0.4),
])
def test_t_samplers(kind, check):
  t = np.asarray(flow.sample_t(jax.random.key(1), 20000, _cfg(t_sampler=kind, shift=3.0)))
  assert t.shape == (20000,) and t.min() >= 0 and t.max() <= 1
  assert check(t)


def test_shift_identity_and_eps_clip():
  t = jnp.linspace(0, 1, 11)
  np.testing.assert_allclose(flow.shift_t(t, 1.0), t, atol=1e-6)
  s = np.asarray(flow.sample_t(jax.random.key(2), 1000, _cfg(t_eps=0.1)))
  assert s.min() >= 0.1 and s.max() <= 0.9


def test_bad_config_names_field():
  with pytest.raises(ValueError, match="flow.t_sampler"):
    flow.validate_flow_config(_cfg(t_sampler="cosine"))
  with pytest.raises(ValueError, match="flow.mae_weight"):
    flow.validate_flow_config(_cfg(mae_weight=-1.0))


def test_data_weighting_is_the_clean_latent_error():
  """flow.loss_weighting='data': the weighted velocity loss of a data-predicting output equals
  the squared error of its clean-latent prediction, at every t; 'none' leaves it as it is."""
  rng = np.random.default_rng(3)
  x1 = jnp.asarray(rng.standard_normal((3, 2, 4, 4, 2)), jnp.float32)
  eps = jnp.asarray(rng.standard_normal(x1.shape), jnp.float32)
  x1_hat = x1 + 0.1 * jnp.asarray(rng.standard_normal(x1.shape), jnp.float32)
  t = jnp.array([0.1, 0.5, 0.9])
  xt = flow.noise_latents(x1, eps, t)
  v_hat = (x1_hat - xt) / (1 - t)[:, None, None, None, None]
  keep, cond = jnp.ones(x1.shape[:4], bool), jnp.zeros(x1.shape[:2], bool)
  _, per_example = flow.flow_loss(v_hat, flow.velocity_target(x1, eps), keep, cond)
  x_err = jnp.mean(jnp.square(x1_hat - x1), axis=(1, 2, 3, 4))
  np.testing.assert_allclose(per_example * flow.loss_time_weight(t, "data"), x_err, rtol=1e-4)
  np.testing.assert_allclose(flow.loss_time_weight(t, "none"), 1.0)
  assert float(per_example[2]) > 50 * float(x_err[2])   # unweighted, late t dominates
  with pytest.raises(ValueError, match="flow.loss_weighting"):
    flow.validate_flow_config(_cfg(loss_weighting="snr"))


def test_loss_masks_replaced_frames_and_dropped_tokens():
  rng = np.random.default_rng(0)
  pred = jnp.asarray(rng.standard_normal((2, 4, 4, 4, 3)), jnp.float32)
  target = jnp.asarray(rng.standard_normal(pred.shape), jnp.float32)
  keep = np.ones((2, 4, 4, 4), np.float32)
  keep[:, :, :2] = 0.0                       # top half of every frame dropped
  cond = np.zeros((2, 4), bool)
  cond[0, 0] = True                          # example 0: frame 0 replaced
  loss, per = flow.flow_loss(pred, target, jnp.asarray(keep), jnp.asarray(cond))
  se = (np.asarray(pred) - np.asarray(target)) ** 2
  w = keep * (~cond)[:, :, None, None]
  manual = (se * w[..., None]).sum((1, 2, 3, 4)) / (w.sum((1, 2, 3)) * 3)
  np.testing.assert_allclose(per, manual, rtol=1e-5)
  np.testing.assert_allclose(loss, manual.mean(), rtol=1e-5)
  # Changing predictions on replaced frames or dropped tokens does not change the loss.
  pred2 = pred.at[0, 0].add(10.0).at[:, :, :2].add(5.0)
  np.testing.assert_allclose(flow.flow_loss(pred2, target, keep, cond)[0], loss, rtol=1e-6)
  # ... unless the MAE-style term is on: then dropped tokens count with its weight.
  with_mae = flow.flow_loss(pred2, target, keep, cond, mae_weight=0.1)[0]
  dropped = (1 - keep) * (~cond)[:, :, None, None]
  se2 = (np.asarray(pred2) - np.asarray(target)) ** 2
  mae = ((se2 * dropped[..., None]).sum((1, 2, 3, 4)) / (dropped.sum((1, 2, 3)) * 3)).mean()
  np.testing.assert_allclose(with_mae, loss + 0.1 * mae, rtol=1e-5)


def test_t_bucket_sums():
  t = jnp.array([0.1, 0.2, 0.5, 0.99, 1.0])
  per = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])
  s, c = flow.t_bucket_sums(t, per)
  np.testing.assert_allclose(s, [3.0, 0.0, 3.0, 9.0])
  np.testing.assert_allclose(c, [2, 0, 1, 2])
