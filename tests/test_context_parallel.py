"""Context parallelism: a clip's frames (spatial attention) and spatial positions (temporal
attention) split over the 'context' mesh axis give the one-device loss, gradients, updated
parameters and sampled video; the all-to-alls are where the layouts change; bad sizes fail early.

One train compile per mesh (MaskDiT on and off, remat policies, in one program) and
fast-compile XLA options (train.fast_compile).
"""
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from experiments.configs import demo
from stiv_jax import sampling
from stiv_jax import sharding as shd
from stiv_jax.bench.sample import t2v_cond
from stiv_jax.models.encoders.base import build_text_encoder
from stiv_jax.train import optimizer as opt_lib
from stiv_jax.train import state as state_lib
from stiv_jax.train import step as step_lib

MESHES = {"context2_data4": dict(context=2, data=4),
          "context4_fsdp2": dict(context=4, fsdp=2),
          "context2_fsdp2_tensor2": dict(context=2, fsdp=2, tensor=2)}
ONE = dict(data=1)
BATCH = 8
REMATS = ("full", "save_self_attn", "save_dots_no_batch")


def _config(mesh: dict, masked: bool = True, remat: str = "none") -> ml_collections.ConfigDict:
  c = demo.get_config("tiny")
  c.model.num_frames = 8           # 4 token frames: divisible by context=4
  c.model.depth = 1
  c.model.mask_decoder_depth = 1
  c.model.mask_ratio = 0.5 if masked else 0.0   # 16 positions, 8 kept: both divide 4
  c.model.remat = remat
  c.optimizer.warmup_steps = 0
  c.mesh = shd.mesh_config(**{"data": 1, **mesh})
  return c


def _batch(c):
  rng = np.random.default_rng(0)
  m = c.model
  n = c.text.max_length
  return {"latents": rng.standard_normal((BATCH, m.num_frames, m.latent_height, m.latent_width,
                                          m.latent_channels)).astype(np.float32),
          "text": rng.standard_normal((BATCH, n, c.text.dim)).astype(np.float32),
          "text_mask": np.arange(n)[None].repeat(BATCH, 0) < np.arange(3, 3 + BATCH)[:, None],
          "pooled": rng.standard_normal((BATCH, c.text.dim)).astype(np.float32),
          "micro": np.tile(np.array([32, 32, 0, 0, 1, 8], np.float32), (BATCH, 1))}


@pytest.fixture(scope="module")
def initial():
  """The initial train state on the host, with random non-zero parameters (the final layer
  starts at zero, which hides most gradients): the same start on every mesh."""
  c = _config(ONE)
  tx = opt_lib.make_optimizer(c.optimizer)
  mesh = shd.make_mesh(c.mesh, jax.devices()[:1])
  _, state, _ = state_lib.create_train_state(
      lambda: state_lib.build_model(c.model, c.seed), tx, mesh,
      shd.rules_from_config(c.mesh.rules), step_lib.compiler_options(c))
  state = jax.tree.map(np.asarray, state)
  rng = np.random.default_rng(7)
  params = jax.tree.map(lambda x: (0.3 * rng.standard_normal(x.shape) + (x.ndim <= 2))
                        .astype(x.dtype), state.params)
  return state.replace(params=params, ema_params=params)


