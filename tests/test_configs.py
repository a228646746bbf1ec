"""Stage configs: every paper stage builds (paper sizes and `local`), its init chain points at
real stages, and two train steps of each (`tiny`, the local run at the unit-test model) run."""
from __future__ import annotations

import importlib
import json

import jax
import numpy as np
import pytest

from experiments.configs import stages
from stiv_jax import conditioning
from stiv_jax import sharding as shd
from stiv_jax.train import loop
from stiv_jax.train import optimizer as opt_lib
from stiv_jax.train import state as state_lib
from stiv_jax.train import step as step_lib

STAGE_FILES = ("t2i", "t2v", "stiv256", "stiv512", "continue40", "sft", "unmask_sft", "tup",
               "v2v", "long_keyframe", "long_interp", "multiview")
# XLA CPU options that cut compile time of the test steps (codegen quality is irrelevant here).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _config(name: str, arg: str):
  return importlib.import_module(f"experiments.configs.{name}").get_config(arg)


def _stage_names() -> dict[str, str]:
  """stage.name -> file, including t2i's 512 variant."""
  out = {_config(f, "XL").stage.name: f for f in STAGE_FILES}
  out[_config("t2i", "XL,512").stage.name] = "t2i"
  return out


@pytest.mark.parametrize("name", STAGE_FILES)
def test_stage_builds_and_validates(name):
  names = _stage_names()
  for arg in ("XL", "XXL", "M,root=gs://b/stiv"):
    c = _config(name, arg)
    chips = int(c.stage.topology.split("-")[1]) // (2 if c.stage.topology.startswith("v5p") else 1)
    loop.validate_config(c, num_devices=chips, process_count=chips // 4)
    assert c.model.size == arg.split(",")[0] and c.stage.workdir.endswith(f"_{c.model.size}")
    assert c.model.latent_height * 8 == c.stage.resolution
    assert c.mesh.rules.text_embed == "fsdp" and c.model.dtype == "bfloat16"
    # Every init source is the canonical workdir of a stage that exists.
    for src, stage in zip(c.init.sources, c.stage.starts_from.split(",")):
      assert stage in names, stage
      assert src["path"] == stages.stage_workdir(arg.partition("root=")[2] or stages.DEFAULT_ROOT,
                                                 stage, c.model.size)
  local = _config(name, "local")
  loop.validate_config(local, num_devices=8, process_count=1)
  assert local.stage.local and local.train.num_steps <= 10 and local.model.size == "demo"
  assert local.stage.prep_command.startswith("stiv-prep synth-shards")
  assert f"--frames={local.model.num_frames}" in local.stage.prep_command
  with pytest.raises(ValueError, match=f"{name}.py.*'bogus'"):
    _config(name, "XL,bogus")


def test_paper_recipe_values():
  t2i, t2v, stiv = _config("t2i", "XL"), _config("t2v", "XL"), _config("stiv256", "XL")
  assert (t2i.data.batch_size, t2v.data.batch_size) == (4096, 1024)
  assert t2i.model.num_frames == 1 and not t2i.model.temporal_attention
  assert t2v.model.num_frames == 20 and t2v.model.mask_ratio == 0.5
  assert t2v.init.allow_missing == stages.TEMPORAL_REGEX
  assert dict(stiv.conditioning.tasks) == {"none": 0.5, "first": 0.5}
  assert (stiv.conditioning.text_dropout, stiv.conditioning.image_dropout) == (0.1, 0.08)
  assert (stiv.optimizer.lr, stiv.optimizer.beta1, stiv.optimizer.beta2) == (2e-4, 0.9, 0.999)
  s512 = _config("stiv512", "M")
  assert [s["exclude"] for s in s512.init.sources] == [stages.TEMPORAL_REGEX, ""]
  assert s512.init.sources[1]["include"] == stages.TEMPORAL_REGEX
  assert _config("continue40", "M").init.rope_from_config.endswith("stiv512_M")
  assert _config("unmask_sft", "M").model.mask_ratio == 0.0
  assert dict(_config("tup", "M").conditioning.tasks) == {"every_other": 1.0}
  assert dict(_config("multiview", "XL").conditioning.tasks) == {"multiview": 1.0}
  assert _config("t2i", "XL,512").model.latent_height == 64


def _batch(c, rng):
  m, b, n = c.model, c.data.batch_size, c.text.max_length
  return {"latents": rng.standard_normal(
              (b, m.num_frames, m.latent_height, m.latent_width, m.latent_channels), np.float32),
          "text": rng.standard_normal((b, n, m.text_dim), np.float32),
          "text_mask": np.arange(n)[None].repeat(b, 0) < 5,
          "pooled": rng.standard_normal((b, m.text_dim), np.float32),
          "micro": np.tile(np.array([256, 256, 0, 0, 3, m.num_frames], np.float32), (b, 1))}


@pytest.fixture(scope="module")
def prepared():
  """For every stage's `tiny` config: state, batch and compiled step, on one device.

  Initial states are built eagerly (no init compile) and shared by equal model configs; steps
  are shared by equal step configs and compiled two at a time (XLA compiles outside the GIL).
  """
  from concurrent.futures import ThreadPoolExecutor

  from flax import nnx

  from stiv_jax.models.encoders import build_text_encoder
  mesh = shd.make_mesh(shd.mesh_config(data=1), jax.devices()[:1])
  states, lowered, out = {}, {}, {}
  for name in STAGE_FILES:
    c = _config(name, "tiny")
    rules = shd.rules_from_config(c.mesh.rules)
    tx = opt_lib.make_optimizer(c.optimizer)
    key = json.dumps([c.model.to_dict(), c.optimizer.min_dim_size_to_factor], sort_keys=True)
    if key not in states:
      model = state_lib.build_model(c.model, c.seed)
      state = state_lib.init_from_model(model, tx)
      shardings = shd.named(mesh, state_lib.state_specs(state, mesh, rules))
      states[key] = (nnx.graphdef(model), jax.device_put(state, shardings), shardings)
    graphdef, state0, shardings = states[key]
    host = _batch(c, np.random.default_rng(0))
    bsh = shd.batch_shardings(host, mesh, rules)
    batch = shd.shard_batch(host, mesh, rules)
    null = step_lib.null_text_arrays(build_text_encoder(c.text))
    step_key = json.dumps([c.to_dict()[k] for k in ("seed", "model", "flow", "conditioning",
                                                    "optimizer")], sort_keys=True, default=str)
    if step_key not in lowered:
      fn = step_lib.jit_train_step(c, graphdef, tx, shardings, bsh, mesh)
      lowered[step_key] = fn.lower(state0, batch, null)
    out[name] = (c, state0, batch, null, step_key)
  with ThreadPoolExecutor(max_workers=2) as pool:
    futures = {k: pool.submit(lo.compile, compiler_options=FAST_COMPILE)
               for k, lo in lowered.items()}
    compiled = {k: f.result() for k, f in futures.items()}
  return {name: (c, state0, batch, null, compiled[k]) for name, (c, state0, batch, null, k)
          in out.items()}


@pytest.mark.parametrize("name", STAGE_FILES)
def test_two_train_steps(prepared, name):
  c, state0, batch, null, compiled = prepared[name]
  assert c.model.size == "small" and c.stage.name == _config(name, "XL").stage.name
  names, _, _ = conditioning.task_table(c.conditioning, c.model.num_frames)
  assert set(names) == set(c.conditioning.tasks)
  state = jax.tree.map(lambda x: x.copy(), state0)   # the step donates its input
  losses = []
  for _ in range(2):
    state, metrics = compiled(state, batch, null)
    losses.append(float(metrics["loss"]))
  assert int(state.step) == 2 and int(metrics["skipped_total"]) == 0
  assert all(np.isfinite(losses)), losses
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool((a != b).any()), state.params,
                                       state0.params))
  assert any(moved)   # the optimizer changed parameters
