"""Task definitions: frames given per task, inputs encoded into place, long video, user errors."""
import numpy as np
import pytest

from stiv_jax import config_schema as schema
from stiv_jax import tasks
from stiv_jax.models.encoders.standins import HashTextEncoder, PixelSpaceVAE

T, H, W, C, F = 6, 4, 4, 4, 4  # latent frames, latent size, channels, VAE factor


class FakeSampler:
  """Records each call; returns the given latents on conditioning frames and a per-call
  constant elsewhere (what a perfect frame-replacement sampler guarantees)."""

  def __init__(self):
    self.calls = []

  def __call__(self, cond, null, seed=0, progress=False, noise_offset=0):
    self.calls.append(dict(cond=cond, null=null, seed=seed, noise_offset=noise_offset))
    fill = np.full(cond["cond_latents"].shape, 0.01 * len(self.calls), np.float32)
    m = cond["cond_mask"][:, :, None, None, None]
    return np.where(m, cond["cond_latents"], fill)


def make_runner(resize=False):
  cfg = schema.model_config("small", latent_height=H, latent_width=W, num_frames=T, text_dim=16,
                            latent_channels=C)
  sampler = FakeSampler()
  runner = tasks.TaskRunner(sampler, HashTextEncoder(16, 8), PixelSpaceVAE(F, C), cfg,
                            frame_stride=3, resize=resize)
  return runner, sampler


def img(value, h=H * F, w=W * F):
  return np.full((h, w, 3), value, np.uint8)


def test_clip_masks():
  expect = {"t2v": [], "ti2v": [0], "v2v": [0, 1, 2, 3], "interp": [0, 5], "tup": [0, 2, 4],
            "multiview": [0]}
  for name, idx in expect.items():
    assert list(tasks.given_positions(tasks.get_task(name), T)) == idx, name
  assert tasks.clip_mask(tasks.get_task("t2i"), T).shape == (1,)
  with pytest.raises(tasks.TaskError, match="unknown task 'foo'"):
    tasks.get_task("foo")


@pytest.mark.parametrize("name", ["t2i", "t2v", "ti2v", "v2v", "interp", "tup", "multiview"])
def test_inputs_land_on_given_frames(name):
  runner, sampler = make_runner()
  video = np.stack([img(10 * i) for i in range(T)])
  inputs = tasks.TaskInputs(image=img(200), last_image=img(50), video=video)
  out = runner.run(name, ["a red circle moving right", "a blue square moving up"], inputs, seed=7)
  cond = sampler.calls[-1]["cond"]
  assert out.shape == (2, 1 if name == "t2i" else T, H, W, C)
  assert sampler.calls[-1]["seed"] == 7
  assert cond["micro"][0].tolist() == [H * F, W * F, 0, 0, 3, out.shape[1]]
  given = tasks.given_positions(tasks.get_task(name), out.shape[1])
  assert cond["cond_mask"][0].nonzero()[0].tolist() == list(given)
  lat = out[0, :, 0, 0, 0]  # red channel of the pixel VAE = pixel value in [-1, 1]
  want = {"ti2v": {0: 200}, "multiview": {0: 200}, "interp": {0: 200, T - 1: 50},
          "v2v": {i: 10 * i for i in range(4)}, "tup": {0: 0, 2: 10, 4: 20}}.get(name, {})
  for frame, value in want.items():
    assert lat[frame] == pytest.approx(value / 127.5 - 1, abs=1e-6), (name, frame)
  # multiview always uses the empty prompt; the others keep their text.
  empty = runner.text([""])[0]["pooled"][0]
  assert np.allclose(cond["pooled"][0], empty) == (name == "multiview")


def test_interp_from_video_endpoints():
  runner, sampler = make_runner()
  video = np.stack([img(10 * i) for i in range(9)])
  out = runner.run("interp", ["x"], tasks.TaskInputs(video=video))
  assert out[0, 0, 0, 0, 0] == pytest.approx(-1) and out[0, -1, 0, 0, 0] == pytest.approx(80 / 127.5 - 1)


def test_user_errors_and_resize():
  runner, _ = make_runner()
  with pytest.raises(tasks.TaskError, match="needs --image"):
    runner.run("ti2v", ["a"], tasks.TaskInputs())
  with pytest.raises(tasks.TaskError, match="needs --video"):
    runner.run("v2v", ["a"], tasks.TaskInputs())
  with pytest.raises(tasks.TaskError, match=r"size 20x12 does not match .* 16x16; pass --resize"):
    runner.run("ti2v", ["a"], tasks.TaskInputs(image=img(9, 12, 20)))
  with pytest.raises(tasks.TaskError, match="needs >= 4 frames"):
    runner.run("v2v", ["a"], tasks.TaskInputs(video=np.stack([img(1)] * 2)))
  resizing, _ = make_runner(resize=True)
  out = resizing.run("ti2v", ["a"], tasks.TaskInputs(image=img(200, 12, 20)))
  assert out[0, 0, 0, 0, 0] == pytest.approx(200 / 127.5 - 1, abs=1e-2)
  cfg = schema.model_config("small", latent_height=H, latent_width=W, num_frames=T, text_dim=32,
                            latent_channels=C)
  with pytest.raises(tasks.TaskError, match="text.dim=16 does not match model.text_dim=32"):
    tasks.TaskRunner(FakeSampler(), HashTextEncoder(16, 8), PixelSpaceVAE(F, C), cfg)


@pytest.mark.parametrize("length", [11, 26])
def test_long_video_joins_gaps_through_keyframes(length):
  runner, sampler = make_runner()
  out = runner.run("long", ["a", "b"], seed=3, length=length)
  assert out.shape == (2, length, H, W, C)
  num_kf = int(np.ceil((length - 1) / (T - 1))) + 1
  calls = sampler.calls
  # Keyframe clip(s) at the keyframe stride, then one batched interpolation call over all gaps.
  assert calls[0]["cond"]["micro"][0, 4] == 20.0 and not calls[0]["cond"]["cond_mask"].any()
  fill = calls[-1]["cond"]
  assert fill["cond_mask"].shape == (2 * (num_kf - 1), T)
  assert fill["cond_mask"][0].tolist() == [True] + [False] * (T - 2) + [True]
  assert fill["micro"][0, 4] == pytest.approx(20.0 / (T - 1))
  if num_kf > T:  # continuation chunks start from the previous last keyframe
    assert calls[1]["cond"]["cond_mask"][0, 0] and calls[1]["noise_offset"] == 2
  # Gap g spans output frames g*(T-1) .. (g+1)*(T-1); its ends are the keyframes g and g+1.
  keyframes = fill["cond_latents"].reshape(2, num_kf - 1, T, H, W, C)
  for g in range(num_kf - 1):
    lo = g * (T - 1)
    if lo < length:
      np.testing.assert_array_equal(out[:, lo], keyframes[:, g, 0])
    hi = (g + 1) * (T - 1)
    if hi < length:
      np.testing.assert_array_equal(out[:, hi], keyframes[:, g, -1])
  # Keyframes are different from the (constant) fill, so the check above is not vacuous.
  assert len({round(float(v), 4) for v in out[0, :, 0, 0, 0]}) >= 2
