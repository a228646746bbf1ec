"""Loading `path.py:arg` config specs, typed `field=value` overrides, and sweep products."""
from __future__ import annotations

import importlib.util
import itertools
import os
from typing import Any, Iterable

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Imports a config file and calls its get_config(arg); spec is 'FILE.py' or 'FILE.py:ARG'."""
  path, _, arg = spec.partition(":")
  if not path.endswith(".py") or not os.path.isfile(path):
    raise ValueError(f"--config: {path!r} is not a config file (expected an existing .py file)")
  module_spec = importlib.util.spec_from_file_location(
      f"_launch_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"--config: {path} defines no get_config(arg)")
  return module.get_config(arg or None)


def parse_value(field: str, text: str, current: Any) -> Any:
  """Parses `text` to the type of the field's current value (error names the field)."""
  try:
    if isinstance(current, bool):
      low = text.strip().lower()
      if low not in ("true", "false", "1", "0"):
        raise ValueError(text)
      return low in ("true", "1")
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, str):
      return text
  except ValueError:
    raise ValueError(f"config field {field}: cannot parse {text!r} as "
                     f"{type(current).__name__}") from None
  raise ValueError(f"config field {field}: type {type(current).__name__} cannot be set from the "
                   "command line (only bool/int/float/str fields)")


def get_field(config: ml_collections.ConfigDict, field: str) -> Any:
  """The value at a dotted path; ValueError naming the path when it does not exist."""
  node: Any = config
  for part in field.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      raise ValueError(f"config field {field!r} does not exist in the config")
    node = node[part]
  return node


def set_field(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
  """Sets a dotted path (which must exist) in place."""
  get_field(config, field)
  *parents, last = field.split(".")
  node = config
  for part in parents:
    node = node[part]
  with node.unlocked() if hasattr(node, "unlocked") else _null():
    node[last] = value


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def parse_overrides(config: ml_collections.ConfigDict, items: Iterable[str]) -> dict[str, Any]:
  """['a.b=1', ...] -> {'a.b': typed value}, each checked against the config."""
  out = {}
  for item in items:
    field, sep, text = item.partition("=")
    if not sep or not field:
      raise ValueError(f"override {item!r}: expected FIELD=VALUE")
    out[field] = parse_value(field, text, get_field(config, field))
  return out


def parse_sweep(config: ml_collections.ConfigDict, specs: Iterable[str]) -> list[dict[str, Any]]:
  """['optimizer.lr=1e-4,2e-4', 'model.mask_ratio=0.5,0'] -> the cartesian product of trials.

  Each spec is FIELD=V1,V2,...; fields must exist and values parse to the field's type.
  No specs gives one empty trial.
  """
  axes = []
  for spec in specs:
    field, sep, values = spec.partition("=")
    if not sep or not field or not values:
      raise ValueError(f"--sweep {spec!r}: expected FIELD=V1,V2,...")
    current = get_field(config, field)
    axes.append([(field, parse_value(field, v, current)) for v in values.split(",")])
  fields = [a[0][0] for a in axes]
  if len(set(fields)) != len(fields):
    raise ValueError(f"--sweep: a field is swept twice: {fields}")
  return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


def apply(config: ml_collections.ConfigDict, values: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of the config with the dotted-path values set."""
  out = ml_collections.ConfigDict(config.to_dict())
  for field, value in values.items():
    set_field(out, field, value)
  return out


def trial_name(trial: dict[str, Any]) -> str:
  """A short readable suffix for a work unit's workdir, e.g. 'lr=0.0001,mask_ratio=0.5'."""
  return ",".join(f"{k.split('.')[-1]}={v}" for k, v in trial.items())
