"""`stiv-train --config=experiments/configs/<file>.py[:arg] --workdir=DIR [--config.x=y ...]`.

Multi-process runs: set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or pass
--distributed to let jax.distributed.initialize() auto-detect a TPU pod / SLURM / GKE job).
A user error (a bad field, data that does not fit the config, no usable checkpoint) ends with
one line `stiv-train: error: ...` and exit status 2; --verbose adds the traceback.
"""
from __future__ import annotations

import os
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from stiv_jax import cli_errors

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (file.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, config.json).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() with auto-detection.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Print the traceback of a user error too.")

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
EXIT_NON_FINITE = 3

HELP = """usage: stiv-train --config=experiments/configs/FILE.py[:ARG] --workdir=DIR [--config.SECTION.FIELD=VALUE ...]

Trains (or resumes from DIR's newest good checkpoint). Every field below can be set from the
command line, e.g. --config.data.path=/data/shards --config.optimizer.lr=1e-4
--config.vae.scaling_factor=None (None: take it from the data) --config.init.sources='()'
(tuples as Python literals). Stage configs take an argument: SIZE[,local|tiny][,root=PATH].
Other flags: --distributed (jax.distributed auto-detect), --verbose (tracebacks of user errors).

Config fields and their defaults (stiv_jax/config_schema.py; stage configs replace some):
"""


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


def user_errors() -> tuple[type[BaseException], ...]:
  """Exceptions that mean 'the input is wrong' (printed as one line), not a bug."""
  from stiv_jax.train import checkpoint as ckpt_lib
  from stiv_jax.train import loop
  return cli_errors.USER_ERRORS + (ckpt_lib.CheckpointError, loop.DataError)


def fail(message: str) -> None:
  cli_errors.fail("stiv-train", message)


def main(argv) -> None:
  if len(argv) > 1:
    fail(f"unexpected arguments {argv[1:]}; fields are set as --config.SECTION.FIELD=VALUE")
  if _CONFIG.value is None:
    fail("--config is required (e.g. --config=experiments/configs/demo.py)")
  if not _WORKDIR.value:
    fail("--workdir is required (the run's folder: checkpoints, logs, config)")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  maybe_initialize_distributed(_DISTRIBUTED.value)
  from stiv_jax.train import loop
  try:
    loop.train(_CONFIG.value, _WORKDIR.value)
  except loop.NonFiniteError as e:
    print(f"stiv-train: error: {e}", file=sys.stderr, flush=True)
    sys.exit(EXIT_NON_FINITE)
  except user_errors() as e:
    if _VERBOSE.value:
      traceback.print_exc()
    fail(" ".join(str(e).split("\n")))


def help_text() -> str:
  """The usage line, how to override a field, and every field with its default."""
  from stiv_jax import config_schema
  return HELP + "\n".join("  " + line for line in config_schema.describe(
      config_schema.train_config()))


def run() -> None:
  """Console-script entry point (stiv-train)."""
  if any(a in ("-h", "--help") for a in sys.argv[1:]):
    print(help_text())
    sys.exit(0)
  # Config files import `experiments.configs...`: make the working directory importable.
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  app.run(main, flags_parser=cli_errors.absl_flags_parser("stiv-train"))


if __name__ == "__main__":
  run()
