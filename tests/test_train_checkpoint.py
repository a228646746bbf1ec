"""Checkpoints restore onto another mesh; load_ema_model gives the EMA parameters; keep policy."""
import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from experiments.configs import demo
from stiv_jax import sharding as shd
from stiv_jax.train import checkpoint as ckpt_lib
from stiv_jax.train import optimizer as opt_lib
from stiv_jax.train import state as state_lib
from stiv_jax.train import step as step_lib


def _cfg(data, fsdp, tensor):
  c = demo.get_config("tiny")
  c.model.depth = 1
  c.model.mask_decoder_depth = 1
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = data, fsdp, tensor
  c.checkpoint.keep_last = 2
  c.checkpoint.keep_every = 4
  c.checkpoint.async_save = True
  return c


def test_restore_on_other_mesh_and_load_ema(tmp_path):
  c = _cfg(8, 1, 1)
  make = lambda: state_lib.build_model(c.model, c.seed)  # noqa: E731
  tx = opt_lib.make_optimizer(c.optimizer)
  mesh = shd.make_mesh(c.mesh)
  rules = shd.rules_from_config(c.mesh.rules)
  _, state, _ = state_lib.create_train_state(make, tx, mesh, rules, step_lib.compiler_options(c))
  # Make EMA differ from params so the test can tell them apart.
  state = state.replace(ema_params=jax.tree.map(lambda x: x * 0.5 + 1.0, state.ema_params))
  ckpt_lib.save_config(str(tmp_path), c)
  ck = ckpt_lib.Checkpointer(str(tmp_path), c.checkpoint, with_data=False)
  for step in range(1, 7):
    ck.save(step, state, force=True)
  ck.close()
  # keep_last=2 plus every 4th step.
  assert sorted(ckpt_lib.Checkpointer(str(tmp_path), c.checkpoint, with_data=False)
                .all_steps()) == [4, 5, 6]

  c2 = _cfg(1, 4, 2)
  mesh2 = shd.make_mesh(c2.mesh)
  _, target, _ = state_lib.abstract_train_state(make, tx, mesh2, rules)
  ck2 = ckpt_lib.Checkpointer(str(tmp_path), c2.checkpoint, with_data=False)
  restored = ck2.restore(6, target)
  ck2.close()
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  fc1 = restored.params["blocks"]["fc1"]["kernel"].get_value()
  assert fc1.sharding.mesh.shape == mesh2.shape
  assert fc1.sharding.spec == P(None, "fsdp", "tensor")
  assert fc1.addressable_shards[0].data.shape == (1, 16, 128)

  config, model = ckpt_lib.load_ema_model(str(tmp_path))
  assert config.model.hidden == c.model.hidden
  np.testing.assert_array_equal(np.asarray(model.patch.kernel[...]),
                                np.asarray(state.ema_params["patch"]["kernel"].get_value()))
