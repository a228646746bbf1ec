"""Training a KL VAE (`stiv-train-vae`): the loss falls, the saved folder is a diffusers
AutoencoderKL that diffusers and our loader both read the same, and bad inputs are named."""
import json
import os

import numpy as np
import pytest

from stiv_jax import video_io
from stiv_jax.data import synthetic as corpus
from stiv_jax.models.encoders import base
from stiv_jax.models.encoders import vae as vae_lib
from stiv_jax.tools import train_vae as cli
from stiv_jax.train import vae_train

SIZE = 16
TINY = dict(block_out_channels=(4, 8), layers_per_block=1, latent_channels=4,
            norm_num_groups=4, steps=40, batch_size=8, lr=3e-3, warmup_steps=4)


def synthetic_videos(folder: str, n: int, size: int = SIZE, frames: int = 6) -> list[str]:
  """n real MP4 files of the synthetic corpus (moving shapes on black)."""
  os.makedirs(folder, exist_ok=True)
  paths = []
  for i in range(n):
    spec = corpus.shard_clip_spec(0, i, size=size, frames=(frames,))
    path = os.path.join(folder, f"clip_{i}.mp4")
    video_io.write_mp4(path, corpus.render_video(spec, size=size), fps=8)
    paths.append(path)
  return paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """`stiv-train-vae` on 8 MP4 files: (its summary, the output folder)."""
  root = tmp_path_factory.mktemp("vae_train")
  synthetic_videos(str(root / "videos"), 8)
  out = str(root / "vae")
  argv = [f"--videos={root / 'videos'}", f"--output={out}", "--frames-per-video=4",
          "--block-out-channels=4,8"] + [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()
                                         if k != "block_out_channels"]
  return cli.main(argv), out, str(root / "videos")


def test_training_lowers_the_reconstruction_error(trained):
  summary, _, _ = trained
  assert summary["frames"] == 32 and summary["videos"] == 8
  assert summary["final_mse"] < 0.5 * summary["first_mse"], summary
  assert summary["latent_std"] > 0


def test_saved_folder_reads_back_and_scales_latents(trained):
  _, out, _ = trained
  assert sorted(os.listdir(out)) == ["config.json", "diffusion_pytorch_model.safetensors",
                                     cli.SUMMARY_FILE]
  vae = base.build_vae({"kind": "kl", "path": out})
  assert vae.spatial_factor == 2 and vae.latent_channels == 4
  frames = np.random.default_rng(0).uniform(-1, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
  summary = json.load(open(os.path.join(out, cli.SUMMARY_FILE)))
  # The config records 1 / std and the mean of the posterior means: unit-scale latents.
  assert vae.scaling_factor == pytest.approx(1.0 / summary["latent_std"], rel=1e-5)
  assert vae.shift_factor == pytest.approx(summary["latent_mean"], rel=1e-5)
  z = vae.encode(frames)
  assert z.shape == (4, SIZE // 2, SIZE // 2, 4) and np.isfinite(z).all()


def test_diffusers_reads_the_folder_alike(trained):
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  _, out, _ = trained
  ref = diffusers.AutoencoderKL.from_pretrained(out).eval()
  ours = base.build_vae({"kind": "kl", "path": out})
  x = np.random.default_rng(1).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
  with torch.no_grad():
    mean = ref.encode(torch.from_numpy(x.transpose(0, 3, 1, 2))).latent_dist.mean
    want = ((mean.numpy().transpose(0, 2, 3, 1) - ref.config.shift_factor)
            * ref.config.scaling_factor)
  np.testing.assert_allclose(ours.encode(x), want, atol=1e-4)


def test_save_load_roundtrip_is_exact(tmp_path):
  cfg = vae_train.VAETrainConfig(**{**TINY, "steps": 1})
  model = vae_lib.AutoencoderKL(cfg.kl_config(scaling_factor=0.5, shift_factor=0.1),
                                rngs=__import__("flax").nnx.Rngs(params=3))
  vae_lib.save_autoencoder_kl(model, str(tmp_path / "v"))
  back = vae_lib.load_autoencoder_kl(str(tmp_path / "v"))
  assert back.cfg == model.cfg
  z = np.random.default_rng(2).normal(size=(1, 4, 4, 4)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(model.decode(z)), np.asarray(back.decode(z)))


def test_bad_inputs_are_named(tmp_path, trained):
  _, out, videos = trained
  with pytest.raises(FileNotFoundError, match="--videos"):
    cli.main([f"--videos={tmp_path / 'none'}", f"--output={tmp_path / 'o'}"])
  os.makedirs(tmp_path / "empty")
  with pytest.raises(ValueError, match="no video files"):
    cli.main([f"--videos={tmp_path / 'empty'}", f"--output={tmp_path / 'o'}"])
  before = open(os.path.join(out, "diffusion_pytorch_model.safetensors"), "rb").read()
  with pytest.raises(FileExistsError, match="--overwrite"):
    cli.main([f"--videos={videos}", f"--output={out}"])
  assert open(os.path.join(out, "diffusion_pytorch_model.safetensors"), "rb").read() == before
  synthetic_videos(str(tmp_path / "odd"), 1, size=18)
  with pytest.raises(ValueError, match="clip_0.mp4.*not a multiple of the VAE's spatial factor 8"):
    cli.main([f"--videos={tmp_path / 'odd'}", f"--output={tmp_path / 'o'}"])
  with pytest.raises(ValueError, match="norm_num_groups"):
    vae_train.VAETrainConfig(block_out_channels=(6, 8), norm_num_groups=4).validate()
