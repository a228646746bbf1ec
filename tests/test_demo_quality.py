"""The demo recipe learns what it is asked: a tiny model overfits one synthetic video (its
samples move the right way in the right color); the demo config and its benchmark's contract."""
import numpy as np
import pytest

import jax

from stiv_jax import config_schema as schema
from stiv_jax import sampling, video_io
from stiv_jax import sharding as shd
from stiv_jax.data import synthetic as corpus
from stiv_jax.eval import synthetic
from stiv_jax.models.encoders.base import build_text_encoder, build_vae
from stiv_jax.tasks import TaskRunner
from stiv_jax.train import optimizer as opt_lib
from stiv_jax.train import state as state_lib
from stiv_jax.train import step as step_lib

OVERFIT_STEPS = 400
BATCH = 8


def overfit_config():
  """The demo recipe at the unit-test size, one task (T2V), no text dropout: nothing but
  the one clip to learn."""
  c = schema.demo_train_config("tiny")
  # Absolute sin-cos positions as the recipe has them: with RoPE alone (relative positions) a
  # sample from pure noise can only place the shape by the noise, and at 150 steps half the
  # samples stood still or moved the wrong way (WORKSPACE.md, "Demo quality", seventh session).
  c.model, c.vae, c.text = schema.cpu_preset("tiny", mask_ratio=0.0, prediction="data",
                                             abs_pos_embed="sincos")
  c.flow = schema.demo_train_config().flow   # the recipe's t sampler (toward the noise end)
  c.conditioning.tasks = {"none": 1.0}
  c.conditioning.text_dropout = 0.0
  c.optimizer.lr = 3e-3
  c.optimizer.ema_decay = 0.0
  c.mesh.data = 1
  c.sampling.steps = 10
  c.sampling.guidance = 1.0
  return c


@pytest.fixture(scope="module")
def overfit():
  """(config, trained model, the clip's uint8 frames, its caption)."""
  c = overfit_config()
  vae, text = build_vae(c.vae), build_text_encoder(c.text)
  size, frames = c.model.latent_height * c.vae.spatial_factor, c.model.num_frames
  spec = corpus.shard_clip_spec(0, 3, size=size, frames=(frames,), fade_fraction=0.0)
  clip = corpus.render_video(spec, size=size)
  latents = np.asarray(vae.encode(video_io.to_unit(clip)), np.float32)
  caption = spec.scenes[0].caption
  tok, mask, pooled = text.encode_text([caption])
  batch = {"latents": np.repeat(latents[None], BATCH, 0), "text": np.repeat(tok, BATCH, 0),
           "text_mask": np.repeat(mask, BATCH, 0), "pooled": np.repeat(pooled, BATCH, 0),
           "micro": np.tile([[size, size, 0, 0, 1, frames]], (BATCH, 1)).astype(np.float32)}
  mesh = shd.make_mesh(c.mesh, devices=jax.devices()[:1])
  rules = shd.rules_from_config(c.mesh.rules)
  tx = opt_lib.make_optimizer(c.optimizer)
  graphdef, state, shardings = state_lib.create_train_state(
      lambda: state_lib.build_model(c.model, c.seed), tx, mesh, rules)
  sharded = shd.shard_batch(batch, mesh, rules)
  null = step_lib.null_text_arrays(text)
  fn = step_lib.jit_train_step(c, graphdef, tx, shardings,
                               shd.batch_shardings(batch, mesh, rules), mesh)
  fn = fn.lower(state, sharded, null).compile(step_lib.compiler_options(c))
  losses = []
  for _ in range(OVERFIT_STEPS):
    state, m = fn(state, sharded, null)
    losses.append(m["loss"])
  from flax import nnx
  model = nnx.merge(graphdef, state.params, state.rest)
  return c, model, clip, caption, [float(x) for x in jax.device_get(losses)]


