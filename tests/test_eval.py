"""Fréchet distance, FVD/FID feature nets (random weights), synthetic detector, during-training eval."""
import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stiv_jax import config_schema as schema
from stiv_jax.eval import cli, during_training, features, frechet, i3d, inception, netlib
from stiv_jax.data import synthetic as synth
from stiv_jax import video_io
from stiv_jax.eval import synthetic
from stiv_jax.models.encoders.standins import HashTextEncoder, PixelSpaceVAE
from stiv_jax.models.stiv import STIV


# ----------------------------------------------------------------------------- Fréchet


def test_frechet_identical_is_exactly_zero_and_known_values():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((200, 6))
  assert frechet.frechet_distance_from_features(a, a.copy()) == 0.0
  shift = np.array([1.0, 2.0, 0, 0, 0, 0])
  assert frechet.frechet_distance_from_features(a, a + shift) == pytest.approx(5.0, abs=1e-6)
  # Diagonal Gaussians: sum((m1-m2)^2) + sum((sqrt(s1) - sqrt(s2))^2).
  s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
  d = frechet.frechet_distance(np.zeros(2), s1, np.ones(2), s2)
  assert d == pytest.approx(2 + (1 - 3) ** 2 + (2 - 1) ** 2, rel=1e-9)
  with pytest.raises(ValueError, match="shape mismatch"):
    frechet.frechet_distance(np.zeros(2), s1, np.zeros(3), np.eye(3))


# ----------------------------------------------------------------------------- feature nets


