"""Non-finite updates are skipped and counted; finite ones update params and EMA."""
import jax
import numpy as np
import pytest

from experiments.configs import demo
from stiv_jax import sharding as shd
from stiv_jax.models.encoders.base import build_text_encoder
from stiv_jax.train import optimizer as opt_lib
from stiv_jax.train import state as state_lib
from stiv_jax.train import step as step_lib


@pytest.fixture(scope="module")
def setup():
  c = demo.get_config("tiny")
  c.model.depth = 1
  c.model.mask_decoder_depth = 1
  c.optimizer.warmup_steps = 0
  c.mesh.data = 2
  mesh = shd.make_mesh(c.mesh, jax.devices()[:2])
  rules = shd.rules_from_config(c.mesh.rules)
  tx = opt_lib.make_optimizer(c.optimizer)
  opts = step_lib.compiler_options(c)
  graphdef, state, shardings = state_lib.create_train_state(
      lambda: state_lib.build_model(c.model, c.seed), tx, mesh, rules, opts)
  rng = np.random.default_rng(0)
  batch = {"latents": rng.standard_normal((4, 4, 8, 8, 4)).astype(np.float32),
           "text": rng.standard_normal((4, 8, 16)).astype(np.float32),
           "text_mask": np.ones((4, 8), bool),
           "pooled": rng.standard_normal((4, 16)).astype(np.float32),
           "micro": np.ones((4, 6), np.float32)}
  null = step_lib.null_text_arrays(build_text_encoder(c.text))
  fn = step_lib.jit_train_step(c, graphdef, tx, shardings, shd.batch_shardings(batch, mesh, rules),
                               mesh, donate=False)
  fn = fn.lower(state, shd.shard_batch(batch, mesh, rules), null).compile(opts)
  return fn, state, batch, null, mesh, rules


def test_nonfinite_step_is_skipped(setup):
  fn, state, batch, null, mesh, rules = setup
  bad = dict(batch, latents=np.full_like(batch["latents"], np.nan))
  s1, m1 = fn(state, shd.shard_batch(bad, mesh, rules), null)
  assert not bool(m1["finite"])
  assert int(s1.skipped) == 1 and int(s1.bad_streak) == 1 and int(s1.step) == 1
  for a, b in zip(jax.tree.leaves((state.params, state.ema_params, state.opt_state)),
                  jax.tree.leaves((s1.params, s1.ema_params, s1.opt_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  s2, m2 = fn(s1, shd.shard_batch(bad, mesh, rules), null)
  assert int(s2.bad_streak) == 2
  s3, m3 = fn(s2, shd.shard_batch(batch, mesh, rules), null)
  assert bool(m3["finite"]) and np.isfinite(float(m3["loss"]))
  assert int(s3.skipped) == 2 and int(s3.bad_streak) == 0
  # From init only the zero-initialised output layer gets gradients (adaLN-zero style DiT).
  for tree in ("params", "ema_params"):
    old = getattr(state, tree)["final"]["linear"]["kernel"].get_value()
    new = getattr(s3, tree)["final"]["linear"]["kernel"].get_value()
    assert not np.array_equal(np.asarray(old), np.asarray(new)), tree
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(s3.params))
  # The bucketed loss sums add up to the batch loss.
  np.testing.assert_allclose(float(np.sum(m3["t_bucket_loss_sum"])) / 4, float(m3["loss"]),
                             rtol=1e-5)
  assert float(np.sum(m3["t_bucket_count"])) == 4
