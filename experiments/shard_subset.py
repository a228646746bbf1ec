"""A subset of a latent-shard dataset: the records whose caption matches a regex (same contract,
empty prompt and encodings), e.g. one color of the synthetic corpus for a LoRA fine-tune.

  python experiments/shard_subset.py --input=DATA/shards --output=SUBSET/shards --caption='^a red '
"""
from __future__ import annotations

import argparse
import json
import re
import sys

from stiv_jax.data import contract as contract_lib
from stiv_jax.data import reader as reader_lib
from stiv_jax.data import writer as writer_lib


def subset(src: str, dst: str, caption: str, target_shard_bytes: int = 64 << 20) -> dict:
  """Copies the matching records of `src` into a new dataset at `dst`; returns its manifest."""
  pattern = re.compile(caption)
  ds = reader_lib.open_dataset(src)
  manifest = ds.manifest
  contract = manifest.get("contract")
  empty = contract_lib.load_empty_prompt(ds.root, contract) if contract else None
  meta = dict(manifest.get("metadata") or {}, subset_of=ds.root, subset_caption=caption)
  with writer_lib.ShardWriter(
      dst, target_shard_bytes=target_shard_bytes, metadata=meta, contract=contract,
      empty_prompt=None if empty is None else (empty["text"][None], empty["text_mask"][None],
                                               empty["pooled"][None])) as w:
    for i in range(len(ds)):
      rec = ds.decode(i)
      if pattern.search(rec.caption):
        w.write(rec)
  ds.close()
  if w.num_records == 0:
    raise SystemExit(f"--caption={caption!r}: no record of {src} matches")
  return w.written_manifest


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--input", required=True)
  p.add_argument("--output", required=True)
  p.add_argument("--caption", required=True, help="regex searched in each record's caption")
  args = p.parse_args(argv)
  out = subset(args.input, args.output, args.caption)
  print(json.dumps({"records": out["num_records"], "buckets": sorted(out["buckets"])}))


if __name__ == "__main__":
  main(sys.argv[1:])
