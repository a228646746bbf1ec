"""KL VAE: parity with diffusers AutoencoderKL (random tiny weights), chunking, bad inputs."""
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from safetensors.numpy import load_file, save_file  # noqa: E402

from stiv_jax.models.encoders import base  # noqa: E402
from stiv_jax.models.encoders import vae as vae_lib  # noqa: E402
from stiv_jax.models.encoders.weights import WeightImportError  # noqa: E402

TOL = 1e-4


def rel_err(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def make_torch_vae(seed, **kw):
  torch.manual_seed(seed)
  n = len(kw["block_out_channels"])
  m = diffusers.AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * n,
                              up_block_types=("UpDecoderBlock2D",) * n, **kw).eval()
  with torch.no_grad():  # Non-trivial norms/biases so every tensor matters in the comparison.
    for name, p in m.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return m


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
  """A tiny diffusers VAE saved with save_pretrained, and our loaded copy."""
  m = make_torch_vae(0, block_out_channels=(32, 64), layers_per_block=1, latent_channels=4)
  folder = str(tmp_path_factory.mktemp("vae"))
  m.save_pretrained(folder)
  vae = base.build_vae({"kind": "kl", "path": folder, "batch_size": 4})
  return m, folder, vae


@pytest.fixture(scope="module")
def frames():
  return np.random.default_rng(0).uniform(-1, 1, (5, 32, 32, 3)).astype(np.float32)


def torch_nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def test_protocol_and_sizes(ref):
  _, _, vae = ref
  assert isinstance(vae, base.VideoAutoencoder)
  assert vae.spatial_factor == 2 and vae.latent_channels == 4
  assert vae.scaling_factor == pytest.approx(0.18215) and vae.shift_factor == 0.0


def test_encode_matches_diffusers(ref, frames):
  m, _, vae = ref
  z = vae.encode(frames)
  with torch.no_grad():
    want = m.encode(torch_nchw(frames)).latent_dist.mean.permute(0, 2, 3, 1).numpy() * 0.18215
  assert z.shape == (5, 16, 16, 4) and z.dtype == np.float32
  assert rel_err(z, want) <= TOL


def test_decode_matches_diffusers(ref):
  m, _, vae = ref
  z = np.random.default_rng(1).standard_normal((3, 16, 16, 4)).astype(np.float32)
  x = vae.decode(z)
  with torch.no_grad():
    want = m.decode(torch_nchw(z / 0.18215)).sample.permute(0, 2, 3, 1).numpy()
  assert x.shape == (3, 32, 32, 3)
  assert rel_err(x, want) <= TOL


def test_chunking_and_video_folding(ref, frames):
  _, _, vae = ref
  z_all = vae.encode(frames)  # 5 frames at batch_size 4: a chunk of 4 and one of 1.
  z_one = vae.encode(frames[3:4])
  np.testing.assert_allclose(z_all[3:4], z_one, rtol=1e-5, atol=1e-5)
  video = frames[:4].reshape(2, 2, 32, 32, 3)
  zv = vae.encode_video(video)
  assert zv.shape == (2, 2, 16, 16, 4)
  np.testing.assert_allclose(zv.reshape(4, 16, 16, 4), z_all[:4], rtol=1e-5, atol=1e-5)
  xv = vae.decode_video(zv)
  assert xv.shape == (2, 2, 32, 32, 3)
  np.testing.assert_allclose(xv.reshape(4, 32, 32, 3), vae.decode(z_all[:4]), rtol=1e-5,
                             atol=1e-5)


def test_sample_mode(ref, frames):
  m, folder, _ = ref
  vae = vae_lib.load_vae({"path": folder, "batch_size": 4, "sample": True, "seed": 3})
  with torch.no_grad():
    dist = m.encode(torch_nchw(frames[:2])).latent_dist
  mean = dist.mean.permute(0, 2, 3, 1).numpy() * 0.18215
  std = dist.std.permute(0, 2, 3, 1).numpy() * 0.18215
  import jax
  a = vae.encode(frames[:2], key=jax.random.key(0))
  b = vae.encode(frames[:2], key=jax.random.key(0))
  c = vae.encode(frames[:2])
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  noise = (a - mean) / std  # Should be standard normal.
  assert abs(noise.mean()) < 0.1 and 0.9 < noise.std() < 1.1


