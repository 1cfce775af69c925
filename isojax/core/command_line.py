"""What every `python -m isojax.X` command shares: absl flags in the command's own `FlagValues` (so commands
can be imported side by side and called in-process, `main(argv)`), `--help`, and one-line usage errors.

    FLAGS = flags.FlagValues()
    _WORKDIR = flags.DEFINE_string('workdir', None, 'The run directory.', flag_values=FLAGS)

    @command_line.command
    def main(argv=None) -> int:
      positional = command_line.parse(FLAGS, argv, __doc__)
      ...

    if __name__ == '__main__':
      sys.exit(main())
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Optional

from absl import flags


class UsageError(Exception):
  """A command line that cannot be right: its message says what is wrong and what would be (exit code 2)."""


def parse(flag_values: flags.FlagValues, argv: Optional[Sequence[str]], doc: Optional[str]) -> list[str]:
  """The positional arguments of `argv` (sys.argv by default) after parsing its flags into `flag_values`."""
  # A process's sys.argv starts with the program; an in-process call passes the arguments alone (as argparse).
  argv = list(sys.argv) if argv is None else ['isojax', *argv]
  if any(a in ('--help', '-h', '--helpfull') for a in argv[1:]):
    print((doc or '').strip() + '\n\nflags:\n' + flag_values.get_help())
    raise SystemExit(0)
  # Each call starts from the defaults: an in-process call must not inherit the flags of the one before it.
  flag_values.unparse_flags()
  for name in [n for n in flag_values if '.' in n]:  # ml_collections defines one flag per --config.* override
    delattr(flag_values, name)
  program_argv, sys.argv = sys.argv, argv  # ml_collections' config flags read --config.* overrides from sys.argv
  try:
    return flag_values(argv)[1:]
  except flags.Error as e:
    raise UsageError(str(e)) from None
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # ml_collections refusing a --config.* override
    overrides = ' '.join(a for a in argv[1:] if a.startswith('--config.'))  # `command` prints it escaped
    # ml_collections' message for an unknown field is the repr of "'lrr'\nDid you mean ...": made one plain line
    reason = ' '.join(str(e).replace('\\n', ' ').replace('\\', '').replace("'", '').split()).strip('"')
    what = 'no such config field' if isinstance(e, (AttributeError, KeyError)) else type(e).__name__
    raise UsageError(f'cannot apply {overrides}: {what} ({reason})') from None
  finally:
    sys.argv = program_argv


def checkpoint_step(text: Optional[str]) -> Optional[int | str]:
  """A `--step` flag: a step number, a name ('best', 'latest'), or None (empty: the latest)."""
  return int(text) if text and text.isdigit() else text or None


def command(main: Callable[[Optional[Sequence[str]]], int]) -> Callable[..., int]:
  """`main(argv) -> exit code` whose `UsageError`s become one line on stderr and exit code 2 (as argparse's)."""

  @functools.wraps(main)
  def checked(argv: Optional[Sequence[str]] = None) -> int:
    try:
      return main(argv)
    except UsageError as e:
      # One line: a control character the user typed (a newline, \x1e) is shown escaped
      text = ''.join(c if c.isprintable() else repr(c)[1:-1] for c in str(e))
      print(f'usage error: {text} (--help lists the flags)', file=sys.stderr)
      raise SystemExit(2) from None

  return checked