def _run(initial, mesh_sizes: dict, remats: tuple[str, ...] = ()):
  """One compile on the mesh of: the real train_step and the gradient of its loss, with MaskDiT
  on and off -> {'maskdit'|'unmasked': (loss, grads, updated params)}, and with `remats` given
  only the MaskDiT gradients under each of those remat policies -> {policy: grads}; + HLO."""
  c = _config(mesh_sizes)
  n = int(np.prod([v for v in mesh_sizes.values()]))
  mesh = shd.make_mesh(c.mesh, jax.devices()[:n])
  rules = shd.rules_from_config(c.mesh.rules)
  shd.validate_model_mesh(c.model, dict(mesh.shape), rules)
  tx = opt_lib.make_optimizer(c.optimizer)
  graphdef, _, shardings = state_lib.abstract_train_state(
      lambda: state_lib.build_model(c.model, c.seed), tx, mesh, rules)
  state = jax.device_put(initial, shardings)
  host_batch = _batch(c)
  batch = shd.shard_batch(host_batch, mesh, rules)
  null = step_lib.null_text_arrays(build_text_encoder(c.text))

  def grads(cfg, state, batch, null):
    g = nnx.graphdef(nnx.eval_shape(lambda: state_lib.build_model(cfg.model, cfg.seed)))
    rngs = step_lib.step_rngs(cfg.seed, state.step)
    inputs = step_lib.prepare_inputs(cfg, batch, null, rngs)
    key = rngs["mask"] if float(cfg.model.mask_ratio) > 0 else None
    return jax.grad(lambda p: step_lib.loss_and_aux(cfg, g, p, state.rest, inputs,
                                                    key)[0])(state.params)

  def all_steps(state, batch, null):
    out = {}
    for name, masked in (("maskdit", True), ("unmasked", False)):
      cfg = _config(mesh_sizes, masked)
      g = nnx.graphdef(nnx.eval_shape(lambda: state_lib.build_model(cfg.model, cfg.seed)))
      new_state, metrics = step_lib.train_step(cfg, g, tx, state, batch, null)
      out[name] = (metrics["loss"], grads(cfg, state, batch, null), new_state.params)
    for remat in remats:
      out[remat] = grads(_config(mesh_sizes, True, remat), state, batch, null)
    return out

  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  fn = jax.jit(shd.under_rules(all_steps, mesh, rules),
               in_shardings=(shardings, shd.batch_shardings(host_batch, mesh, rules), rep))
  fn = fn.lower(state, batch, null).compile(step_lib.compiler_options(c))
  return jax.tree.map(np.asarray, fn(state, batch, null)), fn.as_text()


@pytest.fixture(scope="module")
def reference(initial):
  return _run(initial, ONE, REMATS)[0]


def _close(got, want, rtol, atol):
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(b, a, rtol=rtol, atol=atol)


def _close_grads(got, want, tol=1e-3):
  """Each gradient within tol of its tensor's largest entry (float32 sums split over devices
  differ by ~1e-4 of it; the partitioner bugs this guards against were off by O(1))."""
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(want)[0], jax.tree.leaves(got)):
    scale = float(np.abs(a).max())
    err = float(np.abs(b - a).max())
    assert err <= tol * scale + 1e-6, (jax.tree_util.keystr(path), err, scale)


@pytest.mark.parametrize("name", list(MESHES))
def test_train_step_matches_one_device(initial, reference, name):
  """Loss, gradients and updated parameters with MaskDiT on and off; on the three-axis mesh
  also the gradients under every remat policy."""
  remats = REMATS if "tensor" in MESHES[name] else ()
  got, hlo = _run(initial, MESHES[name], remats)
  for mode in ("maskdit", "unmasked"):
    loss, grads, params = reference[mode]
    got_loss, got_grads, got_params = got[mode]
    assert abs(loss) > 0.1 and max(float(np.abs(g).max()) for g in jax.tree.leaves(grads)) > 0.01
    np.testing.assert_allclose(got_loss, loss, rtol=2e-5, err_msg=mode)
    _close_grads(got_grads, grads)
    # atol 5e-5: after one AdaFactor update a parameter near 0.0075 differed by 2.4e-5 from the
    # one-device step on a 2-core machine of the sixth session (float sums in another order).
    _close(got_params, params, rtol=1e-4, atol=5e-5)
  for remat in remats:
    _close_grads(got[remat], reference[remat])
    _close_grads(got[remat], reference["maskdit"][1])
  # The layouts change by all-to-alls (two per block and direction, 2 blocks, fwd + bwd, x 4
  # computations at least).
  assert len(re.findall(r"all-to-all\(", hlo)) >= 8, name


