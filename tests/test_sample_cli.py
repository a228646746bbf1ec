"""stiv-sample end to end on a tiny saved checkpoint: files written, conditioning kept, errors."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments.configs import demo
from stiv_jax import sample
from stiv_jax import sharding as shd
from stiv_jax import video_io
from stiv_jax.eval import synthetic
from stiv_jax.train import checkpoint as ckpt_lib
from stiv_jax.train import optimizer as opt_lib
from stiv_jax.train import state as state_lib

SIZE = 32  # demo 'tiny': latents 8x8, pixel VAE factor 4


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir with config.json and one checkpoint whose EMA weights are random (non-zero)."""
  wd = str(tmp_path_factory.mktemp("wd"))
  config = demo.get_config("tiny,masked0")
  config.checkpoint.async_save = False
  mesh = shd.make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}),
                       jax.devices()[:1])
  rules = shd.rules_from_config(config.mesh.rules)
  tx = opt_lib.make_optimizer(config.optimizer)
  _, state, _ = state_lib.create_train_state(
      lambda: state_lib.build_model(config.model, config.seed), tx, mesh, rules)
  rng = np.random.default_rng(0)
  ema = jax.tree.map(lambda a: jax.device_put(
      jnp.asarray(0.05 * rng.standard_normal(a.shape), a.dtype), a.sharding), state.ema_params)
  state = state.replace(ema_params=ema)
  ckpt_lib.save_config(wd, config)
  ck = ckpt_lib.Checkpointer(wd, config.checkpoint, with_data=False)
  ck.save(1, state, force=True)
  ck.close()
  return wd


def run_cli(argv, capsys):
  sample.run(argv)
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_t2v_writes_mp4s_gifs_and_sheet(workdir, tmp_path, capsys):
  out = tmp_path / "t2v.mp4"
  summary = run_cli([f"--workdir={workdir}", "--task=t2v", f"--out={out}", "--steps=2",
                     "--num-samples=2", "--prompt=a red circle moving right", "--gif",
                     "--no-progress"], capsys)
  files = [tmp_path / "t2v_000.mp4", tmp_path / "t2v_001.mp4", tmp_path / "t2v_000.gif"]
  assert all(f.exists() for f in files) and summary["frames"] == 4
  video = video_io.read_video(str(files[0]))
  assert video.shape == (4, SIZE, SIZE, 3)
  assert not np.array_equal(video, video_io.read_video(str(files[1])))  # per-sample noise
  sheet = video_io.read_image(summary["contact_sheet"])
  assert sheet.shape[0] > 2 * SIZE and sheet.shape[1] > 4 * SIZE


def test_ti2v_keeps_the_first_frame(workdir, tmp_path, capsys):
  frame = np.zeros((SIZE, SIZE, 3), np.uint8)
  frame[8:20, 4:16] = (255, 0, 0)
  video_io.write_png(str(tmp_path / "first.png"), frame)
  out = tmp_path / "ti2v.mp4"
  run_cli([f"--checkpoint={workdir}/checkpoints/1", "--task=ti2v", f"--out={out}", "--steps=2",
           "--prompt=a red square moving right", f"--image={tmp_path / 'first.png'}",
           "--no-progress"], capsys)
  video = video_io.read_video(str(out))
  # The pixel VAE is exact on this block-aligned square, so only the MP4 coding loss remains:
  # the same frame written as an MP4 by itself is the reference.
  video_io.write_mp4(str(tmp_path / "ref.mp4"), np.stack([frame] * 4))
  ref = synthetic.first_frame_fidelity(video_io.read_video(str(tmp_path / "ref.mp4")), frame)
  assert synthetic.first_frame_fidelity(video, frame) > min(ref - 3.0, 30.0)
  assert synthetic.detect(video[:1]).color == "red"


def test_t2i_writes_png(workdir, tmp_path, capsys):
  summary = run_cli([f"--workdir={workdir}", "--task=t2i", f"--out={tmp_path / 'img.png'}",
                     "--steps=1", "--prompt=a blue circle moving up", "--no-progress"], capsys)
  assert summary["frames"] == 1
  assert video_io.read_image(str(tmp_path / "img.png")).shape == (SIZE, SIZE, 3)