def test_legacy_keys_single_file_latent8_shift(tmp_path):
  """A .safetensors file + config.json with deprecated attention names, 8 latent channels,
  a shift factor and no quant convs."""
  m = make_torch_vae(1, block_out_channels=(32, 32), layers_per_block=1, latent_channels=8,
                     use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1,
                     scaling_factor=0.5)
  m.save_pretrained(tmp_path / "src")
  tensors = load_file(str(tmp_path / "src" / "diffusion_pytorch_model.safetensors"))
  legacy = {}
  for k, v in tensors.items():
    for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."),
                     (".to_out.0.", ".proj_attn.")):
      k = k.replace(new, old)
    legacy[k] = v
  assert any(".proj_attn." in k for k in legacy)
  weights = str(tmp_path / "vae.safetensors")
  save_file(legacy, weights)
  vae = vae_lib.load_vae({"path": weights, "config": str(tmp_path / "src" / "config.json"),
                          "batch_size": 2})
  assert vae.latent_channels == 8 and vae.shift_factor == pytest.approx(0.1)
  x = np.random.default_rng(2).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    mean = m.encode(torch_nchw(x)).latent_dist.mean.permute(0, 2, 3, 1).numpy()
    want_z = (mean - 0.1) * 0.5
    z = vae.encode(x)
    assert rel_err(z, want_z) <= TOL
    want_x = m.decode(torch_nchw(z / 0.5 + 0.1)).sample.permute(0, 2, 3, 1).numpy()
  assert rel_err(vae.decode(z), want_x) <= TOL


def test_bfloat16_option_close(ref, frames):
  _, folder, vae32 = ref
  vae16 = vae_lib.load_vae({"path": folder, "batch_size": 4, "dtype": "bfloat16"})
  z16 = vae16.encode(frames[:2])
  assert z16.dtype == np.float32
  assert rel_err(z16, vae32.encode(frames[:2])) < 0.05


# --- bad input ---------------------------------------------------------------------------------


def test_bad_frames_name_expected_shape(ref):
  _, _, vae = ref
  with pytest.raises(ValueError, match=r"\[N, H, W, 3\].*got \(2, 32, 32, 4\)"):
    vae.encode(np.zeros((2, 32, 32, 4), np.float32))
  with pytest.raises(ValueError, match=r"multiples of 2.*got \(1, 31, 32, 3\)"):
    vae.encode(np.zeros((1, 31, 32, 3), np.float32))
  with pytest.raises(ValueError, match=r"\[N, H, W, 4\]"):
    vae.decode(np.zeros((1, 16, 16, 3), np.float32))
  with pytest.raises(ValueError, match=r"encode_video: expected \[B, T, H, W, 3\]"):
    vae.encode_video(np.zeros((2, 32, 32, 3), np.float32))


def test_missing_weights_file(ref, tmp_path):
  _, folder, _ = ref
  shutil.copy(os.path.join(folder, "config.json"), tmp_path / "config.json")
  with pytest.raises(WeightImportError, match=f"{tmp_path}.*no weights file"):
    vae_lib.load_vae({"path": str(tmp_path)})
  with pytest.raises(WeightImportError, match="config file not found"):
    vae_lib.load_vae({"path": os.path.join(folder, "diffusion_pytorch_model.safetensors"),
                      "config": str(tmp_path / "nope.json")})


def test_unsupported_architecture(ref, tmp_path):
  _, folder, _ = ref
  shutil.copytree(folder, tmp_path / "v")
  cfg_path = tmp_path / "v" / "config.json"
  cfg = json.loads(cfg_path.read_text())
  cfg["down_block_types"] = ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]
  cfg_path.write_text(json.dumps(cfg))
  with pytest.raises(WeightImportError, match=r"config.json: down_block_types=.*AttnDown"):
    vae_lib.load_vae({"path": str(tmp_path / "v")})
  cfg["_class_name"] = "AutoencoderTiny"
  cfg_path.write_text(json.dumps(cfg))
  with pytest.raises(WeightImportError, match="AutoencoderTiny"):
    vae_lib.load_vae({"path": str(tmp_path / "v")})


def test_wrong_missing_extra_tensors_named(ref, tmp_path):
  _, folder, _ = ref
  tensors = load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
  tensors["decoder.conv_in.weight"] = np.zeros((64, 4, 1, 1), np.float32)
  del tensors["encoder.conv_out.bias"]
  tensors["encoder.extra.weight"] = np.zeros((3,), np.float32)
  weights = str(tmp_path / "bad.safetensors")
  save_file(tensors, weights)
  shutil.copy(os.path.join(folder, "config.json"), tmp_path / "config.json")
  with pytest.raises(WeightImportError) as e:
    vae_lib.load_vae({"path": weights})
  msg = str(e.value)
  assert "bad.safetensors" in msg
  assert "decoder.conv_in.weight: checkpoint (64, 4, 1, 1), model expects (64, 4, 3, 3)" in msg
  assert "missing tensors (1): encoder.conv_out.bias" in msg
  assert "unexpected tensors (1): encoder.extra.weight" in msg


def test_factory_errors():
  with pytest.raises(ValueError, match="vae.path"):
    base.build_vae({"kind": "kl"})
  with pytest.raises(WeightImportError, match="only .safetensors"):
    vae_lib.load_vae({"path": __file__})