def test_conv_bn_relu_matches_torch_tf_same_padding():
  torch = pytest.importorskip("torch")
  p = netlib.ParamSource(None, seed=1)
  x = np.random.default_rng(0).standard_normal((2, 5, 9, 10, 3)).astype("f4")
  y = netlib.conv_bn_relu(p, "u", jnp.asarray(x), 3, 4, (3, 7, 7), (2, 2, 2), "SAME", conv="conv3d")
  w = {k: torch.tensor(v) for k, v in p.created.items()}
  xt = torch.tensor(x).permute(0, 4, 1, 2, 3)
  # TF SAME: total pad max(k - s, 0) or max(k - (n % s), 0), the extra on the far side.
  pads = []
  for n, k in zip((10, 9, 5), (7, 7, 3)):
    total = max(k - (n % 2 or 2), 0)
    pads += [total // 2, total - total // 2]
  xt = torch.nn.functional.pad(xt, pads)
  ref = torch.nn.functional.conv3d(xt, w["u.conv3d.weight"], stride=2)
  ref = torch.nn.functional.batch_norm(ref, w["u.bn.running_mean"], w["u.bn.running_var"],
                                       w["u.bn.weight"], w["u.bn.bias"], False, 0.0, 1e-3).relu()
  np.testing.assert_allclose(y, ref.permute(0, 2, 3, 4, 1).numpy(), rtol=1e-4, atol=1e-4)


def test_avg_pool_without_padding_count():
  x = jnp.ones((1, 4, 4, 1))
  np.testing.assert_allclose(netlib.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), False), 1.0)
  assert float(netlib.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), True)[0, 0, 0, 0]) == pytest.approx(4 / 9)


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("w") / "i3d.safetensors")
  params = i3d.init_params(3)
  assert len(params) > 250 and params["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
  assert params["Mixed_5c.b1b.conv3d.weight"].shape == (384, 192, 3, 3, 3)
  netlib.save_safetensors(path, params)
  return path


def test_i3d_shapes_weight_import_and_fvd(i3d_file):
  rng = np.random.default_rng(0)
  videos = rng.integers(0, 256, (3, 8, 32, 32, 3), dtype=np.uint8)
  net = features.FeatureNet.from_safetensors("i3d", i3d_file, feature="logits", size=32)
  f = net(videos)
  assert f.shape == (3, 400) and np.isfinite(f).all() and f.std() > 0
  again = features.FeatureNet("i3d", i3d.init_params(3), feature="logits", size=32)(videos)
  np.testing.assert_allclose(f, again, rtol=1e-5, atol=1e-5)  # file == in-memory weights
  assert features.fvd(net, videos, videos) == 0.0
  assert features.fvd(net, videos, videos[::-1] // 2) > 0
  pool = features.FeatureNet.from_safetensors("i3d", i3d_file, feature="pool", size=32)
  assert pool(videos[:1]).shape == (1, 1024)


def test_fvd_cli(tmp_path, i3d_file, capsys):
  rng = np.random.default_rng(0)
  for name in ("real", "fake"):
    os.makedirs(tmp_path / name)
    for i in range(3):
      video_io.write_mp4(str(tmp_path / name / f"{i}.mp4"),
                         rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
  base = ["--fvd", f"--real={tmp_path / 'real'}", f"--i3d-weights={i3d_file}",
          "--feature-size=32", "--num-frames=8"]
  cli.run(base + [f"--fake={tmp_path / 'real'}"])
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"fvd": 0.0}
  cli.run(base + [f"--fake={tmp_path / 'fake'}"])
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fvd"] > 0


def test_weight_import_errors(tmp_path, i3d_file):
  params = netlib.load_safetensors(i3d_file)
  del params["Mixed_4b.b0.bn.running_var"]
  with pytest.raises(KeyError, match="Mixed_4b.b0.bn.running_var"):
    features.FeatureNet("i3d", params)
  params = i3d.init_params(0)
  params["logits.conv3d.bias"] = np.zeros((10,), np.float32)
  with pytest.raises(ValueError, match=r"logits.conv3d.bias.*\(10,\).*\(400,\)"):
    features.FeatureNet("i3d", params)
  with pytest.raises(FileNotFoundError, match="no such file"):
    features.FeatureNet.from_safetensors("i3d", str(tmp_path / "none.safetensors"))


def test_inception_shapes_and_fid():
  params = inception.init_params(0)
  assert params["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape == (384, 384, 3, 1)
  assert params["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
  net = features.FeatureNet("inception", params, size=75)
  videos = np.random.default_rng(1).integers(0, 256, (2, 2, 40, 40, 3), dtype=np.uint8)
  f = net(videos)
  assert f.shape == (4, 2048) and np.isfinite(f).all()
  assert features.fid(net, videos, videos) == 0.0


# ----------------------------------------------------------------------------- synthetic score


def all_scenes(size=64, frames=12):
  """One rendered clip per (color, shape, direction) of the synthetic corpus."""
  rng = np.random.default_rng(0)
  out = []
  for color, shape, direction in itertools.product(synth.COLORS, synth.SHAPES, synth.DIRECTIONS):
    base = synth.sample_scene(rng, size=size, num_frames=frames)
    spec = synth.SceneSpec(color, shape, direction, base.radius, base.x0, base.y0, base.speed)
    # Start on the side the shape moves away from (sample_scene does this for its direction).
    dx, dy = synth.DIRECTIONS[direction]
    lo, hi = base.radius + 2, size - base.radius - 2
    start = lo if dx + dy > 0 else hi
    x0, y0 = (start, size / 2) if dx else (size / 2, start)
    spec = dataclasses_replace(spec, x0=x0, y0=y0)
    out.append((synth.render_scene(spec, size=size, num_frames=frames), spec.caption))
  return out


def dataclasses_replace(spec, **kw):
  import dataclasses
  return dataclasses.replace(spec, **kw)


def test_detector_reads_every_attribute_of_rendered_videos():
  scenes = all_scenes()
  videos, prompts = [v for v, _ in scenes], [p for _, p in scenes]
  assert synthetic.score(videos, prompts) == {"color": 1.0, "shape": 1.0, "direction": 1.0,
                                              "all": 1.0, "background": 0.0, "n": 84}
  # Through the demo's pixel VAE (4x average pooling, blocky decode) it still reads them.
  vae = PixelSpaceVAE(4, 4)
  decoded = [video_io.to_uint8(vae.decode(vae.encode(video_io.to_unit(v)))) for v in videos]
  s = synthetic.score(decoded, prompts)
  assert s["color"] == 1.0 and s["direction"] == 1.0 and s["shape"] >= 0.95
  assert s["background"] == 0.0
  # Wrong prompts are scored as wrong.
  wrong = [p.replace("moving", "x").replace("circle", "square") for p in prompts]
  assert synthetic.score(videos, wrong)["shape"] == pytest.approx(2 / 3)
  assert synthetic.parse_prompt("a cyan triangle moving up") == {
      "color": "cyan", "shape": "triangle", "direction": "up"}
  blank = synthetic.detect(np.zeros((4, 16, 16, 3), np.uint8))
  assert blank.color is None and blank.frames_found == 0


def test_fidelity():
  v = np.stack([np.full((8, 8, 3), 100, np.uint8)] * 3)
  assert synthetic.first_frame_fidelity(v, v[0]) == float("inf")
  assert 20 < synthetic.first_frame_fidelity(v, v[0] + 10) < 30
  assert synthetic.endpoint_fidelity(v, v[0], v[0] + 10) == pytest.approx(float("inf"))


def test_synthetic_score_cli_prints_one_json_line(tmp_path, capsys):
  scenes = all_scenes()[::7]
  prompts = []
  for i, (video, prompt) in enumerate(scenes):
    video_io.write_mp4(str(tmp_path / f"v{i:02d}.mp4"), video)
    prompts.append(prompt)
  (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
  video_io.write_png(str(tmp_path / "first.png"), scenes[0][0][0])
  cli.run([f"--synthetic-score={tmp_path}", f"--prompts-file={tmp_path / 'prompts.txt'}"])
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["color"] == 1.0 and out["shape"] == 1.0 and out["direction"] == 1.0 and out["n"] == 12
  cli.run([f"--synthetic-score={tmp_path}", f"--prompts-file={tmp_path / 'prompts.txt'}",
           f"--first-frame={tmp_path / 'first.png'}"])
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["first_frame_psnr"] > 10
  with pytest.raises(SystemExit):
    cli.run([f"--synthetic-score={tmp_path / 'nope'}", f"--prompts-file={tmp_path / 'prompts.txt'}"])
  assert "stiv-eval: error: --synthetic-score: no such folder" in capsys.readouterr().err
  # A prompt the scorer cannot read is refused (it once scored 1.0), naming the prompt.
  (tmp_path / "bad.txt").write_text("\n".join(prompts[:-1] + ["a sunset over the sea"]) + "\n")
  with pytest.raises(SystemExit) as e:
    cli.run([f"--synthetic-score={tmp_path}", f"--prompts-file={tmp_path / 'bad.txt'}"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "prompt 'a sunset over the sea' names no color, shape or direction" in err
  assert len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- during training


def test_background_level_and_one_shape_renderer():
  video = all_scenes(size=32, frames=4)[0][0]
  assert synthetic.background_level(video) == 0.0
  noisy = np.clip(video.astype(int) + 26, 0, 255).astype(np.uint8)  # +0.1 everywhere
  assert synthetic.background_level(noisy) == pytest.approx(26 / 255, abs=1e-6)
  # The detector's templates are the corpus geometry (stiv_jax.data.synthetic.shape_mask).
  for shape in synthetic.SHAPES:
    cov = synthetic.render_shape(shape, 10.0, 12.0, 5.0, 24, 24, supersample=1)
    np.testing.assert_array_equal(cov, synth.shape_mask(shape, 10.0, 12.0, 5.0, 24))


@pytest.fixture(scope="module")
def small_model():
  cfg = schema.model_config("small", latent_height=8, latent_width=8, num_frames=4, text_dim=16,
                            latent_channels=4, mask_ratio=0.0, remat="none")
  abstract = nnx.eval_shape(lambda: STIV(cfg, rngs=nnx.Rngs(params=0)))
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: jnp.asarray(0.05 * rng.standard_normal(a.shape), a.dtype), params)
  return cfg, nnx.merge(graphdef, params, rest)


def test_during_training_eval(small_model):
  cfg, model = small_model
  rng = np.random.default_rng(0)
  text = HashTextEncoder(16, 8)
  prompt = "a red circle moving right"
  tok, mask, pooled = text.encode_text([prompt] * 2)
  batch = {"latents": rng.standard_normal((2, 4, 8, 8, 4)).astype("f4"), "text": tok,
           "text_mask": mask, "pooled": pooled,
           "micro": np.tile([32, 32, 0, 0, 1, 4], (2, 1)).astype("f4"),
           "caption": np.asarray([prompt] * 2)}
  config = schema.ml_collections.ConfigDict({
      "model": cfg, "sampling": schema.sampling_config(steps=2),
      "eval": schema.eval_config(every_steps=5, prompts=(prompt,), ti2v_samples=1,
                                 synthetic_score=True)})
  ev = during_training.DuringTrainingEval(config, [batch], text, PixelSpaceVAE(4, 4))
  assert ev.due(5) and ev.due(10) and not ev.due(7) and ev.due(7, last_step=7)
  assert ev.sampler_cfg.steps == 2 and ev.sampler_cfg.guidance == 7.5
  a, b = ev.validation_loss(model), ev.validation_loss(model)
  assert set(a) == {"val/loss", "val/loss_t0.125", "val/loss_t0.375", "val/loss_t0.625",
                    "val/loss_t0.875"}
  assert a == b and all(np.isfinite(v) and v > 0 for v in a.values())  # fixed t and noise
  scalars, images = ev.run(5, model)
  assert {k: scalars[k] for k in a} == a
  for task in ("t2v", "ti2v"):
    assert {f"score/{task}_{k}" for k in ("color", "shape", "direction", "all", "background")} \
        <= set(scalars)
  assert sorted(images) == ["samples/t2v", "samples/ti2v"]
  # One row per sample, one column per frame (2 px padding).
  assert all(im.shape == (34 + 2, 4 * 34 + 2, 3) and im.dtype == np.uint8 for im in images.values())
  assert ev.seconds > 0 and scalars["eval/seconds"] > 0

  class Writer:
    def __init__(self):
      self.items = []

    def add_scalar(self, *a):
      self.items.append(a)

    def add_image(self, *a, **k):
      self.items.append(a)

  w = Writer()
  during_training.log_to_tensorboard(w, 5, scalars, images)
  assert len(w.items) == len(scalars) + 2
  # No held-out records: samples only, no loss.
  assert during_training.DuringTrainingEval(config, [], text, PixelSpaceVAE(4, 4)
                                            ).validation_loss(model) == {}
  with pytest.raises(ValueError, match="eval.cond_mode"):
    during_training.EvalConfig.from_config({"cond_mode": "sideways"})
  with pytest.raises(ValueError, match="eval: unknown fields"):
    during_training.EvalConfig.from_config({"every": 3})
  bad = schema.ml_collections.ConfigDict(config.to_dict())
  bad.eval.prompts = ("a sunset over the sea",)
  with pytest.raises(ValueError, match="not a synthetic prompt"):
    during_training.DuringTrainingEval(bad, [], text, PixelSpaceVAE(4, 4))
