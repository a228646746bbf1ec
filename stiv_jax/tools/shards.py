"""`stiv-shards`: inspect or validate a latent-shard dataset.

  stiv-shards inspect PATH [--record=I]   manifest, records per bucket, one decoded record
  stiv-shards validate PATH               every CRC, index entry and record schema; exits 1
                                          naming the first bad file and byte offset
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from stiv_jax.data import reader as reader_lib
from stiv_jax.data import schema as schema_lib
from stiv_jax.data import tfrecord


def _array_summary(a: np.ndarray) -> dict[str, Any]:
  """Shape, dtype and value range of an array, for printing."""
  a = np.asarray(a)
  out: dict[str, Any] = {"shape": list(a.shape), "dtype": str(a.dtype)}
  if a.size and a.dtype != bool:
    out.update(min=float(a.min()), max=float(a.max()), mean=float(a.mean()))
  elif a.size:
    out.update(true=int(a.sum()))
  return out


def record_summary(rec: schema_lib.ClipRecord) -> dict[str, Any]:
  """A printable view of one decoded record (arrays summarised)."""
  return {"clip_id": rec.clip_id, "caption": rec.caption, "source": rec.source,
          "span": list(rec.span), "bucket": rec.bucket, "schema_version": rec.schema_version,
          "micro": rec.micro, "latents": _array_summary(rec.latents),
          "text": _array_summary(rec.text), "text_mask": _array_summary(rec.text_mask),
          "pooled": _array_summary(rec.pooled)}


def inspect(path: str, record: int = 0) -> dict[str, Any]:
  """Manifest (shard list abridged), records per bucket and one decoded record."""
  ds = reader_lib.open_dataset(path)
  if not 0 <= record < len(ds):
    raise ValueError(f"--record: {record} out of range [0, {len(ds)})")
  manifest = dict(ds.manifest)
  shards = manifest.pop("shards")
  file, offset = ds.location(record)
  out = {"path": ds.root, "manifest": manifest,
         "shards": [f"{s['file']} ({s['num_records']} records, {s['bytes']} bytes)"
                    for s in shards],
         "records_per_bucket": ds.bucket_counts(),
         "record": {"index": record, "file": file, "offset": offset,
                    **record_summary(ds.decode(record))}}
  ds.close()
  return out


def main(argv: list[str] | None = None) -> int:
  """Parses arguments, runs the command, returns the exit status."""
  p = argparse.ArgumentParser(prog="stiv-shards", description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest="command", required=True)
  pi = sub.add_parser("inspect", help="print manifest, bucket counts and one decoded record")
  pi.add_argument("path")
  pi.add_argument("--record", type=int, default=0, help="global index of the record to decode")
  pv = sub.add_parser("validate", help="check every CRC, index entry and schema")
  pv.add_argument("path")
  args = p.parse_args(argv)
  try:
    if args.command == "inspect":
      print(json.dumps(inspect(args.path, args.record), indent=1))
    else:
      summary = reader_lib.validate_dataset(args.path)
      print(json.dumps({"ok": True, **summary}, indent=1))
  except (reader_lib.DatasetError, tfrecord.TFRecordError, schema_lib.SchemaError,
          ValueError, OSError) as e:
    print(f"stiv-shards {args.command}: FAILED: {e}", file=sys.stderr)
    return 1
  return 0


def run() -> None:
  """Console-script entry point (`stiv-shards`)."""
  sys.exit(main())


if __name__ == "__main__":
  run()
