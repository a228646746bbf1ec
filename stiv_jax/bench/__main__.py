"""`stiv-bench NAME [flags]`: runs a benchmark; one JSON object on its last line, `ratio` the headline.

Benchmarks are the modules of stiv_jax.bench (dashes -> underscores) plus those other packages
register under the entry-point group `stiv_jax.benchmarks` (e.g. data_pipeline's `prep`), so the
library never imports the floors above it.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import sys
from typing import Callable

import stiv_jax.bench as bench_pkg

ENTRY_POINT_GROUP = "stiv_jax.benchmarks"
_HELPERS = ("common",)


def registry() -> dict[str, Callable[[], None] | str]:
  """name -> module path (stiv_jax.bench) or entry point (other packages)."""
  out: dict[str, Callable[[], None] | str] = {
      m.name.replace("_", "-"): f"stiv_jax.bench.{m.name}"
      for m in pkgutil.iter_modules(bench_pkg.__path__)
      if not m.name.startswith("_") and m.name not in _HELPERS}
  for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
    out.setdefault(ep.name, ep)
  return out


def available() -> list[str]:
  return sorted(registry())


def run(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help"):
    print(f"usage: stiv-bench NAME [flags]; NAME one of {available()}")
    sys.exit(0 if len(argv) >= 2 else 2)
  name = argv[1].replace("_", "-")
  found = registry().get(name)
  if found is None:
    print(f"stiv-bench: unknown benchmark {argv[1]!r}; expected one of {available()}",
          file=sys.stderr)
    sys.exit(2)
  main = importlib.import_module(found).main if isinstance(found, str) else found.load()
  sys.argv = [f"stiv-bench {name}"] + argv[2:]
  main()


if __name__ == "__main__":
  run()