def test_tiny_model_overfits_one_video(overfit):
  c, model, clip, caption, losses = overfit
  assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:5]), losses[::10]
  runner = TaskRunner(sampling.Sampler(model, sampling.SamplerConfig.from_config(c.sampling)),
                      build_text_encoder(c.text), build_vae(c.vae), c.model)
  prompts = [caption] * 4
  videos = [video_io.to_uint8(v) for v in runner.decode(runner.run("t2v", prompts, seed=0))]
  score = synthetic.score(videos, prompts)
  # Every sample moves the clip's way in its color. Not its shape: the 32 px clip's triangle
  # (half-size 5.7 px) reads as a square after the stand-in VAE's 4x4 pooling round trip itself.
  assert score["direction"] == 1.0 and score["color"] == 1.0, score
  assert score["background"] < 0.05, score
  assert all(synthetic.detect(v).frames_found >= 2 for v in videos), score  # one object, tracked


def test_suite_scores_every_sample_of_every_prompt(overfit, tmp_path):
  from stiv_jax.eval import synthetic_suite
  c, model, _, caption, _ = overfit
  report = synthetic_suite.run_suite(model, c, [caption, caption.replace("moving", "going")],
                                     samples_per_prompt=2, out_dir=str(tmp_path))
  assert report["t2v"]["n"] == 4 and report["ti2v"]["n"] == 4
  assert len(list(tmp_path.glob("t2v_*.mp4"))) == 4 and report["t2v"]["color"] == 1.0
  first = synthetic_suite.first_frames([caption] * 2, size=32, num_frames=4)
  assert not np.array_equal(first[0], first[1])   # each repeat starts from another scene
  with pytest.raises(ValueError, match="samples_per_prompt"):
    synthetic_suite.run_suite(model, c, [caption], samples_per_prompt=0)


def test_demo_recipe_is_a_config_of_the_schema():
  c = schema.demo_train_config()
  assert c.model.mask_ratio == 0.0 and c.model.prediction == "data"
  assert c.flow.t_sampler == "logit_normal" and c.flow.logit_mean < 0   # toward the noise end
  assert schema.demo_train_config("tiny").flow.t_sampler == "uniform"    # unit tests: the paper's
  assert c.data.holdout > 0 and c.eval.every_steps > 0 and c.eval.synthetic_score
  assert c.eval.every_steps % c.metrics.every_steps == 0
  assert set(c.eval.prompts) == set(synthetic.load_prompts("tune"))
  assert not set(synthetic.load_prompts("heldout")) & set(synthetic.load_prompts("tune"))
  for name in ("tune", "heldout"):  # every color, shape and direction in both sets
    words = [synthetic.parse_prompt(p) for p in synthetic.load_prompts(name)]
    for attr, vocab in (("color", synthetic.PALETTE), ("shape", synthetic.SHAPES),
                        ("direction", synthetic.DIRECTIONS)):
      assert {w[attr] for w in words} == set(vocab), (name, attr)
  # The paper's defaults are untouched by the recipe.
  paper = schema.train_config()
  assert paper.model.mask_ratio == 0.5 and paper.model.prediction == "velocity"
  assert paper.data.holdout == 0 and paper.eval.every_steps == 0
  assert paper.flow.t_sampler == "uniform"
  assert paper.sampling.steps == 50 and paper.sampling.guidance == 7.5
  with pytest.raises(ValueError, match="unknown argument"):
    schema.demo_train_config("huge")


def test_bench_clips_are_what_the_demo_pipeline_leaves(tmp_path):
  """stiv-bench demo-quality trains on clips like make demo's: the recipe's frames and stride,
  no fade to black (the pipeline trims it; the corpus default fades a quarter of its clips)."""
  from stiv_jax.bench import demo_quality
  from stiv_jax.data import reader
  c = schema.demo_train_config()
  vae, text = build_vae(c.vae), build_text_encoder(c.text)
  manifest = demo_quality.write_demo_clips(str(tmp_path / "shards"), c, vae, text, 16)
  assert manifest["num_records"] == 16
  ds = reader.open_dataset(str(tmp_path / "shards"))
  for i in range(len(ds)):
    rec = ds.decode(i)
    assert rec.latents.shape[0] == c.model.num_frames and rec.micro["stride"] == schema.DEMO_STRIDE
    pixels = np.asarray(vae.decode(np.asarray(rec.latents, np.float32)))
    peak = pixels.reshape(pixels.shape[0], -1).max(-1)
    assert peak[-1] >= 0.9 * peak[0], (i, peak)   # a fading clip's last frame is at half
  assert round(schema.DEMO_NUM_VIDEOS * demo_quality.clips_per_video()) == 640
