"""`stiv-prep`: the offline video pipeline's command line.

  stiv-prep run --input=DIR --output=DIR [--config=FILE[:ARG]] [--workers=N] [--set k=v ...]
  stiv-prep <stage> --output=DIR [--input=DIR for probe] ...   stage in: probe scenes features
                                                                filter caption classify dsg encode
  stiv-prep beam --input=DIR --output=DIR [--runner=DirectRunner] [-- beam pipeline options]
  stiv-prep images --input=DIR --output=DIR [--config=...] [--set k=v ...]
                                                               images (+ caption sidecars) ->
                                                               single-frame shards (T2I data)
  stiv-prep synth | synth-shards | train-tokenizer ...          (other tools, dispatched)
"""
from __future__ import annotations

import argparse
import ast
import json
import importlib.util
import os
import sys

from data_pipeline import config as config_lib

STAGES = ("probe", "scenes", "features", "filter", "caption", "classify", "dsg", "encode")


def load_config(spec: str | None):
  """'' -> default config; 'tiny' / 'demo' -> built-in variants; 'file.py[:arg]' -> get_config(arg)."""
  if not spec:
    return config_lib.get_config()
  if spec in ("tiny", "demo"):
    return config_lib.get_config(spec)
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise SystemExit(f"--config: {path} does not exist")
  module_spec = importlib.util.spec_from_file_location("stiv_prep_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise SystemExit(f"--config: {path} has no get_config()")
  return module.get_config(arg) if arg else module.get_config()


def apply_overrides(cfg, sets: list[str]):
  """Applies `section.field=value` overrides (values parsed as Python literals, else strings)."""
  for item in sets or []:
    key, sep, raw = item.partition("=")
    if not sep:
      raise SystemExit(f"--set: expected key=value, got {item!r}")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    node, *parts = key.split(".")
    target = cfg
    for p in [node] + parts[:-1]:
      if p not in target:
        raise SystemExit(f"--set: unknown config section {p!r} in {key!r}")
      target = target[p]
    leaf = parts[-1] if parts else None
    if leaf is None or leaf not in target:
      raise SystemExit(f"--set: unknown config field {key!r}")
    try:
      target[leaf] = value
    except TypeError as err:
      raise SystemExit(f"--set {key}: {err}") from err
  return cfg


def _parser(prog: str, need_input: bool) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=prog)
  p.add_argument("--input", required=need_input, help="folder of videos (searched recursively)")
  p.add_argument("--output", required=True, help="work folder: manifests, reports, shards")
  p.add_argument("--config", default="", help="config file[:arg], or 'tiny' / 'demo'; default built in")
  p.add_argument("--workers", type=int, default=None, help="process-pool size (run.workers)")
  p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                 help="override one config field (repeatable)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  return p


def _config(args):
  cfg = apply_overrides(load_config(args.config), args.set)
  if args.workers is not None:
    if args.workers < 1:
      raise SystemExit(f"--workers: must be >= 1, got {args.workers}")
    cfg.run.workers = args.workers
  if args.no_progress:
    cfg.run.progress = False
  return cfg


def main(argv: list[str]) -> int:
  """Dispatches a subcommand; returns the exit code."""
  if not argv or argv[0] in ("-h", "--help"):
    print(__doc__)
    return 0 if argv else 2
  cmd, rest = argv[0], argv[1:]
  if cmd == "synth":
    from data_pipeline.synth import synth_cli
    return synth_cli(rest)
  if cmd == "synth-shards":
    from data_pipeline.synth import synth_shards_cli
    return synth_shards_cli(rest)
  if cmd == "train-tokenizer":
    from stiv_jax.models.encoders.tokenizer import train_tokenizer_cli
    return train_tokenizer_cli(rest)
  if cmd == "images":
    args = _parser("stiv-prep images", True).parse_args(rest)
    from data_pipeline import images
    print(json.dumps(images.prepare_images(args.input, args.output, _config(args))))
    return 0
  from data_pipeline import runner
  if cmd == "run":
    args = _parser("stiv-prep run", True).parse_args(rest)
    runner.run_all(args.input, args.output, _config(args))
    return 0
  if cmd == "beam":
    own, beam_args = (rest[:rest.index("--")], rest[rest.index("--") + 1:]) if "--" in rest else (
        rest, [])
    p = _parser("stiv-prep beam", True)
    p.add_argument("--runner", default="DirectRunner", help="Beam runner name")
    args = p.parse_args(own)
    from data_pipeline import beam_runner
    beam_runner.run(args.input, args.output, _config(args), runner=args.runner,
                    beam_args=beam_args)
    return 0
  if cmd in STAGES:
    args = _parser(f"stiv-prep {cmd}", cmd == "probe").parse_args(rest)
    runner.run_one(cmd, args.output, _config(args), args.input)
    return 0
  print(f"stiv-prep: unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
  return 2


def run() -> None:
  """Console-script entry point: a user error (bad folder, field, file) is one line, exit 2;
  --verbose anywhere on the line adds its traceback."""
  from stiv_jax import cli_errors
  argv = [a for a in sys.argv[1:] if a != "--verbose"]
  sys.exit(cli_errors.run_main("stiv-prep", lambda: main(argv), "--verbose" in sys.argv))


if __name__ == "__main__":
  run()
