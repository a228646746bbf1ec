"""`stiv-train --config=experiments/configs/<file>.py[:arg] --workdir=DIR [--config.x=y ...]`.

Multi-process runs: set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or pass
--distributed to let jax.distributed.initialize() auto-detect a TPU pod / SLURM / GKE job).
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (file.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, config.json).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() with auto-detection.")

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def maybe_initialize_distributed(auto: bool = False) -> None:
  """jax.distributed.initialize() when the multi-process env vars are set (or `auto`)."""
  import jax
  if all(os.environ.get(k) for k in _ENV):
    num = int(os.environ["JAX_NUM_PROCESSES"])
    if jax.config.jax_platforms == "cpu" or os.environ.get("JAX_PLATFORMS") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                               num_processes=num, process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif auto:
    jax.distributed.initialize()


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required (e.g. --config=experiments/configs/demo.py)")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  maybe_initialize_distributed(_DISTRIBUTED.value)
  from stiv_jax.train import loop
  try:
    loop.train(_CONFIG.value, _WORKDIR.value)
  except loop.NonFiniteError as e:
    logging.error("%s", e)
    print(f"ERROR: {e}", file=sys.stderr, flush=True)
    sys.exit(3)


def run() -> None:
  """Console-script entry point (stiv-train)."""
  # Config files import `experiments.configs...`: make the working directory importable.
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  app.run(main)


if __name__ == "__main__":
  run()
