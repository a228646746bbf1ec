"""User errors on the command line: one line naming the flag, field or file, exit status 2.

Every CLI reports a wrong input this way (the traceback only with --verbose); a bug still ends
with its traceback. `absl_flags_parser(prog)` does the same for absl flag parsing, where a bad
--config file or --config.x override would otherwise print a multi-line FATAL.
"""
from __future__ import annotations

import sys
import traceback
from typing import Callable, NoReturn, Sequence

EXIT_USER_ERROR = 2
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError,
                                                NotADirectoryError, KeyError)


def fail(prog: str, message: str) -> NoReturn:
  """Prints `prog: error: message` (one line) and exits with status 2."""
  print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def run_main(prog: str, fn: Callable[[], int | None], verbose: bool = False,
             errors: tuple[type[BaseException], ...] = USER_ERRORS) -> int | None:
  """Calls fn(); a user error becomes one line and exit 2 (with its traceback if verbose)."""
  try:
    return fn()
  except errors as e:
    if verbose:
      traceback.print_exc()
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    fail(prog, text)


def absl_flags_parser(prog: str) -> Callable[[Sequence[str]], list[str]]:
  """A flags_parser for absl's app.run: flag errors (bad --config file or override) as one
  line, exit 2."""
  from absl import flags

  def parse(argv: Sequence[str]) -> list[str]:
    try:
      return flags.FLAGS(list(argv))
    except flags.Error as e:
      text = str(e).strip().splitlines()
      flag = text[0].split(":")[0] if text else "flags"
      fail(prog, f"{flag}: {text[-1].strip()}" if len(text) > 1 else str(e))
    except (AttributeError, KeyError) as e:   # --config.a.b=v names a field that is not there
      bad = [a.split("=")[0] for a in argv if a.startswith("--config.")]
      fail(prog, f"{' / '.join(bad)}: no such config field ({e}); `stiv-train --help` lists "
                 "the fields")
  return parse
