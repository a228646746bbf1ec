"""Stage manifests: JSON-lines tables keyed by a stable `id`, written atomically and resumably.

A stage appends one line per finished input item to its log `<name>.log.jsonl` (flushed and
fsynced, so a crash loses at most the item in flight; a rerun skips logged items) and, when
every item is done, writes the sorted table to `<name>.jsonl` through a temporary file and
`os.replace` (atomic on POSIX).
Simplification: JSON lines instead of Parquet (no pyarrow in the environment).
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Iterator


def final_path(out_dir: str, name: str) -> str:
  """Path of the finished manifest of stage `name`."""
  return os.path.join(out_dir, f"{name}.jsonl")


def partial_path(out_dir: str, name: str) -> str:
  """Path of the append-only progress log of stage `name`."""
  return os.path.join(out_dir, f"{name}.log.jsonl")


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """Reads a JSON-lines file; a torn last line (crash mid-write) is ignored."""
  rows = []
  with open(path, "r", encoding="utf-8") as fh:
    lines = fh.read().split("\n")
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as err:
      if i >= len(lines) - 2:  # the torn tail of an interrupted append
        break
      raise ValueError(f"{path}:{i + 1}: not a JSON line ({err})") from err
    if not isinstance(row, dict) or "id" not in row:
      raise ValueError(f"{path}:{i + 1}: manifest row without an 'id' field")
    rows.append(row)
  return rows


def write_jsonl_atomic(path: str, rows: Iterable[dict[str, Any]]) -> None:
  """Writes rows sorted by id to `path` via a temp file + rename."""
  rows = sorted(rows, key=lambda r: r["id"])
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as fh:
    for row in rows:
      fh.write(json.dumps(row, sort_keys=True) + "\n")
    fh.flush()
    os.fsync(fh.fileno())
  os.replace(tmp, path)


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes one JSON document (reports) via a temp file + rename."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as fh:
    json.dump(obj, fh, indent=2, sort_keys=True)
    fh.write("\n")
  os.replace(tmp, path)


def read_stage(out_dir: str, name: str) -> list[dict[str, Any]]:
  """Reads the finished manifest of stage `name`, with a clear error if it is missing."""
  path = final_path(out_dir, name)
  if not os.path.exists(path):
    raise FileNotFoundError(f"manifest {path} not found: run `stiv-prep {name}` first")
  return read_jsonl(path)


class ProgressLog:
  """Append-only log of finished input items of one stage (kept: it is what reruns skip)."""

  def __init__(self, out_dir: str, name: str):
    self.out_dir, self.name = out_dir, name
    self.path = partial_path(out_dir, name)
    os.makedirs(out_dir, exist_ok=True)

  def done(self) -> dict[str, list[dict[str, Any]]]:
    """Rows already finished, grouped by the input key that produced them.

    A torn last line (a crash mid-append) is cut off so later appends start on a fresh line.
    """
    if not os.path.exists(self.path):
      return {}
    with open(self.path, "rb+") as fh:
      data = fh.read()
      if data and not data.endswith(b"\n"):
        fh.truncate(data.rfind(b"\n") + 1)
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in read_jsonl(self.path):
      grouped.setdefault(row["id"], []).append(row)
    return grouped

  def append(self, key: str, rows: list[dict[str, Any]]) -> None:
    """Records the output rows of input `key` (one line, so it is all-or-nothing)."""
    line = json.dumps({"id": key, "rows": rows}, sort_keys=True)
    with open(self.path, "a", encoding="utf-8") as fh:
      fh.write(line + "\n")
      fh.flush()
      os.fsync(fh.fileno())

  def finish(self, rows: list[dict[str, Any]]) -> str:
    """Writes the final manifest atomically."""
    path = final_path(self.out_dir, self.name)
    write_jsonl_atomic(path, rows)
    return path


def iter_rows(grouped: dict[str, list[dict[str, Any]]]) -> Iterator[dict[str, Any]]:
  """Flattens {input key: [log entry]} into output rows."""
  for entries in grouped.values():
    for entry in entries:
      yield from entry["rows"]
