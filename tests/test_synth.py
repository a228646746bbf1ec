"""Synthetic corpus: rendering, captions, MP4 + sidecars, determinism, latent-shard fast path."""
import json
import os
import re

import av
import ml_collections
import numpy as np
import pytest

from data_pipeline import synth
from stiv_jax.data import reader
from stiv_jax.models.encoders import build_text_encoder, build_vae

CAPTION = re.compile(r"^a (red|green|blue|yellow|magenta|cyan|white) (circle|square|triangle) "
                     r"moving (left|right|up|down)$")


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_render_scene_moves_at_constant_speed(direction):
  spec = synth.SceneSpec("cyan", "square", direction, radius=6.0, x0=32.0, y0=32.0, speed=1.5)
  frames = synth.render_scene(spec, size=64, num_frames=9)
  assert frames.shape == (9, 64, 64, 3) and frames.dtype == np.uint8
  colors = {tuple(c) for c in frames.reshape(-1, 3)}
  assert colors == {(0, 0, 0), (0, 255, 255)}  # black background, one filled shape
  lit = frames[..., 1] > 0
  cy = [np.nonzero(f)[0].mean() for f in lit]
  cx = [np.nonzero(f)[1].mean() for f in lit]
  dx, dy = synth.DIRECTIONS[direction]
  np.testing.assert_allclose(np.diff(cx), dx * 1.5, atol=0.6)
  np.testing.assert_allclose(np.diff(cy), dy * 1.5, atol=0.6)
  np.testing.assert_allclose(cx[-1] - cx[0], dx * 12, atol=1.0)


def test_shapes_differ_and_bad_names_refused():
  areas = {s: synth.shape_mask(s, 32, 32, 10, 64).sum() for s in synth.SHAPES}
  assert areas["square"] > areas["circle"] > areas["triangle"] > 0
  with pytest.raises(ValueError, match="color: 'purple'"):
    synth.SceneSpec("purple", "circle", "up", 5, 10, 10, 1)


def test_sampled_scenes_stay_in_frame_and_cover_vocabulary():
  seen = set()
  for i in range(300):
    s = synth.sample_scene(synth.video_rng(0, i), size=64, num_frames=16)
    assert CAPTION.match(s.caption)
    seen |= {s.color, s.shape, s.direction}
    frames = synth.render_scene(s, size=64, num_frames=16)
    assert (frames.reshape(16, -1).max(axis=1) > 0).all()  # visible in every frame
  assert seen == set(synth.COLORS) | set(synth.SHAPES) | set(synth.DIRECTIONS)


def test_videos_have_cuts_and_fades():
  specs = [synth.sample_video(synth.video_rng(1, i), size=32, num_frames=24) for i in range(40)]
  cuts = [s for s in specs if len(s.scenes) == 2]
  fades = [s for s in specs if s.fade_out_frames]
  assert 3 <= len(cuts) <= 20 and 3 <= len(fades) <= 20
  v = synth.render_video(cuts[0], size=32)
  assert cuts[0].scenes[0].color != cuts[0].scenes[1].color
  fade = synth.render_video(fades[0], size=32)
  assert fade[-1].max() == 0 and fade[-fades[0].fade_out_frames - 1].max() > 0
  assert v.shape == (24, 32, 32, 3)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("synth") / "videos")
  assert synth.synth_cli([f"--output={out}", "--num-videos=8", "--seed=3", "--size=48",
                          "--frames=24", "--fps=12"]) == 0
  return out


