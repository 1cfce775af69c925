"""Run a sweep: every trial its own `isojax.main` run in DIR/<trial>/ (isojax/sweeps/launcher.py).

    python -m isojax.sweep experiments/default_sweep.py --workdir=DIR [--parallel=N]
    python -m isojax.sweep experiments/default_sweep.py --workdir=DIR --dry_run
    python -m isojax.sweep experiments/default_sweep.py --workdir=DIR --print_commands
    python -m isojax.sweep --summarize=DIR

Resumable: finished trials are not run again, interrupted ones resume from their checkpoints,
failed ones are retried. A failing trial is reported and does not stop the others. With
several GPUs, `--parallel=N` gives each running trial its own share of them.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from typing import Optional

from absl import flags

from isojax import sweeps
from isojax.core import command_line, loading, validation
from isojax.core import workdir as workdir_lib
from isojax.sweeps import launcher, results

FLAGS = flags.FlagValues()
_WORKDIR = flags.DEFINE_string('workdir', None, 'The sweep directory: one folder per trial.', flag_values=FLAGS)
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Trials at a time.', lower_bound=1, flag_values=FLAGS)
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the trials and stop.', flag_values=FLAGS)
_PRINT_COMMANDS = flags.DEFINE_bool(
  'print_commands',
  False,
  'Print one isojax.main command per trial (for a cluster scheduler) and stop.',
  flag_values=FLAGS,
)
_SUMMARIZE = flags.DEFINE_string(
  'summarize', None, 'Rebuild results.csv/.md/.png of this sweep directory and print the table.', flag_values=FLAGS
)


def _checked_trials(sweep: sweeps.Sweep) -> list[sweeps.Trial]:
  """The trials, each config loaded and validated: a bad field or value fails here, before any trial starts."""
  trials = sweep.trials()
  for trial in trials:
    try:
      validation.validate(loading.load(trial.config, trial.overrides))
    except (ValueError, FileNotFoundError) as e:
      raise command_line.UsageError(f'trial {trial.name}: {e}') from None
  return trials


@command_line.command
def main(argv: Optional[Sequence[str]] = None) -> int:
  positional = command_line.parse(FLAGS, argv, __doc__)
  if _SUMMARIZE.value:
    if not os.path.exists(os.path.join(_SUMMARIZE.value, workdir_lib.SWEEP)):
      raise command_line.UsageError(
        f'--summarize={_SUMMARIZE.value!r} is not a sweep directory (no {workdir_lib.SWEEP}); '
        'give the --workdir of an isojax.sweep run'
      )
    results.write(_SUMMARIZE.value)
    print(results.markdown(_SUMMARIZE.value))
    return 0
  if len(positional) != 1 or not _WORKDIR.value:
    raise command_line.UsageError('give one sweep file and --workdir (or --summarize=DIR)')
  sweep = sweeps.load(positional[0])
  trials = _checked_trials(sweep)
  if _DRY_RUN.value:
    for trial in trials:
      print(f'{trial.name}: --config={trial.config} ' + ' '.join(f'{k}={v!r}' for k, v in trial.overrides.items()))
    print(f'{len(trials)} trials')
    return 0
  if _PRINT_COMMANDS.value:
    for trial in trials:
      print(shlex.join(launcher.command(trial, os.path.join(_WORKDIR.value, trial.name), python='python')))
    return 0
  table = launcher.run(sweep, _WORKDIR.value, parallel=_PARALLEL.value)
  print(results.markdown(_WORKDIR.value))
  return 1 if any(r['status'] == 'failed' for r in table) else 0


if __name__ == '__main__':
  sys.exit(main())
