"""Shard schema, writer (atomic, sized shards, index, manifest), reader and stiv-shards CLI."""
import importlib.util
import json
import os

import numpy as np
import pytest

from stiv_jax.data import reader, schema, tfrecord, writer
from stiv_jax.tools import shards as shards_cli


def make_record(i: int, frames: int = 2, hw: int = 4, channels: int = 2, length: int = 5,
                dim: int = 8) -> schema.ClipRecord:
  rng = np.random.default_rng(i)
  mask = np.zeros(length, bool)
  mask[: 1 + i % length] = True
  return schema.ClipRecord(
      latents=rng.standard_normal((frames, hw, hw, channels)).astype(np.float32),
      text=rng.standard_normal((length, dim)).astype(np.float32), text_mask=mask,
      pooled=rng.standard_normal(dim).astype(np.float32),
      micro={"orig_height": 64, "orig_width": 48, "crop_top": i, "crop_left": 2, "stride": 3,
             "num_frames": frames},
      caption=f"a red circle moving left #{i}", clip_id=f"clip-{i}", source="vid.mp4",
      span=(1.0, 2.5))


def write_dataset(path, n=30, target=4096, frames_of=lambda i: 2 + 2 * (i % 2)):
  with writer.ShardWriter(str(path), target_shard_bytes=target, metadata={"test": 1}) as w:
    for i in range(n):
      w.write(make_record(i, frames=frames_of(i)))
  return w.written_manifest


@pytest.mark.parametrize("dtype,tol", [("float16", 1e-2), ("bfloat16", 5e-2), ("float32", 0)])
def test_schema_round_trip(dtype, tol):
  rec = make_record(3)
  out = schema.decode_example(schema.encode_example(rec, latents_dtype=dtype, text_dtype=dtype))
  np.testing.assert_allclose(out.latents, rec.latents, rtol=tol, atol=tol)
  np.testing.assert_allclose(out.text, rec.text, rtol=tol, atol=tol)
  np.testing.assert_allclose(out.pooled, rec.pooled, rtol=tol, atol=tol)
  np.testing.assert_array_equal(out.text_mask, rec.text_mask)
  assert out.micro == rec.micro and out.caption == rec.caption and out.span == rec.span
  assert out.bucket == "2x4x4" and out.latents.dtype == np.float32
  np.testing.assert_array_equal(out.micro_vector(), [64, 48, 3, 2, 3, 2])


def test_schema_is_a_standard_example():
  data = schema.encode_example(make_record(0))
  ex = schema.Example.FromString(data)
  assert ex.DESCRIPTOR.fields_by_name["features"].number == 1
  keys = set(ex.features.feature)
  assert {"latents", "text", "text_mask", "pooled", "caption", "bucket",
          "micro/num_frames", "schema_version"} <= keys
  assert "token_ids" not in keys  # schema holds precomputed embeddings, not ids


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                    reason="TensorFlow not installed (kept out of the core install)")
def test_schema_parses_with_tensorflow():
  import tensorflow as tf
  ex = tf.train.Example.FromString(schema.encode_example(make_record(0)))
  assert ex.features.feature["caption"].bytes_list.value[0] == b"a red circle moving left #0"


def _with_version(version: str) -> bytes:
  ex = schema.Example.FromString(schema.encode_example(make_record(0)))
  ex.features.feature["schema_version"].bytes_list.value[0] = version.encode()
  return ex.SerializeToString()


def test_schema_refuses_newer_major():
  assert schema.decode_example(_with_version("1.7")).schema_version == "1.7"  # minor: fine
  with pytest.raises(schema.SchemaError, match="newer than this reader"):
    schema.decode_example(_with_version("2.0"))
  with pytest.raises(schema.SchemaError, match="malformed"):
    schema.decode_example(_with_version("two"))


def test_schema_bad_inputs():
  rec = make_record(0)
  rec.micro = {k: v for k, v in rec.micro.items() if k != "stride"}
  with pytest.raises(schema.SchemaError, match="stride"):
    schema.encode_example(rec)
  bad = make_record(0)
  bad.latents[0, 0, 0, 0] = np.nan
  with pytest.raises(schema.SchemaError, match="NaN"):
    schema.encode_example(bad)
  with pytest.raises(schema.SchemaError, match="not a tf.train.Example"):
    schema.decode_example(b"\xff\xff\xff")


