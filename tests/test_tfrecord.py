"""TFRecord framing: masked CRC32C, round trip, corruption detection, TensorFlow interop."""
import importlib.util
import os
import struct

import crc32c
import pytest

from stiv_jax.data import tfrecord

RECORDS = [b"", b"a", b"hello tfrecord", bytes(range(256)) * 40]


def test_masked_crc_matches_tensorflow_definition():
  # CRC-32C check value (RFC 3720) and TensorFlow's mask: rotr15 + 0xa282ead8 (crc32c.h).
  assert crc32c.crc32c(b"123456789") == 0xE3069283
  crc = 0xE3069283
  expected = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
  assert tfrecord.masked_crc(b"123456789") == expected
  assert tfrecord.masked_crc(b"") == 0xA282EAD8


def test_frame_layout():
  framed = tfrecord.frame(b"abc")
  assert len(framed) == tfrecord.framed_size(3) == 12 + 3 + 4
  assert struct.unpack("<Q", framed[:8])[0] == 3
  assert struct.unpack("<I", framed[8:12])[0] == tfrecord.masked_crc(framed[:8])
  assert framed[12:15] == b"abc"
  assert struct.unpack("<I", framed[15:])[0] == tfrecord.masked_crc(b"abc")


def test_round_trip_scan_and_random_access(tmp_path):
  path = str(tmp_path / "a.tfrecord")
  offsets = tfrecord.write_file(path, RECORDS)
  assert [o for o, _ in tfrecord.scan(path)] == offsets
  assert tfrecord.read_all(path) == RECORDS
  fd = os.open(path, os.O_RDONLY)
  try:
    for off, rec in reversed(list(zip(offsets, RECORDS))):
      assert tfrecord.read_at(fd, off, path=path) == rec
      assert tfrecord.read_at(fd, off, len(rec), path=path) == rec
  finally:
    os.close(fd)


def _corrupt(path: str, pos: int) -> None:
  with open(path, "r+b") as f:
    f.seek(pos)
    b = f.read(1)
    f.seek(pos)
    f.write(bytes([b[0] ^ 0x10]))


@pytest.mark.parametrize("where,reason", [("data", "data CRC"), ("length", "length CRC")])
def test_corruption_names_file_and_offset(tmp_path, where, reason):
  path = str(tmp_path / "c.tfrecord")
  offsets = tfrecord.write_file(path, RECORDS)
  victim = 2
  pos = offsets[victim] + (tfrecord.HEADER_BYTES + 3 if where == "data" else 1)
  _corrupt(path, pos)
  with pytest.raises(tfrecord.TFRecordError, match=reason) as err:
    list(tfrecord.scan(path))
  assert err.value.path == path and err.value.offset == offsets[victim]
  assert path in str(err.value) and f"offset {offsets[victim]}" in str(err.value)
  fd = os.open(path, os.O_RDONLY)
  try:
    with pytest.raises(tfrecord.TFRecordError, match=reason):
      tfrecord.read_at(fd, offsets[victim], len(RECORDS[victim]), path=path)
    assert tfrecord.read_at(fd, offsets[1], path=path) == RECORDS[1]  # others still readable
  finally:
    os.close(fd)


def test_truncated_file_detected(tmp_path):
  path = str(tmp_path / "t.tfrecord")
  offsets = tfrecord.write_file(path, RECORDS)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 10)
  with pytest.raises(tfrecord.TFRecordError, match="truncated") as err:
    list(tfrecord.scan(path))
  assert err.value.offset == offsets[-1]


def test_index_length_mismatch_detected(tmp_path):
  path = str(tmp_path / "l.tfrecord")
  offsets = tfrecord.write_file(path, RECORDS)
  fd = os.open(path, os.O_RDONLY)
  try:
    with pytest.raises(tfrecord.TFRecordError, match="index length"):
      tfrecord.read_at(fd, offsets[2], len(RECORDS[2]) + 1, path=path)
  finally:
    os.close(fd)


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                    reason="TensorFlow not installed (kept out of the core install)")
def test_tensorflow_interop(tmp_path):
  import tensorflow as tf
  tf_path = str(tmp_path / "tf.tfrecord")
  with tf.io.TFRecordWriter(tf_path) as w:
    for r in RECORDS:
      w.write(r)
  assert tfrecord.read_all(tf_path) == RECORDS  # we read TensorFlow's file
  ours = str(tmp_path / "ours.tfrecord")
  tfrecord.write_file(ours, RECORDS)
  with open(tf_path, "rb") as a, open(ours, "rb") as b:
    assert a.read() == b.read()  # byte-identical framing
  assert [r.numpy() for r in tf.data.TFRecordDataset(ours)] == RECORDS


def _grain_testdata_tfrecord() -> str:
  import grain
  return os.path.join(os.path.dirname(grain.__file__), "_src", "python", "testdata",
                      "morris_sequence_first_5.tfrecord")


@pytest.mark.skipif(not os.path.exists(_grain_testdata_tfrecord()),
                    reason="grain's test TFRecord (written by TensorFlow) not shipped")
def test_reads_and_reproduces_a_tensorflow_written_file(tmp_path):
  # grain ships a TFRecord written by TensorFlow: read it, and write it back byte for byte.
  path = _grain_testdata_tfrecord()
  records = tfrecord.read_all(path)
  assert records == [b"1", b"1 1", b"2 1", b"1 2 1 1", b"1 1 1 2 2 1"]
  ours = str(tmp_path / "ours.tfrecord")
  tfrecord.write_file(ours, records)
  with open(path, "rb") as a, open(ours, "rb") as b:
    assert a.read() == b.read()
