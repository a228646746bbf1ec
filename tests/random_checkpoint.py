"""Test helper: a workdir holding one checkpoint with random (non-zero) EMA weights, saved the
way `stiv-train` saves them (config.json, orbax checkpoint through the Checkpointer)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stiv_jax import sharding as shd
from stiv_jax.train import checkpoint as ckpt_lib
from stiv_jax.train import optimizer as opt_lib
from stiv_jax.train import state as state_lib


def one_device_mesh():
  return shd.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}),
                       jax.devices()[:1])


def write_random_checkpoint(workdir: str, config: ml_collections.ConfigDict, *, step: int = 1,
                            seed: int = 0, scale: float = 0.05, mesh=None) -> None:
  """Saves `config` and a train state whose EMA parameters are scale * N(0, 1) draws."""
  config.checkpoint.async_save = False
  rules = shd.rules_from_config(config.mesh.rules)
  tx = opt_lib.make_optimizer(config.optimizer)
  _, state, _ = state_lib.create_train_state(
      lambda: state_lib.build_model(config.model, config.seed), tx, mesh or one_device_mesh(),
      rules)
  rng = np.random.default_rng(seed)
  ema = jax.tree.map(lambda a: jax.device_put(
      jnp.asarray(scale * rng.standard_normal(a.shape), a.dtype), a.sharding), state.ema_params)
  ck = ckpt_lib.Checkpointer(workdir, config.checkpoint, with_data=False)
  ck.save(step, state.replace(ema_params=ema), force=True)
  ck.close()
  ckpt_lib.save_config(workdir, config)
