"""`stiv-shards`: inspect or validate a latent-shard dataset.

  stiv-shards inspect PATH [--record=I]   manifest, records per bucket, one decoded record
  stiv-shards validate PATH               every CRC, index entry and record schema; exits 1
                                          naming the first bad file and byte offset
  stiv-shards subset PATH --output=DIR --caption=REGEX [--max-records=N]
                                          a new dataset of the records whose caption matches
                                          (record bytes copied; same contract and empty
                                          prompt), e.g. the one-color set of a LoRA fine-tune
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

import numpy as np

from stiv_jax.data import contract as contract_lib
from stiv_jax.data import reader as reader_lib
from stiv_jax.data import schema as schema_lib
from stiv_jax.data import tfrecord
from stiv_jax.data import writer as writer_lib


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


def subset(path: str, output: str, caption: str, max_records: int = 0) -> dict[str, Any]:
  """Writes the records of `path` whose caption matches the regex `caption` (searched, case
  sensitive) into a new dataset at `output`, keeping the source's order, record bytes, metadata,
  latent contract and empty prompt. Refuses an existing dataset at `output` or an empty match."""
  try:
    pattern = re.compile(caption)
  except re.error as e:
    raise ValueError(f"--caption: {caption!r} is not a valid regex: {e}") from e
  if max_records < 0:
    raise ValueError(f"--max-records: must be >= 0, got {max_records}")
  ds = reader_lib.open_dataset(path)
  if os.path.realpath(output) == os.path.realpath(ds.root):
    raise ValueError(f"--output: {output} is the source dataset itself")
  if os.path.exists(os.path.join(output, writer_lib.MANIFEST_NAME)):
    raise ValueError(f"--output: {output} already holds a dataset (manifest.json); choose an "
                     "empty directory")
  chosen = []
  for i in range(len(ds)):
    rec = ds.decode(i)
    if pattern.search(rec.caption):
      chosen.append((i, rec))
      if max_records and len(chosen) >= max_records:
        break
  if not chosen:
    raise ValueError(f"--caption: {caption!r} matches none of the {len(ds)} captions of {ds.root}")
  contract = ds.manifest.get("contract")
  empty = contract_lib.load_empty_prompt(ds.root, contract) if contract else None
  metadata = {**ds.manifest.get("metadata", {}),
              "subset_of": {"path": ds.root, "caption": caption, "records": len(chosen)}}
  with writer_lib.ShardWriter(
      output, metadata=metadata,
      contract={k: v for k, v in contract.items() if k != "empty_prompt"} if contract else None,
      empty_prompt=(None if empty is None else
                    (empty["text"][None], empty["text_mask"][None], empty["pooled"][None]))) as w:
    for i, rec in chosen:
      w.write_encoded(ds.read(i), rec.bucket, list(rec.latents.shape), rec.micro_list(),
                      rec.caption_source)
  ds.close()
  return {"path": output, "records": len(chosen), "of": len(ds), "caption": caption}


def main(argv: list[str] | None = None) -> int:
  """Parses arguments, runs the command, returns the exit status."""
  p = argparse.ArgumentParser(prog="stiv-shards", description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest="command", required=True)
  pi = sub.add_parser("inspect", help="print manifest, bucket counts and one decoded record")
  pi.add_argument("path")
  pi.add_argument("--record", type=int, default=0, help="global index of the record to decode")
  pv = sub.add_parser("validate", help="check every CRC, index entry and schema")
  pv.add_argument("path")
  ps = sub.add_parser("subset", help="a new dataset of the records whose caption matches")
  ps.add_argument("path")
  ps.add_argument("--output", required=True, help="directory of the new dataset")
  ps.add_argument("--caption", required=True, help="regex searched in each record's caption")
  ps.add_argument("--max-records", type=int, default=0, help="stop after N matches (0: all)")
  args = p.parse_args(argv)
  try:
    if args.command == "inspect":
      print(json.dumps(inspect(args.path, args.record), indent=1))
    elif args.command == "subset":
      print(json.dumps(subset(args.path, args.output, args.caption, args.max_records)))
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
