"""The user's path with real-architecture encoders, end to end on the CPU.

The test makes a tiny random diffusers AutoencoderKL folder, a tiny transformers CLIP text tower
with its BPE tokenizer files and a tiny T5 encoder with its SentencePiece model (all saved with
save_pretrained), videos of two aspect ratios (one stored landscape with rotation metadata, so
it is shown portrait) and a folder of images with caption sidecars; runs `stiv-prep run` and
`stiv-prep images`; trains `t2i.py:tiny` (T5 text) and `t2v.py:tiny` (CLIP text) a few steps
with `stiv-train` (every bucket reached); samples t2v and ti2v with `stiv-sample`; and checks the
latent contract: prep's latents decode at sampling as the VAE decodes them, the sampler's stride
and sizes are the shards', and configs that disagree with their shards fail before compiling.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from data_pipeline import cli as prep_cli  # noqa: E402
from data_pipeline import manifest as mf  # noqa: E402
from data_pipeline import synth  # noqa: E402
from stiv_jax import config_schema as schema  # noqa: E402
from stiv_jax import sample as sample_cli  # noqa: E402
from stiv_jax.data import contract as contract_lib  # noqa: E402
from stiv_jax.data import reader  # noqa: E402
from stiv_jax.models.encoders import build_vae  # noqa: E402
from stiv_jax.models.encoders import tokenizer as tok_lib  # noqa: E402
from stiv_jax.train import checkpoint as ckpt_lib  # noqa: E402
from helpers import write_clip_bpe  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH, TEXT_LEN = 32, 16
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
# Pixel buckets (h, w) and their latents at the VAE's factor 4.
BUCKETS = ((32, 32), (24, 40), (40, 24))


def set_mp4_rotation(path: str, degrees_clockwise: int) -> None:
  """Writes a display matrix into the MP4's track header (what phones do for portrait video)."""
  a, b = {90: (0, 1), 270: (0, -1), 180: (-1, 0)}[degrees_clockwise]
  matrix = (a << 16, b << 16, 0, (-b) << 16, a << 16, 0, 0, 0, 1 << 30)
  data = bytearray(open(path, "rb").read())
  i = data.find(b"tkhd")
  version = data[i + 4]
  off = i + 8 + (32 if version == 1 else 20) + 16
  data[off:off + 36] = struct.pack(">9i", *matrix)
  with open(path, "wb") as f:
    f.write(bytes(data))