def test_writer_shards_index_manifest(tmp_path):
  manifest = write_dataset(tmp_path, n=30, target=4096)
  files = sorted(os.listdir(tmp_path))
  assert not [f for f in files if ".tmp" in f]  # atomic: no leftovers
  assert manifest["num_records"] == 30 and manifest["num_shards"] > 2
  assert {k: (v["count"], v["shape"]) for k, v in manifest["buckets"].items()} == {
      "2x4x4": (15, [2, 4, 4, 2]), "4x4x4": (15, [4, 4, 4, 2])}
  # Per-bucket micro-condition statistics: crop_top is the record number (even ones in 2x4x4).
  micro = manifest["buckets"]["2x4x4"]["micro"]
  assert micro["crop_top"] == {"mode": 0, "min": 0, "max": 28}
  assert micro["stride"] == {"mode": 3, "min": 3, "max": 3}
  assert micro["num_frames"]["mode"] == 2
  assert manifest["captions"] == {"unknown": 30}  # no caption source recorded
  assert manifest["metadata"] == {"test": 1} and "contract" not in manifest
  for shard in manifest["shards"]:
    path = tmp_path / shard["file"]
    assert writer.file_crc32c(str(path)) == shard["crc32c"]
    index = json.loads((tmp_path / shard["index"]).read_text())
    assert [o for o, _ in tfrecord.scan(str(path))] == index["offsets"]
    # A shard is closed once it reaches the target: only its last record crosses it.
    assert index["offsets"][-1] < 4096
  assert json.loads((tmp_path / "manifest.json").read_text()) == manifest


def test_writer_refuses_existing_and_aborts_cleanly(tmp_path):
  write_dataset(tmp_path / "a", n=3)
  with pytest.raises(FileExistsError, match="already exists"):
    writer.ShardWriter(str(tmp_path / "a"))
  with pytest.raises(RuntimeError):
    with writer.ShardWriter(str(tmp_path / "b")) as w:
      w.write(make_record(0))
      raise RuntimeError("crash")
  assert os.listdir(tmp_path / "b") == []  # no manifest, no temp shard


def test_reader_random_access(tmp_path):
  write_dataset(tmp_path, n=30)
  ds = reader.open_dataset(str(tmp_path))
  assert len(ds) == 30 and ds.bucket_counts() == {"2x4x4": 15, "4x4x4": 15}
  for i in (29, 0, 17, 4):
    rec = ds.decode(i)
    assert rec.clip_id == f"clip-{i}" and rec.micro["crop_top"] == i
  assert reader.open_dataset(str(tmp_path / "manifest.json")).decode(3).clip_id == "clip-3"
  with pytest.raises(IndexError):
    ds.read(30)


def test_reader_fails_early_naming_path(tmp_path):
  missing = tmp_path / "nope"
  with pytest.raises(reader.DatasetError, match=str(missing)):
    reader.open_dataset(str(missing))
  empty_dir = tmp_path / "empty"
  empty_dir.mkdir()
  with pytest.raises(reader.DatasetError, match=f"{empty_dir}: no manifest.json"):
    reader.open_dataset(str(empty_dir))
  writer.ShardWriter(str(tmp_path / "zero")).close()
  with pytest.raises(reader.DatasetError, match="dataset is empty"):
    reader.open_dataset(str(tmp_path / "zero"))


def test_reader_refuses_newer_manifest(tmp_path):
  write_dataset(tmp_path, n=2)
  m = json.loads((tmp_path / "manifest.json").read_text())
  m["schema_version"] = "3.1"
  (tmp_path / "manifest.json").write_text(json.dumps(m))
  with pytest.raises(schema.SchemaError, match="manifest.json: schema_version 3.1 is newer"):
    reader.open_dataset(str(tmp_path))


