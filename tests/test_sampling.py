"""Solvers on analytic flows, JIT-CFG / SIT-CFG math, frame replacement, the jitted model sampler."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stiv_jax import config_schema as schema
from stiv_jax import sampling
from stiv_jax.models.stiv import STIV

MU, S = 2.0, 0.5  # 1D Gaussian data N(MU, S^2)


def gaussian_velocity(x, t):
  """Exact rectified-flow velocity for data N(MU, S^2) and noise N(0, 1)."""
  tb = t.reshape((-1,) + (1,) * (x.ndim - 1))
  var = tb ** 2 * S ** 2 + (1 - tb) ** 2
  return MU + (tb * S ** 2 - (1 - tb)) / var * (x - tb * MU)


def test_time_grid():
  u = sampling.time_grid(10)
  assert u[0] == 0 and u[-1] == 1 and np.allclose(np.diff(u), 0.1)
  s = sampling.time_grid(10, "shifted", 3.0)
  assert s[0] == 0 and np.isclose(s[-1], 1) and np.all(np.diff(s) > 0)
  assert s[5] < u[5]  # shift > 1 spends more steps near noise
  with pytest.raises(ValueError, match="schedule"):
    sampling.time_grid(10, "cosine")


def test_euler_heun_converge_to_exact_endpoint():
  x0 = jnp.asarray(np.random.default_rng(0).standard_normal((64, 1)), jnp.float32)
  exact = MU + S * x0  # the ODE maps noise z to MU + S z
  err = {}
  for solver in ("euler", "heun"):
    for steps in (8, 32):
      x1 = sampling.solve(gaussian_velocity, x0, sampling.time_grid(steps), solver)
      err[solver, steps] = float(jnp.abs(x1 - exact).max())
  assert err["euler", 32] < err["euler", 8] * 0.5
  assert err["heun", 8] < err["euler", 8] * 0.3
  assert err["heun", 32] < 1e-3


def test_sde_matches_data_distribution():
  x0 = jax.random.normal(jax.random.key(1), (4000, 1))
  x1 = sampling.solve(gaussian_velocity, x0, sampling.time_grid(100), "sde",
                      key=jax.random.key(2), eta=1.0)
  ode = sampling.solve(gaussian_velocity, x0, sampling.time_grid(100), "euler")
  assert abs(float(x1.mean()) - MU) < 0.05 and abs(float(x1.std()) - S) < 0.05
  assert float(jnp.abs(x1 - ode).mean()) > 0.05  # really stochastic


def test_cfg_math_and_renorm():
  rng = np.random.default_rng(0)
  vc = jnp.asarray(rng.standard_normal((2, 4, 3, 3, 2)), jnp.float32)
  vu = jnp.asarray(rng.standard_normal((2, 4, 3, 3, 2)), jnp.float32)
  np.testing.assert_allclose(sampling.cfg_combine(vc, vu, 1.0, renorm=False), vc, atol=1e-6)
  np.testing.assert_allclose(sampling.cfg_combine(vc, vu, 0.0, renorm=False), vu, atol=1e-6)
  g = sampling.cfg_combine(vc, vu, 7.5, renorm=True)
  norm = lambda v: jnp.sqrt(jnp.sum(v ** 2, axis=(1, 2, 3, 4)))
  np.testing.assert_allclose(norm(g), norm(vc), rtol=1e-5)
  raw = vu + 7.5 * (vc - vu)
  np.testing.assert_allclose(g / raw, jnp.broadcast_to((norm(vc) / norm(raw))[:, None, None, None, None], g.shape), rtol=1e-4)
  # Norm over generated frames only (frame 0 is a conditioning frame).
  w = sampling._frame_weight(jnp.array([[True, False, False, False]] * 2), vc)
  gw = sampling.cfg_combine(vc, vu, 3.0, True, w)
  np.testing.assert_allclose(norm(gw[:, 1:]), norm(vc[:, 1:]), rtol=1e-5)
  s = sampling.sit_cfg_combine(vc, vu, vu, 5.0, 2.0, renorm=False)
  np.testing.assert_allclose(s, vu + 5.0 * (vc - vu), atol=1e-5)


def _toy_cond(b=2, t=4):
  rng = np.random.default_rng(3)
  cond = dict(text=rng.standard_normal((b, 3, 2)).astype("f4"), text_mask=np.ones((b, 3), bool),
              pooled=rng.standard_normal((b, 2)).astype("f4"),
              micro=np.ones((b, 6), "f4"), cond_mask=np.zeros((b, t), bool),
              cond_latents=rng.standard_normal((b, t, 2, 2, 2)).astype("f4"))
  cond["cond_mask"][:, 0] = True
  null = dict(text=np.zeros((b, 3, 2), "f4"), text_mask=np.ones((b, 3), bool),
              pooled=np.zeros((b, 2), "f4"))
  return {k: jnp.asarray(v) for k, v in cond.items()}, {k: jnp.asarray(v) for k, v in null.items()}


def _toy_apply(calls):
  """A nonlinear velocity that depends on text, pooled and the image condition."""
  def apply(params, x, t, cond):
    calls.append(x.shape[0])
    xr = jnp.where(cond["cond_mask"][:, :, None, None, None], cond["cond_latents"], x)
    p = cond["pooled"].sum(-1)[:, None, None, None, None]
    img = xr[:, :1].mean(axis=(1, 2, 3, 4))[:, None, None, None, None]
    return params * jnp.tanh(xr + p) + img + t[:, None, None, None, None]
  return apply


@pytest.mark.parametrize("mode", ["jit", "sit"])
def test_batched_cfg_is_one_forward_and_equals_separate(mode):
  cond, null = _toy_cond()
  x = jax.random.normal(jax.random.key(0), cond["cond_latents"].shape)
  eps0 = jax.random.normal(jax.random.key(1), x.shape)
  t = jnp.full((2,), 0.3)
  calls_b, calls_s = [], []
  cfg = sampling.SamplerConfig(guidance_mode=mode, guidance=4.0, batched_cfg=True)
  vb = sampling.guided_velocity(_toy_apply(calls_b), 1.5, x, t, cond, null, eps0, cfg)
  vs = sampling.guided_velocity(_toy_apply(calls_s), 1.5, x, t, cond, null, eps0,
                                sampling.SamplerConfig(guidance_mode=mode, guidance=4.0,
                                                       batched_cfg=False))
  n = 2 if mode == "jit" else 3
  assert calls_b == [2 * n] and calls_s == [2] * n
  np.testing.assert_allclose(vb, vs, rtol=1e-5, atol=1e-5)
  if mode == "jit":
    # Manual: cond branch sees the image, the uncond branch the re-noised frame and null text.
    apply = _toy_apply([])
    vc = apply(1.5, sampling.replace_frames(x, cond["cond_mask"], cond["cond_latents"]), t, cond)
    xf = sampling.replace_frames(x, cond["cond_mask"], 0.3 * cond["cond_latents"] + 0.7 * eps0)
    un = dict(cond, text=null["text"], pooled=null["pooled"], cond_mask=jnp.zeros_like(cond["cond_mask"]))
    vu = apply(1.5, xf, t, un)
    w = sampling._frame_weight(cond["cond_mask"], x)
    np.testing.assert_allclose(vb, sampling.cfg_combine(vc, vu, 4.0, True, w), rtol=1e-5)


def test_sample_step_resets_conditioning_frames():
  cond, null = _toy_cond()
  x = jax.random.normal(jax.random.key(0), cond["cond_latents"].shape)
  for solver in sampling.SOLVERS:
    cfg = sampling.SamplerConfig(solver=solver)
    y = sampling.sample_step(_toy_apply([]), cfg, 1.0, x, jnp.full((2,), 0.2), jnp.full((2,), 0.4),
                             cond, null, x, jax.random.key(0), jnp.asarray(False))
    np.testing.assert_array_equal(y[:, 0], cond["cond_latents"][:, 0])
    assert not np.allclose(y[:, 1:], x[:, 1:])


def test_grid_step_derives_times_key_and_last_step():
  cond, null = _toy_cond()
  x = jax.random.normal(jax.random.key(0), cond["cond_latents"].shape)
  cfg = sampling.SamplerConfig(solver="sde", steps=3)
  times = jnp.asarray(sampling.time_grid(3), jnp.float32)
  key = jax.random.key(5)
  for i in range(3):
    got = sampling.grid_step(_toy_apply([]), cfg, 1.0, x, np.int32(i), times, cond, null, x, key)
    want = sampling.sample_step(_toy_apply([]), cfg, 1.0, x, jnp.full((2,), times[i]),
                                jnp.full((2,), times[i + 1]), cond, null, x,
                                jax.random.fold_in(key, i), jnp.asarray(i == 2))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_config_errors():
  with pytest.raises(ValueError, match="sampling.solver"):
    sampling.SamplerConfig(solver="rk4")
  with pytest.raises(ValueError, match="unknown fields"):
    sampling.SamplerConfig.from_config({"stepz": 3})
  assert sampling.SamplerConfig.from_config({"steps": 3}, steps=None, guidance=2.0).steps == 3


# ----------------------------------------------------------------------------- with the model


def tiny_model_config():
  return schema.model_config("small", latent_height=8, latent_width=8, num_frames=4, text_dim=16,
                             latent_channels=4, mask_ratio=0.0, remat="none")


def perturbed_model(cfg, seed=0, scale=0.05):
  """An STIV with random N(0, scale^2) parameters (numpy, no per-op compiles), so velocities
  are non-zero (the real init zeroes the output layers) and building it takes no time."""
  abstract = nnx.eval_shape(lambda: STIV(cfg, rngs=nnx.Rngs(params=0)))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda a: jnp.asarray(scale * rng.standard_normal(a.shape), a.dtype), params)
  return nnx.merge(graphdef, params, rest)


def model_cond(cfg, b, first=True, seed=0):
  rng = np.random.default_rng(seed)
  t = cfg.num_frames
  cond = dict(text=rng.standard_normal((b, 5, cfg.text_dim)).astype("f4"),
              text_mask=np.ones((b, 5), bool),
              pooled=rng.standard_normal((b, cfg.text_dim)).astype("f4"),
              micro=np.tile(np.array([32, 32, 0, 0, 1, t], "f4"), (b, 1)),
              cond_mask=np.zeros((b, t), bool),
              cond_latents=np.zeros((b, t, cfg.latent_height, cfg.latent_width, cfg.latent_channels), "f4"))
  if first:
    cond["cond_mask"][:, 0] = True
    cond["cond_latents"][:, 0] = rng.standard_normal(cond["cond_latents"].shape[2:])
  null = dict(text=np.zeros((1, 5, cfg.text_dim), "f4"), text_mask=np.ones((1, 5), bool),
              pooled=np.zeros((1, cfg.text_dim), "f4"))
  return cond, null


@pytest.fixture(scope="module")
def model_sampler():
  cfg = tiny_model_config()
  model = perturbed_model(cfg)
  return cfg, sampling.Sampler(model, sampling.SamplerConfig(steps=3, guidance=3.0)), model


def test_model_sampler_deterministic_sharded_and_replaced(model_sampler):
  cfg, sampler, model = model_sampler
  assert sampler.batch_divisor == jax.device_count() == 8
  cond, null = model_cond(cfg, 3)
  a = sampler(cond, null, seed=0)
  b = sampler(cond, null, seed=0)
  c = sampler(cond, null, seed=1)
  assert a.shape == (3, 4, 8, 8, 4) and np.isfinite(a).all()
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 1e-2
  np.testing.assert_array_equal(a[:, 0], cond["cond_latents"][:, 0])
  # A sample does not depend on the batch it is drawn in (per-sample noise keys).
  one = sampler({k: v[:1] for k, v in cond.items()}, null, seed=0)
  np.testing.assert_allclose(one[0], a[0], rtol=1e-4, atol=1e-4)
  # Guidance changes the result (the uncond branch matters).
  plain = sampling.Sampler(model, sampling.SamplerConfig(steps=3, guidance_mode="none"))
  assert np.abs(plain(cond, null, seed=0) - a).max() > 1e-3


def test_batched_cfg_spreads_one_sample_over_the_mesh(model_sampler):
  """One sample's two JIT-CFG branches fill two of the devices instead of padding each branch
  to the mesh; the result equals separate forwards."""
  cfg, sampler, model = model_sampler
  separate = sampling.Sampler(model, sampling.SamplerConfig(steps=3, guidance=3.0,
                                                            batched_cfg=False))
  sit = sampling.Sampler(model, sampling.SamplerConfig(steps=3, guidance_mode="sit"))
  assert sampler.forward_branches == 2 and separate.forward_branches == 1
  assert sampler.padding(1) == (3, False)      # forward batch 8, inputs replicated
  assert sampler.padding(4) == (0, False) and sampler.padding(5) == (3, True)
  assert sampler.padding(8) == (0, True)
  assert separate.padding(1) == (7, True) and sit.padding(1) == (7, True)
  cond, null = model_cond(cfg, 1)
  np.testing.assert_allclose(sampler(cond, null, seed=4), separate(cond, null, seed=4),
                             rtol=1e-4, atol=1e-4)


def test_model_sampler_step_is_sharded(model_sampler):
  cfg, sampler, _ = model_sampler
  cond, null = model_cond(cfg, 8, first=False)
  x = jax.device_put(jnp.zeros((8, 4, 8, 8, 4)), sampler._batch_sharding)
  shard = lambda a: jax.device_put(a, sampler._batch_sharding)
  c = {k: shard(jnp.asarray(v)) for k, v in cond.items()}
  n = {k: shard(jnp.broadcast_to(jnp.asarray(v), (8,) + v.shape[1:])) for k, v in null.items()}
  times = jnp.asarray([0.0, 0.5, 1.0])
  step = sampler.step_for(sharded_inputs=True)
  out = step(sampler.params, x, np.int32(0), times, c, n, x, jax.random.key(0))
  assert out.sharding.spec[0] in ("data", ("data",))
  assert len(out.sharding.device_set) == 8