def expect_error(argv, capsys, pattern):
  with pytest.raises(SystemExit) as e:
    sample.run(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("stiv-sample: error:"), err
  assert pattern in err, err


def test_user_errors(workdir, tmp_path, capsys):
  base = [f"--workdir={workdir}", f"--out={tmp_path / 'x.mp4'}", "--steps=1", "--prompt=a",
          "--no-progress"]
  expect_error(base + ["--task=t2x"], capsys, "unknown task 't2x'")
  expect_error(base + ["--task=ti2v"], capsys, "--task=ti2v needs --image")
  video_io.write_png(str(tmp_path / "big.png"), np.zeros((48, 40, 3), np.uint8))
  expect_error(base + ["--task=ti2v", f"--image={tmp_path / 'big.png'}"], capsys,
               "size 40x48 does not match the model's resolution 32x32; pass --resize")
  expect_error([f"--workdir={tmp_path / 'nowhere'}", "--prompt=a"], capsys, "no such path")
  # A checkpoint whose config no longer matches its weights.
  bad = tmp_path / "bad"
  os.symlink(os.path.join(workdir, "checkpoints"), bad / "checkpoints") if bad.mkdir() is None else None
  with open(os.path.join(workdir, "config.json")) as fh:
    cfg = json.load(fh)
  cfg["model"]["hidden"] = 128
  (bad / "config.json").write_text(json.dumps(cfg))
  expect_error([f"--workdir={bad}", "--prompt=a", "--steps=1"], capsys, "cannot be loaded")


def _copy_workdir(workdir, dst, edit=None, scale=None):
  """A workdir sharing `workdir`'s checkpoint, with its config edited or its EMA scaled."""
  os.makedirs(dst)
  with open(os.path.join(workdir, "config.json")) as fh:
    cfg = json.load(fh)
  if edit:
    edit(cfg)
  (dst / "config.json").write_text(json.dumps(cfg))
  if scale is None:
    os.symlink(os.path.join(workdir, "checkpoints"), os.path.join(dst, "checkpoints"))
    return str(dst)
  # A checkpoint whose finite EMA weights overflow in the forward.
  config, _, state, step = ckpt_lib.restore_state(workdir)
  state = state.replace(ema_params=jax.tree.map(lambda a: a * scale, state.ema_params))
  config.checkpoint.async_save = False
  ck = ckpt_lib.Checkpointer(str(dst), config.checkpoint, with_data=False)
  ck.save(step, state, force=True)
  ck.close()
  return str(dst)


def strict_json(text):
  def refuse(name):
    raise ValueError(f"not JSON: {name}")
  return json.loads(text, parse_constant=refuse)


def test_flag_errors_name_the_flag_and_the_fix(workdir, tmp_path, capsys):
  base = [f"--workdir={workdir}", f"--out={tmp_path / 'x.mp4'}", "--steps=1", "--prompt=a",
          "--no-progress"]
  expect_error(base + ["--guidance=nan"], capsys, "--guidance: must be a finite number >= 0")
  expect_error(base + ["--guidance=-2"], capsys, "--guidance: must be a finite number >= 0")
  expect_error(base + ["--text-guidance=inf", "--guidance-mode=sit"], capsys,
               "--text-guidance: must be a finite number")
  expect_error(base + ["--num-frames=0"], capsys, "--num-frames: must be >= 1")
  expect_error(base + ["--num-frames=3"], capsys,
               "--num-frames=3: this model takes a multiple of its temporal patch")
  video_io.write_mp4(str(tmp_path / "in.mp4"), np.zeros((4, SIZE, SIZE, 3), np.uint8))
  expect_error(base + ["--task=v2v", "--num-frames=4", "--first-k=4",
                       f"--video={tmp_path / 'in.mp4'}"], capsys,
               "--num-frames=4 does not fit --task=v2v")
  expect_error(base + ["--mesh=fsdp=3"], capsys, "--mesh")
  expect_error(base + ["--mesh=pipeline=2"], capsys, "--mesh: expected AXIS=N")
  expect_error(base + ["--batch-size=0"], capsys, "--batch-size: must be >= 1")
  expect_error([f"--weights={tmp_path / 'nowhere'}", "--prompt=a"], capsys, "no such path")
  # A bad scale in the run's own sampling section is named as such.
  nan_cfg = _copy_workdir(workdir, tmp_path / "nan_cfg",
                          edit=lambda c: c["sampling"].update(guidance=float("nan")))
  expect_error([f"--workdir={nan_cfg}", "--steps=1", "--prompt=a", "--no-progress",
                f"--out={tmp_path / 'y.mp4'}"], capsys, "sampling.guidance of the run's config")
  # --verbose adds the traceback; the last line is still the one-line error.
  with pytest.raises(SystemExit):
    sample.run(base + ["--task=t2x", "--verbose"])
  err = capsys.readouterr().err
  assert "Traceback" in err and err.strip().splitlines()[-1].startswith("stiv-sample: error:")


def test_warnings_for_cut_and_ignored_prompts(workdir, tmp_path, capsys):
  long_prompt = "a red circle moving right " * 4   # > max_length=8 hash tokens
  sample.run([f"--workdir={workdir}", f"--out={tmp_path / 'w.mp4'}", "--steps=2",
              "--num-samples=2", f"--prompt={long_prompt}", "--no-progress"])
  captured = capsys.readouterr()
  assert strict_json(captured.out.strip().splitlines()[-1])["frames"] == 4
  assert "exceed the text encoder's max_length=8 tokens and are cut" in captured.err
  video_io.write_png(str(tmp_path / "view.png"), np.zeros((SIZE, SIZE, 3), np.uint8))
  sample.run([f"--workdir={workdir}", "--task=multiview", f"--out={tmp_path / 'mv.mp4'}",
              "--steps=2", "--prompt=a blue square", f"--image={tmp_path / 'view.png'}",
              "--no-progress", "--num-samples=2"])
  captured = capsys.readouterr()
  strict_json(captured.out.strip().splitlines()[-1])
  assert "--task=multiview always samples with the empty prompt" in captured.err


def test_non_finite_video_exits_1(workdir, tmp_path, capsys):
  huge = _copy_workdir(workdir, tmp_path / "huge", scale=1e30)
  out = tmp_path / "nan.mp4"
  with pytest.raises(SystemExit) as e:
    sample.run([f"--workdir={huge}", f"--out={out}", "--steps=2", "--num-samples=2",
                "--prompt=a", "--no-progress"])
  captured = capsys.readouterr()
  assert e.value.code == 1
  assert "hold NaN/Inf" in captured.err and len(captured.err.strip().splitlines()) == 1
  summary = strict_json(captured.out.strip().splitlines()[-1])  # still valid JSON
  assert all(os.path.exists(f) for f in summary["files"])


def test_prompts_file_in_batches_on_an_fsdp_mesh(workdir, tmp_path, capsys):
  """3 prompts in batches of 2 on fsdp=8: a sample does not depend on its batch or mesh."""
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a red circle moving right\n" * 3)
  summary = run_cli([f"--workdir={workdir}", f"--prompts-file={prompts}", "--steps=2",
                     f"--out={tmp_path / 'b.mp4'}", "--mesh=fsdp=8", "--batch-size=2",
                     "--no-progress"], capsys)
  assert summary["mesh"] == {"data": 1, "fsdp": 8, "context": 1, "tensor": 1}
  assert summary["batch_size"] == 2
  assert [os.path.basename(f) for f in summary["files"]] == ["b_000.mp4", "b_001.mp4",
                                                              "b_002.mp4"]
  ref = run_cli([f"--workdir={workdir}", "--prompt=a red circle moving right", "--steps=2",
                 "--num-samples=2", f"--out={tmp_path / 'r.mp4'}", "--no-progress"], capsys)
  for mine, theirs in zip(summary["files"][:2], ref["files"]):
    a, b = video_io.read_video(mine), video_io.read_video(theirs)
    assert np.abs(a.astype(int) - b).mean() < 1.0