def test_validate_and_cli(tmp_path, capsys):
  manifest = write_dataset(tmp_path, n=12, target=1 << 20)
  assert reader.validate_dataset(str(tmp_path))["num_records"] == 12
  assert shards_cli.main(["validate", str(tmp_path)]) == 0
  capsys.readouterr()
  assert shards_cli.main(["inspect", str(tmp_path), "--record=5"]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed["record"]["clip_id"] == "clip-5" and printed["manifest"]["num_records"] == 12
  shard = str(tmp_path / manifest["shards"][0]["file"])
  index = json.loads((tmp_path / manifest["shards"][0]["index"]).read_text())
  victim = index["offsets"][7]
  with open(shard, "r+b") as f:
    f.seek(victim + 40)
    b = f.read(1)
    f.seek(victim + 40)
    f.write(bytes([b[0] ^ 1]))
  capsys.readouterr()
  assert shards_cli.main(["validate", str(tmp_path)]) == 1
  err = capsys.readouterr().err
  assert shard in err and f"byte offset {victim}" in err and "CRC" in err


def test_inspect_reports_buckets_and_record(tmp_path):
  write_dataset(tmp_path, n=6)
  out = shards_cli.inspect(str(tmp_path), record=1)
  assert out["records_per_bucket"] == {"2x4x4": 3, "4x4x4": 3}
  assert out["record"]["clip_id"] == "clip-1" and out["record"]["latents"]["shape"] == [4, 4, 4, 2]
  assert out["manifest"]["num_records"] == 6


def test_validate_detects_index_mismatch(tmp_path):
  manifest = write_dataset(tmp_path, n=4, target=1 << 20)
  idx_path = tmp_path / manifest["shards"][0]["index"]
  index = json.loads(idx_path.read_text())
  index["buckets"][1], index["buckets"][0] = index["buckets"][0], index["buckets"][1]
  idx_path.write_text(json.dumps(index))
  with pytest.raises(reader.DatasetError, match="checksum"):
    reader.validate_dataset(str(tmp_path))


def test_subset_by_caption(tmp_path, capsys):
  """`stiv-shards subset`: only matching captions, bytes copied, contract + empty prompt kept,
  the new set trains like any other; bad inputs are refused naming the flag."""
  from stiv_jax.data import contract, synthetic
  from stiv_jax.models.encoders.standins import HashTextEncoder, PixelSpaceVAE
  src, dst = tmp_path / "all", tmp_path / "red"
  synthetic.write_synthetic_shards(str(src), num_videos=24, seed=0, vae=PixelSpaceVAE(4, 4),
                                   text_encoder=HashTextEncoder(16, 8), size=16, frames=(4,))
  full = reader.open_dataset(str(src))
  red = [i for i in range(len(full)) if " red " in f" {full.decode(i).caption} "]
  assert 0 < len(red) < len(full)
  assert shards_cli.main(["subset", str(src), f"--output={dst}", "--caption=\\bred\\b"]) == 0
  assert json.loads(capsys.readouterr().out)["records"] == len(red)
  sub = reader.open_dataset(str(dst))
  assert len(sub) == len(red)
  assert [sub.read(j) for j in range(len(sub))] == [full.read(i) for i in red]
  assert sub.manifest["contract"]["vae"] == full.manifest["contract"]["vae"]
  e_src = contract.load_empty_prompt(full.root, full.manifest["contract"])
  e_dst = contract.load_empty_prompt(sub.root, sub.manifest["contract"])
  assert all(np.array_equal(e_src[k], e_dst[k]) for k in e_src)
  assert sub.manifest["metadata"]["subset_of"]["records"] == len(red)
  assert shards_cli.main(["validate", str(dst)]) == 0
  capsys.readouterr()
  before = (dst / "manifest.json").read_bytes()
  for argv, needle in ((["--caption=\\bred\\b"], "already holds a dataset"),
                       (["--caption=purple"], "matches none"),
                       (["--caption=("], "not a valid regex")):
    out = tmp_path / "again" if needle != "already holds a dataset" else dst
    assert shards_cli.main(["subset", str(src), f"--output={out}", *argv]) == 1
    assert needle in capsys.readouterr().err
  assert (dst / "manifest.json").read_bytes() == before
