"""Run a sweep: every trial its own `isojax.main` run in DIR/<trial>/, on Optuna (isojax/sweeps/launcher.py).

    python -m isojax.sweep experiments/default_sweep.py --workdir=DIR [--parallel=N]
    python -m isojax.sweep experiments/lr_search.py --workdir=DIR --storage=postgresql://USER@HOST/DB   # each host
    python -m isojax.sweep experiments/default_sweep.py --workdir=DIR --dry_run
    python -m isojax.sweep experiments/default_sweep.py --workdir=DIR --print_commands
    python -m isojax.sweep --summarize=DIR

The study lives in DIR/optuna.db (SQLite, one driver) unless --storage names a server database that any
number of workers share. Resumable: finished trials are not run again, interrupted ones resume from their
checkpoints, failed ones are retried. A trial the pruner rejects is stopped (it checkpoints, exits 75) and
recorded as pruned. A failing trial is reported and does not stop the others. With several GPUs or TPU
chips, `--parallel=N` gives each running trial its own share of them. SIGTERM or SIGINT stops the trials,
queues them again and exits 75.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from typing import Optional

from absl import flags

from isojax import models, sweeps
from isojax.core import command_line, loading, validation
from isojax.core import workdir as workdir_lib
from isojax.data import input_pipeline
from isojax.sweeps import launcher, results
from isojax.sweeps import study as study_lib
from isojax.training import preemption

FLAGS = flags.FlagValues()
_WORKDIR = flags.DEFINE_string('workdir', None, 'The sweep directory: one folder per trial.', flag_values=FLAGS)
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Trials at a time.', lower_bound=1, flag_values=FLAGS)
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the fixed trials and the search, and stop.', flag_values=FLAGS)
_PRINT_COMMANDS = flags.DEFINE_bool(
  'print_commands',
  False,
  'Print the worker command (the same on every host) and a SLURM array script of workers, and stop.',
  flag_values=FLAGS,
)
_SUMMARIZE = flags.DEFINE_string(
  'summarize', None, 'Rebuild results.csv/.md/.png of this sweep directory and print the table.', flag_values=FLAGS
)
_STORAGE = flags.DEFINE_string(
  'storage',
  None,
  "The study's database: an SQLAlchemy URL of a server (postgresql://USER@HOST/DB) that several workers share; "
  'default DIR/optuna.db (SQLite, one driver).',
  flag_values=FLAGS,
)
_STUDY_NAME = flags.DEFINE_string(
  'study_name', None, "The study's name; default the workdir's folder name.", flag_values=FLAGS
)
_HEARTBEAT = flags.DEFINE_integer(
  'heartbeat_sec', study_lib.HEARTBEAT_SEC, "Seconds between a worker's heartbeats.", lower_bound=1, flag_values=FLAGS
)
_GRACE = flags.DEFINE_integer(
  'grace_sec',
  study_lib.GRACE_SEC,
  'Seconds without heartbeats after which another worker retries a trial.',
  lower_bound=1,
  flag_values=FLAGS,
)


def _checked_trials(sweep: sweeps.Sweep) -> list[sweeps.Trial]:
  """The fixed trials, and the search space at each end of every range and at every choice, each config
  loaded and validated: a bad field or value fails here, before any trial starts."""
  trials = sweep.trials()
  edges = [sweep.trial({field: value}) for field, space in sweep.search.items() for value in space.edges()]
  evaluator = sweep.metric.split('/')[0]
  for trial in trials + edges:
    try:
      config = loading.load(trial.config, trial.overrides)
      validation.validate(config)
      models.check_config(config)  # an unknown model name or a contradicting field
      input_pipeline.check_config(config)
    except (ValueError, FileNotFoundError) as e:
      raise command_line.UsageError(f'trial {trial.name}: {e}') from None
    if evaluator not in config.evals:
      raise command_line.UsageError(
        f'trial {trial.name}: metric={sweep.metric!r} names evaluator {evaluator!r}, but its config evaluates '
        f'{sorted(config.evals)}; give the sweep a metric of one of them'
      )
  return trials


def _print_plan(sweep: sweeps.Sweep, trials: list[sweeps.Trial]) -> None:
  for trial in trials:
    print(f'{trial.name}: --config={trial.config} ' + ' '.join(f'{k}={v!r}' for k, v in trial.overrides.items()))
  if sweep.search:
    space = ', '.join(f'{field}: {space!r}' for field, space in sweep.search.items())
    pruner = sweep.pruner if isinstance(sweep.pruner, (str, type(None))) else type(sweep.pruner).__name__
    print(f'search: {sweep.n_trials} trials of {space}; sampler {sweep.sampler}, pruner {pruner}, seed {sweep.seed}')
  print(
    f'{sweep.total_trials()} trials ({len(trials)} fixed, {sweep.n_trials} searched); {sweep.direction} {sweep.metric}'
  )


def _print_commands(sweep_file: str, workdir: str, storage: Optional[str]) -> None:
  """The worker command (the same on every host) and a SLURM array script of workers."""
  worker = ['python', '-m', 'isojax.sweep', sweep_file, f'--workdir={workdir}']
  worker += [f'--storage={storage or "postgresql://USER@HOST/DB"}']
  if not storage:
    print('# several workers share one study on a server database: fill in --storage (SQLite takes one driver)')
  print('# one worker; run it on any number of hosts (DIR on a file system they share):')
  print(shlex.join(worker))
  print(SLURM_SCRIPT.format(name=os.path.basename(os.path.abspath(workdir)), worker=shlex.join(worker)))


SLURM_SCRIPT = """
# a SLURM array of 8 workers (sbatch sweep.sh); a worker stopped by SLURM exits 75 and is requeued:
#!/bin/bash
#SBATCH --job-name={name}
#SBATCH --array=0-7
#SBATCH --gres=gpu:1
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
{worker} &
worker=$!
trap 'kill -TERM $worker' TERM INT
wait $worker; code=$?
[ $code -gt 128 ] && {{ wait $worker; code=$?; }}
[ $code -eq 75 ] && scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
exit $code"""


@command_line.command
def main(argv: Optional[Sequence[str]] = None) -> int:
  positional = command_line.parse(FLAGS, argv, __doc__)
  if _SUMMARIZE.value:
    if not any(os.path.exists(os.path.join(_SUMMARIZE.value, f)) for f in (study_lib.STUDY, workdir_lib.SWEEP)):
      raise command_line.UsageError(
        f'--summarize={_SUMMARIZE.value!r} is not a sweep directory (no {study_lib.STUDY} or {workdir_lib.SWEEP}); '
        'give the --workdir of an isojax.sweep run'
      )
    try:
      results.write(_SUMMARIZE.value, storage=_STORAGE.value)
    except study_lib.StorageError as e:
      raise command_line.UsageError(str(e)) from None
    print(results.markdown(_SUMMARIZE.value))
    return 0
  if len(positional) != 1 or not _WORKDIR.value:
    raise command_line.UsageError('give one sweep file and --workdir (or --summarize=DIR)')
  try:
    sweep = sweeps.load(positional[0])
    study_lib.storage_url(_WORKDIR.value, _STORAGE.value)
  except (ValueError, TypeError, FileNotFoundError) as e:
    raise command_line.UsageError(str(e)) from None
  trials = _checked_trials(sweep)
  if _DRY_RUN.value:
    _print_plan(sweep, trials)
    return 0
  if _PRINT_COMMANDS.value:
    _print_commands(positional[0], _WORKDIR.value, _STORAGE.value)
    return 0
  try:
    table = launcher.run(
      sweep,
      _WORKDIR.value,
      parallel=_PARALLEL.value,
      storage=_STORAGE.value,
      study_name=_STUDY_NAME.value,
      heartbeat_sec=_HEARTBEAT.value,
      grace_sec=_GRACE.value,
    )
  except study_lib.StorageError as e:
    raise command_line.UsageError(str(e)) from None
  except launcher.Interrupted:
    return preemption.EXIT_CODE
  print(results.markdown(_WORKDIR.value))
  return 1 if any(r['status'] == 'failed' for r in table) else 0


if __name__ == '__main__':
  sys.exit(main())
