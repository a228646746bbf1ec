"""`stiv-bench NAME [flags]`: runs the benchmark module stiv_jax.bench.<name> (dashes -> underscores).

Every benchmark prints one JSON object on its last line with its headline figure under `ratio`,
measured against a reference in the same run.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys

import stiv_jax.bench as bench_pkg


def available() -> list[str]:
  return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(bench_pkg.__path__)
                if not m.name.startswith("_") and m.name != "common")


def run(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help"):
    print(f"usage: stiv-bench NAME [flags]; NAME one of {available()}")
    sys.exit(0 if len(argv) >= 2 else 2)
  name = argv[1]
  if name.replace("_", "-") not in available():
    print(f"stiv-bench: unknown benchmark {name!r}; expected one of {available()}", file=sys.stderr)
    sys.exit(2)
  module = importlib.import_module(f"stiv_jax.bench.{name.replace('-', '_')}")
  sys.argv = [f"stiv-bench {name}"] + argv[2:]
  module.main()


if __name__ == "__main__":
  run()