def test_synth_cli_writes_mp4_and_sidecars(video_dir):
  names = sorted(os.listdir(video_dir))
  assert names == sorted([f"video_{i:05d}.{e}" for i in range(8) for e in ("mp4", "json")])
  n_cuts = 0
  for i in range(8):
    meta = json.loads(open(os.path.join(video_dir, f"video_{i:05d}.json")).read())
    assert CAPTION.match(meta["caption"]) and meta["num_frames"] == 24 and meta["fps"] == 12
    assert all(CAPTION.match(s["caption"]) for s in meta["scenes"])
    assert meta["scenes"][-1]["end_frame"] == 24
    n_cuts += len(meta["scenes"]) == 2
    with av.open(os.path.join(video_dir, meta["video"])) as c:
      decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert decoded.shape == (24, 48, 48, 3)
    spec = synth.sample_video(synth.video_rng(3, i), size=48, num_frames=24)
    assert spec.scenes[0].caption == meta["caption"]
    assert np.abs(decoded.astype(np.float32) - synth.render_video(spec, size=48)).mean() < 4
  assert n_cuts >= 1


def test_synth_cli_deterministic(video_dir, tmp_path):
  again = str(tmp_path / "again")
  synth.synth_cli([f"--output={again}", "--num-videos=3", "--seed=3", "--size=48",
                   "--frames=24", "--fps=12"])
  for i in range(3):
    for ext in ("json", "mp4"):
      name = f"video_{i:05d}.{ext}"
      with open(os.path.join(video_dir, name), "rb") as a:
        with open(os.path.join(again, name), "rb") as b:
          assert a.read() == b.read(), name


def test_synth_cli_bad_args(tmp_path):
  with pytest.raises(SystemExit):
    synth.synth_cli([f"--output={tmp_path}", "--num-videos=0"])
  with pytest.raises(ValueError, match="--size"):
    synth.write_synthetic_videos(str(tmp_path), num_videos=1, seed=0, size=33)


SHARD_ARGS = ["--num-videos=24", "--seed=5", "--size=32", "--frames=8,4", "--vae-factor=4",
              "--latent-channels=4", "--text-dim=16", "--text-len=8"]


def test_synth_shards_fast_path(tmp_path):
  out = str(tmp_path / "shards")
  assert synth.synth_shards_cli([f"--output={tmp_path}", *SHARD_ARGS]) == 0
  ds = reader.open_dataset(out)
  assert ds.bucket_counts() == {"8x8x8": 12, "4x8x8": 12}
  assert ds.manifest["metadata"]["vae"]["kind"] == "pixel"
  vae = build_vae(ml_collections.ConfigDict({"kind": "pixel", "spatial_factor": 4,
                                             "latent_channels": 4}))
  text = build_text_encoder(ml_collections.ConfigDict({"kind": "hash", "dim": 16,
                                                       "max_length": 8}))
  for i in (0, 7):
    rec = ds.decode(i)
    assert CAPTION.match(rec.caption) and rec.clip_id == f"synth-5-{i:06d}"
    spec = synth.shard_clip_spec(5, i, size=32, frames=(8, 4))
    n, scene = (8, 4)[i % 2], spec.scenes[0]
    assert spec.num_frames == n
    pixels = synth.render_video(spec, size=32)
    want = vae.encode(pixels.astype(np.float32) / 127.5 - 1.0)
    np.testing.assert_allclose(rec.latents, want, atol=2e-3)
    tokens, mask, pooled = text.encode_text([scene.caption])
    assert rec.caption == scene.caption
    np.testing.assert_allclose(rec.text, tokens[0], atol=1e-2)
    np.testing.assert_array_equal(rec.text_mask, mask[0])
    assert rec.micro == {"orig_height": 32, "orig_width": 32, "crop_top": 0, "crop_left": 0,
                         "stride": 1, "num_frames": n}
  again = str(tmp_path / "again" / "shards")
  synth.synth_shards_cli([f"--output={tmp_path / 'again'}", *SHARD_ARGS])
  for name in sorted(os.listdir(out)):
    with open(os.path.join(out, name), "rb") as a, open(os.path.join(again, name), "rb") as b:
      assert a.read() == b.read(), name  # deterministic for a seed
  assert reader.validate_dataset(out)["num_records"] == 24