def moving_square(height: int, width: int, frames: int, color: str, seed: int) -> np.ndarray:
  """uint8 [T, H, W, 3]: a colored square moving right on a textured dark background."""
  rng = np.random.default_rng(seed)
  base = (rng.random((height, width, 1)) * 40).astype(np.uint8).repeat(3, -1)
  out = np.repeat(base[None], frames, 0)
  side = min(height, width) // 3
  for t in range(frames):
    x = int(t * (width - side) / max(frames - 1, 1))
    out[t, height // 3: height // 3 + side, x: x + side] = COLORS[color]
  return out


def save_tiny_vae(folder: str) -> None:
  """A diffusers AutoencoderKL with factor 4 (three blocks), 4 latent channels, saved as users
  have it (config.json + diffusion_pytorch_model.safetensors; scaling_factor 0.18215)."""
  torch.manual_seed(0)
  m = diffusers.AutoencoderKL(block_out_channels=(8, 8, 16), layers_per_block=1,
                              latent_channels=4, norm_num_groups=4,
                              down_block_types=("DownEncoderBlock2D",) * 3,
                              up_block_types=("UpDecoderBlock2D",) * 3).eval()
  m.save_pretrained(folder)


def save_tiny_clip(folder: str, tmp: str) -> None:
  """A transformers CLIPTextModel (width 32) with its BPE tokenizer files in one folder."""
  vocab = write_clip_bpe(tmp)
  tok = transformers.CLIPTokenizer.from_pretrained(tmp)
  torch.manual_seed(1)
  model = transformers.CLIPTextModel(transformers.CLIPTextConfig(
      vocab_size=len(vocab), hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, max_position_embeddings=TEXT_LEN, bos_token_id=tok.bos_token_id,
      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()
  model.save_pretrained(folder)
  tok.save_pretrained(folder)


def save_tiny_t5(folder: str, tmp: str) -> None:
  """A transformers T5EncoderModel (v1.1, width 32) with its SentencePiece spiece.model."""
  os.makedirs(tmp, exist_ok=True)
  captions = os.path.join(tmp, "captions.txt")
  with open(captions, "w") as f:
    f.write("\n".join(f"a {c} {s} on a {b} background" for c in COLORS
                      for s in ("square", "circle", "photo") for b in ("dark", "plain")))
  sp = tok_lib.train_tokenizer(captions, os.path.join(tmp, "sp"), 60, hard_vocab_limit=False)
  torch.manual_seed(2)
  model = transformers.T5EncoderModel(transformers.T5Config(
      vocab_size=80, d_model=WIDTH, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
      relative_attention_num_buckets=8, feed_forward_proj="gated-gelu")).eval()
  model.save_pretrained(folder)
  transformers.T5Tokenizer(vocab_file=sp, extra_ids=0).save_pretrained(folder)


def prep_sets(world, text_path: str) -> list[str]:
  """Overrides that make stiv-prep's tiny config encode with the tiny KL VAE and a text folder
  (sizes None: the VAE's own) into three aspect buckets, captions only from sidecars."""
  kind = "t5" if text_path == world["t5"] else "clip"
  return ["encode.vae.kind=kl", f"encode.vae.path={world['vae']}",
          "encode.vae.spatial_factor=None", "encode.vae.latent_channels=None",
          f"encode.text.kind={kind}", f"encode.text.path={text_path}", f"encode.text.dim={WIDTH}",
          f"encode.text.max_length={TEXT_LEN}", f"encode.buckets={BUCKETS}",
          "scenes.max_clip_frames=10", "caption.fallback=''"]


def prep_argv(world, text_path: str) -> list[str]:
  return ["--config=tiny", "--no-progress"] + [f"--set={s}" for s in prep_sets(world, text_path)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("real")
  w = {k: str(root / k) for k in ("vae", "clip", "t5", "videos", "images", "prep", "prep_img")}
  save_tiny_vae(w["vae"])
  save_tiny_clip(w["clip"], str(root / "bpe"))
  save_tiny_t5(w["t5"], str(root / "spm"))
  os.makedirs(w["videos"])
  for i in range(6):   # 3 landscape, 3 shown portrait (rotation metadata)
    color = list(COLORS)[i % 4]
    path = os.path.join(w["videos"], f"clip{i}.mp4")
    synth.write_mp4(path, moving_square(48, 80, 40, color, i), fps=8, codec="mpeg4")
    if i % 2:
      set_mp4_rotation(path, 90)
    with open(os.path.join(w["videos"], f"clip{i}.json"), "w") as f:
      json.dump({"caption": f"a {color} square moving right"}, f)
  os.makedirs(w["images"])
  from PIL import Image
  for i in range(16):   # 8 square, 8 landscape images with .txt captions
    color = list(COLORS)[i % 4]
    h, wd = (32, 32) if i < 8 else (36, 60)
    Image.fromarray(moving_square(h, wd, 1, color, 10 + i)[0]).save(
        os.path.join(w["images"], f"im{i:02d}.png"))
    with open(os.path.join(w["images"], f"im{i:02d}.txt"), "w") as f:
      f.write(f"a {color} square photo")
  assert prep_cli.main(["run", f"--input={w['videos']}", f"--output={w['prep']}"]
                       + prep_argv(w, w["clip"])) == 0
  assert prep_cli.main(["images", f"--input={w['images']}", f"--output={w['prep_img']}"]
                       + prep_argv(w, w["t5"])) == 0
  return w


def _manifest(prep: str) -> dict:
  return reader.load_manifest(os.path.join(prep, "shards"))[1]


def test_prep_records_the_latent_contract(world):
  m = _manifest(world["prep"])
  # The rotated clips are shown portrait, so they land in the portrait bucket.
  assert sorted(m["buckets"]) == ["4x10x6", "4x6x10"]
  assert all(b["count"] >= 8 for b in m["buckets"].values())
  vae, text = m["contract"]["vae"], m["contract"]["text"]
  assert vae["kind"] == "kl" and vae["scaling_factor"] == pytest.approx(0.18215)
  assert vae["spatial_factor"] == 4 and vae["latent_channels"] == 4
  assert vae["weights"]["sha256"] and vae["weights"]["path"] == os.path.abspath(world["vae"])
  assert text["kind"] == "clip" and text["dim"] == WIDTH and text["max_length"] == TEXT_LEN
  assert text["tokenizer"]["kind"] == "bpe"
  assert m["captions"] == {"sidecar": m["num_records"]}
  micro = m["buckets"]["4x6x10"]["micro"]
  assert micro["stride"]["mode"] == 2 and micro["orig_height"]["mode"] == 48
  assert m["buckets"]["4x10x6"]["micro"]["orig_height"]["mode"] == 80  # display geometry
  img = _manifest(world["prep_img"])
  assert sorted(img["buckets"]) == ["1x6x10", "1x8x8"] and img["num_records"] == 16
  assert img["contract"]["text"]["kind"] == "t5" and img["captions"] == {"sidecar": 16}


def _train(workdir: str, config: str, data: str, overrides: list[str], devices: int = 2):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  cmd = [sys.executable, "-m", "stiv_jax.main", f"--config=experiments/configs/{config}",
         f"--workdir={workdir}", f"--config.data.path={data}", "--config.data.batch_size=4",
         "--config.train.num_steps=4", "--config.metrics.every_steps=2",
         "--config.checkpoint.every_steps=4", "--config.metrics.tensorboard=False",
         "--config.train.fast_compile=True", f"--config.text.dim={WIDTH}",
         f"--config.model.text_dim={WIDTH}", f"--config.text.max_length={TEXT_LEN}",
         "--config.vae.kind=kl"] + overrides
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  runs = {"t2i": str(root / "t2i"), "t2v": str(root / "t2v")}
  p = _train(runs["t2i"], "t2i.py:tiny", os.path.join(world["prep_img"], "shards"),
             ["--config.text.kind=t5"])
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  p = _train(runs["t2v"], "t2v.py:tiny", os.path.join(world["prep"], "shards"),
             ["--config.text.kind=clip", "--config.model.latent_height=6",
              "--config.model.latent_width=10"])
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  runs["t2v_stdout"] = p.stdout
  return runs


def _bucket_keys(workdir: str) -> set[str]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {k.split("/")[1] for line in f for k in json.loads(line) if k.startswith("bucket/")}


def test_training_reaches_every_bucket_and_keeps_the_contract(world, trained):
  assert _bucket_keys(trained["t2v"]) == {"4x6x10", "4x10x6"}
  assert _bucket_keys(trained["t2i"]) == {"1x8x8", "1x6x10"}
  config = ckpt_lib.load_config(trained["t2v"])
  # Unset factors and paths came from the shards' contract, not the schema.
  assert config.vae.scaling_factor == pytest.approx(0.18215)
  assert config.vae.path == os.path.abspath(world["vae"])
  assert config.text.path == os.path.abspath(world["clip"])
  run = contract_lib.load_run_contract(trained["t2v"])
  assert run["contract"] == _manifest(world["prep"])["contract"]


def test_samples_use_the_shards_stride_sizes_and_scale(world, trained, tmp_path):
  m = _manifest(world["prep"])
  bucket = m["buckets"]["4x6x10"]["micro"]
  for task, extra in (("t2v", []), ("ti2v", [f"--image={tmp_path / 'first.png'}"])):
    if task == "ti2v":
      from PIL import Image
      Image.fromarray(moving_square(24, 40, 1, "red", 99)[0]).save(tmp_path / "first.png")
    s = sample_cli.main([f"--workdir={trained['t2v']}", f"--task={task}", "--steps=2",
                         "--prompt=a red square moving right", "--no-progress",
                         f"--out={tmp_path / task}.mp4"] + extra)
    assert s["micro"]["stride"] == bucket["stride"]["mode"] == 2
    assert (s["micro"]["orig_height"], s["micro"]["orig_width"]) == (
        bucket["orig_height"]["mode"], bucket["orig_width"]["mode"])
    assert s["micro_from"] == "training bucket 4x6x10" and s["latent_size"] == [6, 10]
    assert s["vae"]["scaling_factor"] == pytest.approx(m["contract"]["vae"]["scaling_factor"])
    assert os.path.getsize(s["files"][0]) > 0


def test_prep_latents_decode_at_sampling_as_the_vae_decodes_them(world, trained):
  """Encode (prep) -> decode (sampling) of a real frame: the sampling path's VAE, built from
  the run's config, decodes the stored latents exactly as diffusers does at the contract's
  scale, and reproduces the frame as well as the VAE's own round trip does."""
  ds = reader.open_dataset(os.path.join(world["prep"], "shards"))
  rec = next(r for r in map(ds.decode, range(len(ds))) if r.bucket == "4x6x10")
  config = ckpt_lib.load_config(trained["t2v"])
  ours = build_vae(config.vae).decode(rec.latents)                       # [T, H, W, 3]
  ref = diffusers.AutoencoderKL.from_pretrained(world["vae"]).eval()
  scale = ref.config.scaling_factor
  with torch.no_grad():
    z = torch.from_numpy(rec.latents / scale).permute(0, 3, 1, 2)
    want = ref.decode(z).sample.permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4)
  # The source frames of that clip, cropped as prep did, against diffusers' round trip.
  from data_pipeline import encode as encode_lib
  row = next(r for r in mf.read_stage(world["prep"], "encode") if r["id"] == rec.clip_id)
  cfg = prep_cli.apply_overrides(prep_cli.load_config("tiny"), prep_sets(world, world["clip"]))
  frames, _ = encode_lib.decode_for_encode(row, cfg.encode)
  bucket = tuple(int(x) * 4 for x in rec.bucket.split("x")[1:])
  crop, _, _ = encode_lib.resize_crop(frames, bucket)
  x = torch.from_numpy(crop.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)
  with torch.no_grad():
    rt = ref.decode(ref.encode(x).latent_dist.mean).sample.permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(ours, rt, atol=2e-3)   # float16 storage of the latents


def test_configs_that_disagree_with_their_shards_fail_naming_both_values(world):
  where = os.path.join(world["prep"], "shards")
  manifest = _manifest(world["prep"])

  def config(**fields):
    c = schema.train_config()
    c.model = schema.model_config("small", num_frames=4, latent_height=6, latent_width=10,
                                  latent_channels=4, text_dim=WIDTH)
    c.vae = schema.vae_config("kl")
    c.text = schema.text_config("clip", dim=WIDTH, max_length=TEXT_LEN)
    for k, v in fields.items():
      section, name = k.split("__")
      c[section][name] = v
    return c

  contract_lib.resolve_train_config(config(), manifest, where)   # the right config passes
  cases = {"model__latent_height": (8, r"\[4, 8, 10\].*4x10x6.*4x6x10"),
           "model__latent_channels": (8, r"says 8 but bucket .* has 4 channels"),
           "text__dim": (64, r"text.dim: the config says 64 .* have 32"),
           "vae__scaling_factor": (1.0, r"says 1.0 .* made with 0.18215"),
           "vae__kind": ("pixel", r"says 'pixel' .* made with 'kl'"),
           "text__kind": ("hash", r"says 'hash' .* encoded with 'clip'")}
  for field, (value, pattern) in cases.items():
    with pytest.raises(contract_lib.ContractError, match=pattern):
      c = config(**{field: value})
      if field == "text__dim":
        c.model.text_dim = 64
      contract_lib.resolve_train_config(c, manifest, where)
  other = os.path.join(world["t5"])   # weights other than the ones that made the latents
  with pytest.raises(contract_lib.ContractError, match="sha256"):
    contract_lib.resolve_train_config(config(text__path=other), manifest, where)


def test_stiv_train_refuses_a_mismatched_config_before_compiling(world, tmp_path):
  p = _train(str(tmp_path / "bad"), "t2v.py:tiny", os.path.join(world["prep"], "shards"),
             ["--config.text.kind=clip", "--config.vae.scaling_factor=0.5",
              "--config.model.latent_height=6", "--config.model.latent_width=10"])
  assert p.returncode != 0
  assert "vae.scaling_factor: the config says 0.5" in p.stderr + p.stdout
  assert "0.18215" in p.stderr + p.stdout
