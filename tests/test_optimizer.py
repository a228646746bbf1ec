"""AdaFactor factored over logical axes (and its shardings), AdamW, and the config checks."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from experiments.configs import demo
from stiv_jax import config_schema
from stiv_jax import sharding as shd
from stiv_jax.train import optimizer as opt_lib
from stiv_jax.train import state as state_lib


def _opt_cfg(**fields):
  c = config_schema.train_config().optimizer
  for k, v in fields.items():
    c[k] = v
  return c


def test_factor_axes_follow_logical_names():
  rule = "logical"
  # Attention kernel [layers, embed, heads, kv]: embed vs heads*kv although kv = 64 < 128.
  assert opt_lib.factor_axes((28, 1152, 18, 64), ("layers", "embed", "heads", "kv"), rule,
                             128) == ((1,), (2, 3))
  assert opt_lib.factor_axes((28, 18, 64, 1152), ("layers", "heads", "kv", "embed"), rule,
                             128) == ((3,), (1, 2))
  # The shape rule (optax) keeps that attention kernel whole.
  assert opt_lib.factor_axes((28, 1152, 18, 64), None, "shape", 128) is None
  # [cond, embed] has no column axis: the two largest non-layer axes.
  assert opt_lib.factor_axes((256, 1152), ("cond", "embed"), rule, 128) == ((1,), (0,))
  # The stacked-layers axis is never factored; a lone row axis stays whole.
  assert opt_lib.factor_axes((28, 1152), ("layers", "embed"), rule, 128) is None
  assert opt_lib.factor_axes((28, 6, 1152), ("layers", None, "embed"), rule, 128) is None
  assert opt_lib.factor_axes((1152,), ("embed",), rule, 128) is None
  # Both sides must reach min_dim_size_to_factor (joined sizes).
  assert opt_lib.factor_axes((28, 64, 2, 32), ("layers", "embed", "heads", "kv"), rule,
                             128) is None
  assert opt_lib.factor_axes((64, 64), ("embed", "mlp"), "none", 1) is None


def test_same_math_as_optax_on_plain_arrays():
  """Without names the logical transform factors the two largest axes, like optax."""
  params = {"w": jnp.ones((256, 160)), "b": jnp.ones((160,))}
  grads = {"w": jax.random.normal(jax.random.key(0), (256, 160)),
           "b": jax.random.normal(jax.random.key(1), (160,))}
  ref = optax.scale_by_factored_rms(decay_rate_fn=opt_lib._capped_decay(0.999))
  new = opt_lib.scale_by_logical_factored_rms(0.8, 128, 1e-30, opt_lib._capped_decay(0.999))
  s_ref, s_new = ref.init(params), new.init(params)
  up_ref, up_new = jax.jit(ref.update), jax.jit(new.update)
  for _ in range(3):
    u_ref, s_ref = up_ref(grads, s_ref, params)
    u_new, s_new = up_new(grads, s_new, params)
    for k in params:
      np.testing.assert_allclose(u_new[k], u_ref[k], rtol=1e-5)
  assert s_new.v_row["w"].shape == (256, 1) and s_new.v_col["w"].shape == (1, 160)


def _moment_elements(params, rule: str) -> int:
  tx = opt_lib.make_optimizer(_opt_cfg(factor_rule=rule))
  state = jax.eval_shape(tx.init, params)
  rms = next(s for s in state if hasattr(s, "v_row"))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves((rms.v_row, rms.v_col, rms.v)))


def test_xl_second_moments_shrink():
  """On the real XL model the attention kernels' second moments are factored: the moments
  shrink from ~0.47 B elements (optax's shape rule) to a few million."""
  from experiments.configs import t2v
  model_cfg = t2v.get_config("XL").model
  params = nnx.state(nnx.eval_shape(lambda: state_lib.build_model(model_cfg, 0)), nnx.Param)
  before, after = _moment_elements(params, "shape"), _moment_elements(params, "logical")
  assert before > 4e8 and after < 0.05 * before


def test_factored_moments_take_the_parameter_sharding():
  c = demo.get_config("tiny")
  c.model.depth = 1
  c.model.mask_decoder_depth = 0
  c.optimizer.min_dim_size_to_factor = 16
  mesh = shd.make_mesh(shd.mesh_config(data=2, fsdp=2, tensor=2), jax.devices()[:8])
  rules = shd.rules_from_config(c.mesh.rules)
  tx = opt_lib.make_optimizer(c.optimizer)
  _, target, shardings = state_lib.abstract_train_state(
      lambda: state_lib.build_model(c.model, c.seed), tx, mesh, rules)
  rms = next(s for s in shardings.opt_state if hasattr(s, "v_row"))
  q = ("blocks", "spatial", "q", "kernel")   # [layers, embed, heads, kv] -> (None, fsdp, tensor)

  def leaf(tree):
    for k in q:
      tree = tree[k]
    return tree.get_value() if hasattr(tree, "get_value") else tree

  assert leaf(shardings.params).spec == P(None, "fsdp", "tensor", None)
  assert leaf(rms.v_row).spec == P(None, "fsdp", None, None)     # heads*kv reduced
  assert leaf(rms.v_col).spec == P(None, None, "tensor", None)   # embed reduced
  t_rms = next(s for s in target.opt_state if hasattr(s, "v_row"))
  assert leaf(t_rms.v_row).shape == (1, 64, 1, 1)
  assert leaf(t_rms.v_col).shape == (1, 1, 2, 32)


def test_adamw_option_and_validation():
  params = {"w": jnp.full((4, 4), 2.0)}
  tx = opt_lib.make_optimizer(_opt_cfg(name="adamw", warmup_steps=0, lr=0.1, clip_norm=0.0))
  state = tx.init(params)
  leaves = jax.tree.leaves(state)
  assert sum(x.size for x in leaves if x.shape == (4, 4)) == 2 * 16   # mu and nu
  loss = lambda p: jnp.sum(jnp.square(p["w"]))

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(5):
    params, state = step(params, state)
  assert float(loss(params)) < 4 * 16
  for field, value, match in (("name", "sgd", "optimizer.name"),
                              ("factor_rule", "rows", "optimizer.factor_rule"),
                              ("adam_eps", 0.0, "optimizer.adam_eps")):
    with pytest.raises(ValueError, match=match):
      opt_lib.make_optimizer(_opt_cfg(**{field: value}))
