"""TFRecord framing in pure Python: writer, CRC-checked sequential scan and random access.

A record is: length (uint64 little-endian), masked CRC32C of those 8 bytes (uint32 LE), the
data, masked CRC32C of the data (uint32 LE) -- the format TensorFlow's TFRecordWriter writes
(uncompressed), so files are interchangeable with TensorFlow.
"""
from __future__ import annotations

import os
import struct
from typing import BinaryIO, Iterator

import crc32c as _crc32c

_MASK_DELTA = 0xA282EAD8
HEADER_BYTES = 12   # length + its CRC
FOOTER_BYTES = 4    # data CRC
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class TFRecordError(ValueError):
  """A corrupt or truncated record; names the file and the byte offset of the record."""

  def __init__(self, path: str, offset: int, reason: str):
    super().__init__(f"{path}: bad TFRecord at byte offset {offset}: {reason}")
    self.path = str(path)
    self.offset = int(offset)
    self.reason = reason


def masked_crc(data: bytes) -> int:
  """TensorFlow's masked CRC32C: rotate right by 15 bits and add a constant (mod 2**32)."""
  crc = _crc32c.crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
  """The framed bytes of one record (header, data, footer)."""
  header = _U64.pack(len(data))
  return header + _U32.pack(masked_crc(header)) + data + _U32.pack(masked_crc(data))


def framed_size(data_len: int) -> int:
  """Bytes one record of `data_len` data bytes takes on disk."""
  return HEADER_BYTES + data_len + FOOTER_BYTES


def write_record(f: BinaryIO, data: bytes) -> int:
  """Appends one framed record to an open binary file; returns the bytes written."""
  framed = frame(data)
  f.write(framed)
  return len(framed)


def _parse_header(path: str, offset: int, header: bytes, check_crc: bool) -> int:
  """The data length from a 12-byte header, CRC-checked."""
  if len(header) < HEADER_BYTES:
    raise TFRecordError(path, offset, f"truncated header ({len(header)} of {HEADER_BYTES} bytes)")
  (length,) = _U64.unpack_from(header, 0)
  (crc,) = _U32.unpack_from(header, 8)
  if check_crc and crc != masked_crc(header[:8]):
    raise TFRecordError(path, offset, "length CRC mismatch")
  return length


def _check_data(path: str, offset: int, data: bytes, footer: bytes, length: int,
                check_crc: bool) -> None:
  """Checks a record body for truncation and its data CRC."""
  if len(data) != length or len(footer) != FOOTER_BYTES:
    raise TFRecordError(path, offset, f"truncated data (record length {length})")
  if check_crc and _U32.unpack(footer)[0] != masked_crc(data):
    raise TFRecordError(path, offset, "data CRC mismatch")


def read_at(fd: int, offset: int, length: int | None = None, *, path: str = "<fd>",
            check_crc: bool = True) -> bytes:
  """Reads the record at `offset` of an open file descriptor (thread-safe `os.pread`).

  With the data `length` known (from a shard index) one read suffices; the header length is
  still checked against it.
  """
  if length is None:
    header = os.pread(fd, HEADER_BYTES, offset)
    length = _parse_header(path, offset, header, check_crc)
    body = os.pread(fd, length + FOOTER_BYTES, offset + HEADER_BYTES)
  else:
    buf = os.pread(fd, HEADER_BYTES + length + FOOTER_BYTES, offset)
    header, body = buf[:HEADER_BYTES], buf[HEADER_BYTES:]
    stored = _parse_header(path, offset, header, check_crc)
    if stored != length:
      raise TFRecordError(path, offset, f"record length {stored} != index length {length}")
  _check_data(path, offset, body[:length], body[length:], length, check_crc)
  return body[:length]


def scan(path: str, *, check_crc: bool = True) -> Iterator[tuple[int, bytes]]:
  """Yields (byte offset, data) for every record of a TFRecord file, in order, checking CRCs."""
  path = str(path)
  with open(path, "rb") as f:
    offset = 0
    while True:
      header = f.read(HEADER_BYTES)
      if not header:
        return
      length = _parse_header(path, offset, header, check_crc)
      data = f.read(length)
      footer = f.read(FOOTER_BYTES)
      _check_data(path, offset, data, footer, length, check_crc)
      yield offset, data
      offset += framed_size(length)


def read_all(path: str) -> list[bytes]:
  """All records of a TFRecord file (CRC-checked)."""
  return [data for _, data in scan(path)]


def write_file(path: str, records) -> list[int]:
  """Writes records to a new TFRecord file (not atomic; see writer.ShardWriter); returns offsets."""
  offsets = []
  with open(path, "wb") as f:
    pos = 0
    for data in records:
      offsets.append(pos)
      pos += write_record(f, data)
  return offsets
