"""The train step gives the same loss and parameters on every mesh; states are sharded by the rules."""
import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from experiments.configs import demo
from stiv_jax import sharding as shd
from stiv_jax.models.encoders.base import build_text_encoder
from stiv_jax.train import optimizer as opt_lib
from stiv_jax.train import state as state_lib
from stiv_jax.train import step as step_lib

MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (1, 4, 2), (2, 2, 2)]
NUM_STEPS = 2


def _config():
  c = demo.get_config("tiny")
  c.model.depth = 1
  c.model.mask_decoder_depth = 1   # exercises the decoder stack and its activation constraint
  c.model.micro_conditions = False
  c.optimizer.warmup_steps = 0
  return c


def _batch(c, b=8):
  rng = np.random.default_rng(0)
  m = c.model
  return {"latents": rng.standard_normal((b, m.num_frames, m.latent_height, m.latent_width,
                                          m.latent_channels)).astype(np.float32),
          "text": rng.standard_normal((b, c.text.max_length, c.text.dim)).astype(np.float32),
          "text_mask": np.arange(c.text.max_length)[None].repeat(b, 0) < 5,
          "pooled": rng.standard_normal((b, c.text.dim)).astype(np.float32),
          "micro": np.tile(np.array([32, 32, 0, 0, 1, 4], np.float32), (b, 1))}


def _run(shape):
  c = _config()
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = shape
  shd.set_partitioner(c.mesh)
  mesh = shd.make_mesh(c.mesh, jax.devices()[:int(np.prod(shape))])
  rules = shd.rules_from_config(c.mesh.rules)
  tx = opt_lib.make_optimizer(c.optimizer)
  opts = step_lib.compiler_options(c)
  graphdef, state, shardings = state_lib.create_train_state(
      lambda: state_lib.build_model(c.model, c.seed), tx, mesh, rules, opts)
  batch = _batch(c)
  fn = step_lib.jit_train_step(c, graphdef, tx, shardings, shd.batch_shardings(batch, mesh, rules),
                               mesh)
  null = step_lib.null_text_arrays(build_text_encoder(c.text))
  fn = fn.lower(state, shd.shard_batch(batch, mesh, rules), null).compile(opts)
  losses = []
  for _ in range(NUM_STEPS):
    state, m = fn(state, shd.shard_batch(batch, mesh, rules), null)
    losses.append(float(m["loss"]))
  return mesh, rules, state, losses


@pytest.fixture(scope="module")
def reference():
  _, _, state, losses = _run(MESHES[0])
  return jax.tree.map(np.asarray, state.params), losses


