"""`stiv-params --config=experiments/configs/stiv.py:M`: parameter counts without allocating.

Builds the model under `nnx.eval_shape` (abstract arrays only) and prints a per-part table,
then one JSON line: {"total": N, "by_part": {...}}.
"""
from __future__ import annotations

import json
import math
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines --config at run time, so importing this module (count_params) defines no flags."""
  config_flags.DEFINE_config_file("config", None, "Config file (its `model` section is used).",
                                  lock_config=True)

BLOCK_PARTS = {"spatial": "spatial_attention", "temporal": "temporal_attention",
               "cross": "cross_attention", "fc1": "ffn", "fc2": "ffn", "table": "adaln_tables"}


def part_of(path: tuple) -> str:
  """Maps a parameter path to a reporting part."""
  keys = [str(p) for p in path]
  top = keys[0]
  if top in ("blocks", "decoder"):
    sub = BLOCK_PARTS.get(keys[1], keys[1])
    return f"{'blocks' if top == 'blocks' else 'mask_decoder'}.{sub}"
  if top == "cond":
    return f"condition.{keys[1]}"
  return top


def count_params(model_cfg) -> dict:
  """{"total": N, "by_part": {part: N}} for a model config, via abstract evaluation."""
  from flax import nnx

  from stiv_jax.models.stiv import STIV

  abstract = nnx.eval_shape(lambda: STIV(model_cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(abstract, nnx.Param)
  by_part: dict[str, int] = {}
  for path, var in nnx.to_flat_state(state):
    n = math.prod(var.shape)
    part = part_of(path)
    by_part[part] = by_part.get(part, 0) + n
  return {"total": sum(by_part.values()), "by_part": dict(sorted(by_part.items()))}


def main(argv) -> None:
  del argv
  if FLAGS.config is None:
    raise app.UsageError("--config is required, e.g. --config=experiments/configs/stiv.py:XL")
  counts = count_params(FLAGS.config.model)
  for part, n in counts["by_part"].items():
    print(f"{part:32s} {n / 1e6:12.2f} M")
  print(f"{'total':32s} {counts['total'] / 1e9:12.3f} B")
  print(json.dumps(counts))
  sys.stdout.flush()


def run() -> None:
  define_flags()
  from stiv_jax import cli_errors
  app.run(main, flags_parser=cli_errors.absl_flags_parser("stiv-params"))


if __name__ == "__main__":
  run()
