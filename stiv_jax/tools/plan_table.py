"""Reproduce the memory-plan tables: run `stiv-compile` for every row of a rows file, one at a
time (big compiles take minutes and GBs), keep each report, print the markdown table.

  python -m stiv_jax.tools.plan_table --rows=experiments/plan_rows.txt --out=workdir/plans.jsonl

A rows file has one plan per line, `name | stiv-compile arguments` (blank lines and `#`
comments skipped); arguments that start with a `.py` file run that script instead of
stiv-compile (an experiment that wraps it, e.g. experiments/plan_constrained_stacks.py). Rows already in --out are not compiled again (delete a line to redo it);
--only=REGEX runs a subset. A plan that does not fit is recorded (stiv-compile prints its
report and exits 2).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time

from absl import app, flags

from stiv_jax import cli_errors
from stiv_jax.tools.chips import GIB

FLAGS = flags.FLAGS


def define_flags() -> None:
  if "rows" in FLAGS:
    return
  flags.DEFINE_string("rows", "experiments/plan_rows.txt", "The rows file.")
  flags.DEFINE_string("out", "workdir/plans.jsonl", "JSON lines of the reports (appended).")
  flags.DEFINE_string("only", "", "Regex: run only the rows whose name matches.")
  flags.DEFINE_bool("render_only", False, "Print the table of --out without compiling.")
  flags.DEFINE_string("hlo_dir", "", "Keep each row's compiled HLO here (<row>.hlo), so the "
                      "estimate can be recomputed without compiling (--reestimate).")
  flags.DEFINE_bool("reestimate", False, "Recompute every report's step-time estimate from "
                    "its kept HLO (after a change to stiv_jax/tools/roofline.py).")


def read_rows(path: str) -> list[tuple[str, list[str]]]:
  """[(name, stiv-compile argv)] of a rows file."""
  rows = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      line = line.split("#", 1)[0].strip()
      if not line:
        continue
      if "|" not in line:
        raise ValueError(f"{path}:{n}: expected 'name | stiv-compile arguments', got {line!r}")
      name, args = (s.strip() for s in line.split("|", 1))
      rows.append((name, shlex.split(args)))
  return rows


def read_done(path: str) -> dict[str, dict]:
  done = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          rec = json.loads(line)
          done[rec["row"]] = rec
  return done


def run_row(name: str, args: list[str], hlo_dir: str = "") -> dict:
  """One stiv-compile run; its report (also when it does not fit) or its error line."""
  t0 = time.time()
  if hlo_dir:
    os.makedirs(hlo_dir, exist_ok=True)
    args = [*args, f"--hlo_out={os.path.join(hlo_dir, name + '.hlo')}"]
  cmd = ([sys.executable, *args] if args and args[0].endswith(".py") else
         [sys.executable, "-m", "stiv_jax.tools.compile", *args])
  proc = subprocess.run(cmd, capture_output=True, text=True)
  rec = {"row": name, "args": args, "exit": proc.returncode, "wall_s": round(time.time() - t0)}
  reports = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  if reports:
    rec["report"] = reports[-1]
  errors = [l for l in proc.stderr.splitlines() if "stiv-compile" in l and "error" in l]
  if errors:
    rec["error"] = errors[-1]
  elif proc.returncode not in (0, 2):
    rec["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
  return rec


def reestimate(rec: dict) -> dict:
  """The record with its estimate recomputed from the HLO its run kept (--hlo_out)."""
  from stiv_jax.tools import compile as compile_lib
  r = rec.get("report")
  hlo = next((a.split("=", 1)[1] for a in rec["args"] if a.startswith("--hlo_out=")), "")
  if r is None or not hlo or not os.path.exists(hlo):
    return rec
  with open(hlo) as f:
    text = f.read()
  topo = compile_lib.parse_topology(r["topology"])
  coords = (compile_lib.mesh_coords(topo, r["compiled_mesh"]) if r["method"] == "tpu-compiler"
            else None)
  r.update(compile_lib.estimate_fields(text, r, topo, coords))
  return rec


def _mesh(r: dict) -> str:
  """The mesh axes larger than 1, e.g. 'data 16, fsdp 16'."""
  return ", ".join(f"{a} {s}" for a, s in r["mesh"].items() if s > 1) or "1 device"


def row_markdown(rec: dict) -> str:
  """One table row: config, topology, mesh, remat, clips/chip, GiB/device, fits, estimated
  step s and MFU, optimizer and activation GiB, all-to-all count, method."""
  r = rec.get("report")
  if r is None:
    return f"| {rec['row']} | {' '.join(rec['args'])} | | | | | | error: {rec.get('error')} |"
  pct = lambda v: "" if v is None else f"{100 * v:.1f}%"
  return (f"| {rec['row']} | {r['topology']} | {_mesh(r)} | {r['model']['remat']} | "
          f"{r['per_device_batch']:g} | {r['gib_per_device']:.2f} | "
          f"{'yes' if r['fits'] else 'NO'} | {r.get('estimated_step_s', float('nan')):.3g} | "
          f"{pct(r.get('estimated_mfu'))} | {r.get('roofline_step_s', float('nan')):.3g} | "
          f"{pct(r.get('roofline_mfu'))} | {r['optimizer_bytes'] / GIB:.2f} | "
          f"{r['activation_bytes'] / GIB:.2f} | {r.get('all_to_all_count', '')} | "
          f"{r['method']} |")


HEADER = ("| row | topology | mesh | remat | clips/chip | GiB/device | fits | est. step s | est. "
          "MFU | roofline step s | roofline MFU | optimizer GiB | activations GiB | "
          "all-to-all/step | method |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv) -> None:
  del argv
  rows = read_rows(FLAGS.rows)
  done = read_done(FLAGS.out)
  if not FLAGS.render_only:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    for name, args in rows:
      if name in done or (FLAGS.only and not re.search(FLAGS.only, name)):
        continue
      print(f"[plan_table] {name}: stiv-compile {' '.join(args)}", file=sys.stderr, flush=True)
      rec = run_row(name, args, FLAGS.hlo_dir)
      done[name] = rec
      with open(FLAGS.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
  if FLAGS.reestimate:
    done = {k: reestimate(v) for k, v in done.items()}
    with open(FLAGS.out, "w") as f:
      for rec in done.values():
        f.write(json.dumps(rec) + "\n")
  print(HEADER)
  for name, _ in rows:
    if name in done:
      print(row_markdown(done[name]))


def run() -> None:
  define_flags()
  app.run(lambda argv: cli_errors.run_main("plan_table", lambda: main(argv)))


if __name__ == "__main__":
  run()
