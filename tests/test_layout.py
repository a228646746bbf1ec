"""The floors: stiv_jax (benchmarks included) imports neither experiments nor data_pipeline."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPPER = ("experiments", "data_pipeline")


def imported_modules(path: str) -> set[str]:
  """Every module an `import` / `from ... import` in the file names (top level or not)."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      out.add(node.module)
  return out


def test_stiv_jax_never_imports_the_floors_above_it():
  offenders = []
  for folder, _, files in os.walk(os.path.join(ROOT, "stiv_jax")):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        bad = sorted(m for m in imported_modules(path) if m.split(".")[0] in UPPER)
        offenders += [f"{os.path.relpath(path, ROOT)}: {m}" for m in bad]
  assert not offenders, "stiv_jax imports the floors above it:\n" + "\n".join(offenders)


def test_benchmarks_of_other_packages_are_registered_entry_points():
  """`stiv-bench` finds data_pipeline's benchmarks through the entry-point group, not imports."""
  from stiv_jax.bench import __main__ as bench
  names = bench.available()
  assert {"buckets", "sample", "model", "train-step"} <= set(names)
  assert "prep" in names   # data_pipeline/bench/prep.py, via [options.entry_points]
