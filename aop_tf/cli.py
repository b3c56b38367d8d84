"""Command-line plumbing of the `python -m` entry points: flag parsing and one-line errors.

`cli.run(main, "predict")` replaces `absl.app.run(main)`:
  - `--flagfile` arguments are read first, so the other command-line flags override them wherever
    they stand;
  - a bad command line (unknown flag or value, missing flagfile, missing required flag,
    `app.UsageError`) prints `predict: error: <what to fix>` on one line and exits 2;
  - an expected failure of the run (`errors`: a missing file or folder, a bad value found later,
    unusable input, a dependency not installed) prints one line (the exception's message) and
    exits 1;
  - Ctrl-C outside a handler prints one line and exits 130.
Anything else is a bug and keeps its traceback.
"""

import re
import sys

from absl import app
from absl import flags

EXPECTED_ERRORS = (ValueError, OSError, KeyError, ModuleNotFoundError)


def flagfiles_first(argv):
  """Moves --flagfile arguments to the front so the other command-line flags override them."""
  files, rest = [], [argv[0]]
  args = iter(argv[1:])
  for arg in args:
    if arg == "--":
      rest.append(arg)
      rest.extend(args)
      break
    if arg.startswith(("--flagfile=", "-flagfile=")):
      files.append(arg)
    elif arg in ("--flagfile", "-flagfile"):
      files.extend([arg, next(args, "")])
    else:
      rest.append(arg)
  return rest[:1] + files + rest[1:]


def message_of(error):
  """The text of an exception for a person, on one line: KeyError's quotes and absl's prefixes
  removed; of TensorFlow's long messages the first line, without the graph node and op names."""
  if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
    text = error.args[0]
  else:
    text = getattr(error, "message", None) or str(error) or type(error).__name__
  lines = [line for line in str(text).splitlines() if line.strip()]
  text = lines[0] if lines else type(error).__name__
  text = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:\w+\]", "", text)
  return text.replace("ERROR:: ", "").strip()


def fail(prog, message, code):
  """Prints `<prog>: error: <message>` to stderr and exits with `code`."""
  print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def flags_parser(prog, flag_values=flags.FLAGS):
  """An absl `flags_parser` that reads flagfiles first and reports bad flags in one line."""
  def parse(argv):
    try:
      return flag_values(flagfiles_first(argv))
    except flags.Error as e:
      fail(prog, message_of(e), 2)
  return parse


def run(main, prog, errors=EXPECTED_ERRORS):
  """`app.run(main)` with the behaviour of the module docstring.

  Args:
    main: the absl main, `main(argv) -> exit code or None`.
    prog: the program's name in messages, e.g. "predict".
    errors: exception classes that are expected failures (one line, exit 1).
  """
  def wrapped(argv):
    try:
      return main(argv)
    except app.UsageError as e:
      fail(prog, message_of(e), 2)
    except KeyboardInterrupt:
      fail(prog, "interrupted (Ctrl-C)", 130)
    except errors as e:  # pylint: disable=catching-non-exception
      fail(prog, message_of(e), 1)
  app.run(wrapped, flags_parser=flags_parser(prog))
