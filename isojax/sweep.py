"""Run a sweep: every trial its own `isojax.main` run in DIR/<trial>/ (isojax/sweeps/launcher.py).

    python -m isojax.sweep experiments/default_sweep.py --workdir=DIR [--parallel=N]
    python -m isojax.sweep experiments/default_sweep.py --workdir=DIR --dry-run
    python -m isojax.sweep experiments/default_sweep.py --workdir=DIR --print-commands
    python -m isojax.sweep --summarize DIR

Resumable: finished trials are not run again, interrupted ones resume from their checkpoints,
failed ones are retried. A failing trial is reported and does not stop the others. With
several GPUs, `--parallel=N` gives each running trial its own share of them.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Optional, Sequence

from isojax import sweeps
from isojax.sweeps import launcher, results
from isojax.training import config_base


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m isojax.sweep', description=__doc__.splitlines()[0])
  parser.add_argument('sweep_file', nargs='?', help='experiments/NAME.py')
  parser.add_argument('--workdir', help='the sweep directory: one folder per trial')
  parser.add_argument('--parallel', type=int, default=1, help='trials at a time')
  parser.add_argument('--dry-run', action='store_true', help='print the trials and stop')
  parser.add_argument('--print-commands', action='store_true',
                      help='print one isojax.main command per trial (for a cluster scheduler) and stop')
  parser.add_argument('--summarize', metavar='DIR', help='rebuild results.csv/.md/.png of DIR and print the table')
  args = parser.parse_args(argv)
  if args.summarize:
    results.write(args.summarize)
    print(results.markdown(args.summarize))
    return 0
  if not args.sweep_file or not args.workdir:
    parser.error('give a sweep file and --workdir (or --summarize DIR)')
  sweep = sweeps.load(args.sweep_file)
  trials = sweep.trials()
  for trial in trials:   # a bad field or value fails here, before any trial starts
    try:
      config_base.validate(config_base.load(trial.config, trial.overrides))
    except (ValueError, FileNotFoundError) as e:
      parser.error(f'trial {trial.name}: {e}')
  if args.dry_run:
    for trial in trials:
      print(f'{trial.name}: --config={trial.config} ' + ' '.join(f'{k}={v!r}' for k, v in trial.overrides.items()))
    print(f'{len(trials)} trials')
    return 0
  if args.print_commands:
    for trial in trials:
      print(shlex.join(launcher.command(trial, os.path.join(args.workdir, trial.name), python='python')))
    return 0
  table = launcher.run(sweep, args.workdir, parallel=args.parallel)
  print(results.markdown(args.workdir))
  return 1 if any(r['status'] == 'failed' for r in table) else 0


if __name__ == '__main__':
  sys.exit(main())