@pytest.mark.parametrize("shape", MESHES[1:], ids=lambda s: "x".join(map(str, s)))
def test_same_loss_params_and_shardings(reference, shape):
  ref_params, ref_losses = reference
  mesh, rules, state, losses = _run(shape)
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
  for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(np.asarray(b), a, rtol=1e-4, atol=1e-6)

  # Every parameter and its EMA is sharded as the rules say.
  flat = jax.tree_util.tree_flatten_with_path(state.params, is_leaf=shd._is_variable)[0]
  ema = jax.tree.leaves(state.ema_params)
  for (path, var), e in zip(flat, ema):
    want = shd.logical_to_mesh(shd._leaf_logical(var), var.get_value().shape, mesh, rules)
    assert var.get_value().sharding.spec == want, path
    assert e.sharding.spec == want, path
  data, fsdp, tensor = shape
  fc1 = state.params["blocks"]["fc1"]["kernel"].get_value()      # (layers, embed, mlp)
  assert fc1.sharding.spec == P(None, "fsdp", "tensor")
  assert fc1.addressable_shards[0].data.shape == (1, 64 // fsdp, 256 // tensor)

  # AdaFactor's factored moments keep the parameter's rank (reduced axes of size 1) and its
  # sharding on the other axes (stiv_jax/train/optimizer.py, factor_rule='logical').
  rms = next(s for s in state.opt_state if hasattr(s, "v_row"))
  v_row = rms.v_row["blocks"]["fc1"]["kernel"].get_value()        # mlp (column) reduced
  v_col = rms.v_col["blocks"]["fc1"]["kernel"].get_value()        # embed (row) reduced
  assert v_row.shape == (1, 64, 1) and v_col.shape == (1, 1, 256)
  assert v_row.sharding.spec == P(None, "fsdp", None)
  assert v_col.sharding.spec == P(None, None, "tensor")
  assert v_row.addressable_shards[0].data.shape == (1, 64 // fsdp, 1)
  assert state.step.sharding.is_fully_replicated


def test_mesh_shape_and_rules():
  cfg = ml_collections.ConfigDict({"data": -1, "fsdp": 2, "tensor": 2})
  assert shd.mesh_shape(cfg, 8) == (2, 2, 1, 2)   # a config without 'context' has context 1
  assert shd.mesh_shape(shd.mesh_config(data=-1, context=4), 8) == (2, 1, 4, 1)
  with pytest.raises(ValueError, match="only one axis"):
    shd.mesh_shape(ml_collections.ConfigDict({"data": -1, "fsdp": -1, "tensor": 1}), 8)
  with pytest.raises(ValueError, match="needs 6 devices"):
    shd.mesh_shape(ml_collections.ConfigDict({"data": 3, "fsdp": 2, "tensor": 1}), 8)
  with pytest.raises(ValueError, match="mesh.rules.embed"):
    shd.rules_from_config({"embed": "model"})
  rules = shd.rules_from_config(shd.default_rules())
  mesh = shd.make_mesh(cfg)
  assert mesh.axis_names == shd.MESH_AXES
  assert shd.logical_to_mesh(("embed", "mlp"), (64, 256), mesh, rules) == P("fsdp", "tensor")
  # A dim the mesh axis does not divide is replicated; an axis is used at most once.
  assert shd.logical_to_mesh(("embed", "heads"), (63, 2), mesh, rules) == P(None, "tensor")
  assert shd.logical_to_mesh(("embed", "embed"), (64, 64), mesh, rules) == P("fsdp", None)
  assert shd.batch_spec(rules, 3) == P(("data", "fsdp"), None, None)
  # A merged dim takes the axes of each logical name, major first (a size-1 axis is harmless).
  assert shd.logical_to_mesh((("batch", "frames"), None), (16, 3), mesh, rules) == P(
      ("data", "fsdp", "context"), None)
  mesh4 = shd.make_mesh(shd.mesh_config(data=2, context=2, tensor=2), jax.devices()[:8])
  assert shd.logical_to_mesh((("batch", "frames"), "heads"), (8, 2), mesh4, rules) == P(
      ("data", "fsdp", "context"), "tensor")
  data_only = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  assert shd.logical_to_mesh(("batch", "frames"), (8, 4), data_only, rules) == P("data", None)


def test_activation_constraints_follow_the_rules():
  """partitioning.constrain is a no-op without rules; with them it pins the logical layout,
  and the layout switch moves the split from frames to spatial positions."""
  import jax.numpy as jnp
  from jax.sharding import NamedSharding

  from stiv_jax.models import partitioning as part

  mesh = shd.make_mesh(shd.mesh_config(data=2, fsdp=2, context=2), jax.devices()[:8])
  rules = shd.rules_from_config(shd.default_rules())
  x = jnp.arange(8 * 4 * 6 * 3, dtype=jnp.float32).reshape(8, 4, 6, 3)   # [B, Tp, K, D]
  assert part.constrain(x, part.FRAMES) is x

  def f(x):
    frames = part.constrain(x * 2, part.FRAMES)
    return frames, part.to_positions(frames)

  frames, positions = jax.jit(shd.under_rules(f, mesh, rules))(
      jax.device_put(x, NamedSharding(mesh, P())))
  split = NamedSharding(mesh, P(("data", "fsdp"), "context", None, None))
  assert frames.sharding.is_equivalent_to(split, 4)
  assert positions.sharding.is_equivalent_to(split, 4)
  assert positions.shape == (8, 6, 4, 3)
  assert frames.addressable_shards[0].data.shape == (2, 2, 6, 3)
  assert positions.addressable_shards[0].data.shape == (2, 3, 4, 3)
  np.testing.assert_array_equal(np.asarray(positions), 2 * np.asarray(x).transpose(0, 2, 1, 3))
