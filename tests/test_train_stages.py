"""Progressive init: T2I -> T2V inflation, spatial/temporal from two sources, RoPE factors, errors."""
import jax
import numpy as np
import pytest

from experiments.configs import demo
from stiv_jax import sharding as shd
from stiv_jax.models.embeddings import inflate_patch_kernel
from stiv_jax.train import checkpoint as ckpt_lib
from stiv_jax.train import optimizer as opt_lib
from stiv_jax.train import stages
from stiv_jax.train import state as state_lib
from stiv_jax.train import step as step_lib


def _cfg(image=False, seed=0):
  c = demo.get_config("tiny")
  c.model.depth = 1
  c.model.mask_decoder_depth = 1
  c.seed = seed
  c.mesh.data = 1
  if image:
    c.model.num_frames, c.model.patch_t, c.model.temporal_attention = 1, 1, False
  return c


def _state(c):
  mesh = shd.make_mesh(c.mesh, jax.devices()[:1])
  rules = shd.rules_from_config(c.mesh.rules)
  return state_lib.create_train_state(lambda: state_lib.build_model(c.model, c.seed),
                                      opt_lib.make_optimizer(c.optimizer), mesh, rules,
                                      step_lib.compiler_options(c))


def _save(c, workdir):
  _, state, _ = _state(c)
  ckpt_lib.save_config(workdir, c)
  ck = ckpt_lib.Checkpointer(workdir, c.checkpoint, with_data=False)
  ck.save(7, state, force=True)
  ck.close()
  return {stages._name(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(state.ema_params)[0]}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  root = tmp_path_factory.mktemp("stages")
  t2i, t2v = str(root / "t2i"), str(root / "t2v")
  return {"t2i": (t2i, _save(_cfg(image=True, seed=1), t2i)),
          "t2v": (t2v, _save(_cfg(seed=2), t2v))}


def _flat(params):
  return {stages._name(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_t2i_to_t2v(sources):
  path, src = sources["t2i"]
  c = _cfg(seed=3)
  c.init.sources = [{"path": path}]
  c.init.allow_missing = "temporal"
  _, fresh, shardings = _state(c)
  before = _flat(fresh.params)
  state, report = stages.init_from_sources(c, fresh, shardings)
  after, ema = _flat(state.params), _flat(state.ema_params)
  assert set(report.inflated) == {"patch/kernel", "final/linear/kernel", "final/linear/bias"}
  np.testing.assert_array_equal(after["final/linear/kernel"][:, 16:],
                                src["final/linear/kernel"])
  np.testing.assert_allclose(after["patch/kernel"],
                             inflate_patch_kernel(src["patch/kernel"], 2, "mean"), rtol=1e-6)
  np.testing.assert_array_equal(after["blocks/spatial/q/kernel"], src["blocks/spatial/q/kernel"])
  np.testing.assert_array_equal(ema["blocks/spatial/q/kernel"], src["blocks/spatial/q/kernel"])
  # Temporal attention is new: fresh, listed by name, and only it.
  assert report.missing and all("temporal" in n for n in report.missing)
  np.testing.assert_array_equal(after["blocks/temporal/q/kernel"], before["blocks/temporal/q/kernel"])
  assert "temporal" in report.summary()


def test_spatial_from_one_temporal_from_another(sources):
  (p1, s1), (p2, s2) = sources["t2i"], sources["t2v"]
  c = _cfg(seed=3)
  c.init.sources = [{"path": p1}, {"path": p2, "include": "temporal"}]
  _, fresh, shardings = _state(c)
  state, report = stages.init_from_sources(c, fresh, shardings)
  after = _flat(state.params)
  assert not report.missing
  np.testing.assert_array_equal(after["blocks/temporal/k/kernel"], s2["blocks/temporal/k/kernel"])
  np.testing.assert_array_equal(after["blocks/fc1/kernel"], s1["blocks/fc1/kernel"])
  assert report.loaded["blocks/temporal/k/kernel"] == p2


def test_missing_and_mismatched_are_errors(sources):
  path, _ = sources["t2i"]
  c = _cfg()
  c.init.sources = [{"path": path}]
  _, fresh, shardings = _state(c)
  with pytest.raises(ValueError, match="blocks/temporal/q/kernel"):
    stages.init_from_sources(c, fresh, shardings)          # temporal not allowed to be missing
  target = {"cond/text/kernel": jax.ShapeDtypeStruct((32, 64), np.float32)}
  src = {"cond/text/kernel": np.zeros((16, 64), np.float32)}
  with pytest.raises(ValueError, match=r"cond/text/kernel: source \(16, 64\)"):
    stages.merge_params(target, [({"path": "x", "include": ".*", "exclude": ""}, src)],
                        patch_t=2, inflation="mean")


def test_rope_factors_from_source_config(sources):
  path, _ = sources["t2v"]                 # 4 frames, 8x8 latents, patches 2 -> grid (2, 4)
  c = _cfg()
  c.model.num_frames, c.model.latent_height, c.model.latent_width = 8, 16, 16
  c.init.rope_from_config = path
  stages.prepare_config(c)
  assert c.model.rope_scale_t == pytest.approx(0.5)
  assert c.model.rope_scale_s == pytest.approx(0.5)