@pytest.fixture(scope="module")
def sampled(initial):
  """(model with the random initial parameters, sampler config, rules, inputs, the one-device
  JIT-CFG sample: 2 Euler steps of a 2-clip t2v batch)."""
  c = _config(ONE, masked=False)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: state_lib.build_model(c.model, c.seed)))
  model = nnx.merge(graphdef, initial.params, initial.rest)
  cond, null = t2v_cond(c.model, 2, int(c.text.max_length))
  scfg = sampling.SamplerConfig(steps=2, guidance=3.0)
  rules = shd.rules_from_config(c.mesh.rules)
  one = shd.make_mesh(c.mesh, jax.devices()[:1])
  ref = sampling.Sampler(model, scfg, one, rules=rules)(cond, null, seed=5)
  return model, scfg, rules, cond, null, ref


@pytest.mark.parametrize("name", list(MESHES))
def test_sampled_video_matches_one_device(sampled, name):
  model, scfg, rules, cond, null, ref = sampled
  mesh = shd.make_mesh(shd.mesh_config(**{"data": 1, **MESHES[name]}), jax.devices()[:8])
  sampler = sampling.Sampler(model, scfg, mesh, rules=rules)
  assert dict(sampler.layout.rules)["frames"] == ("context",)
  got = sampler(cond, null, seed=5)
  scale = float(np.abs(ref).max())   # guidance 3 on a random model: latents reach ~70
  assert scale > 0.1
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-5 * scale)
  if name != "context4_fsdp2":
    return
  # The sampler's step switches layouts by all-to-alls too (inputs replicated: 2 samples x 2
  # branches split over fsdp=2; frames / positions over context=4).
  pad, sharded = sampler.padding(2)
  assert (pad, sharded) == (0, True)
  bs = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sampler.batch_axes))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  put = lambda a, s=bs: jax.device_put(jnp.asarray(a), s)  # noqa: E731
  conds = {k: put(v.astype(bool) if k == "cond_mask" else v) for k, v in cond.items()}
  nulls = {k: put(np.broadcast_to(v, (2,) + v.shape[1:])) for k, v in null.items()}
  x = put(np.zeros(ref.shape, np.float32))
  hlo = sampler.step_for(sharded).lower(
      sampler.params, x, np.int32(0), put(np.linspace(0, 1, 3, dtype=np.float32), rep), conds,
      nulls, x, jax.random.key(0)).compile(step_lib.FAST_COMPILE_OPTIONS).as_text()
  assert len(re.findall(r"all-to-all\(", hlo)) >= 4


def test_frames_must_divide_the_context_axis():
  c = _config(dict(context=4, data=2), masked=True)
  rules = shd.rules_from_config(c.mesh.rules)
  sizes = dict(zip(shd.MESH_AXES, shd.mesh_shape(c.mesh, 8)))
  shd.validate_model_mesh(c.model, sizes, rules)
  c.model.num_frames = 12          # 6 token frames over context=4
  with pytest.raises(ValueError, match=r"mesh.context=4 does not divide the 6 token frames of "
                                       r"model.num_frames=12 \(patch_t=2\)"):
    shd.validate_model_mesh(c.model, sizes, rules)
  c.model.num_frames = 8
  c.model.latent_height = 12       # 6 x 4 = 24 positions, 12 kept: fine
  shd.validate_model_mesh(c.model, sizes, rules)
  c.model.latent_height = 10       # 5 x 4 = 20 positions, but 10 kept
  with pytest.raises(ValueError, match=r"does not divide the 10 MaskDiT-kept positions of the "
                                       r"10x8 latent"):
    shd.validate_model_mesh(c.model, sizes, rules)
  c.model.latent_height = 6
  c.model.latent_width = 6         # 3 x 3 = 9 positions
  with pytest.raises(ValueError, match=r"does not divide the 9 spatial positions of the 6x6"):
    shd.validate_model_mesh(c.model, sizes, rules)
  c.model.latent_width = 8
  c.model.latent_height = 8
  c.mesh.rules.positions = ""
  with pytest.raises(ValueError, match=r"mesh.rules.positions=''"):
    shd.validate_model_mesh(c.model, sizes, shd.rules_from_config(c.mesh.rules))
