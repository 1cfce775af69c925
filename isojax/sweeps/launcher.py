"""Runs a sweep's trials: each its own `isojax.main` process in SWEEP_DIR/<trial>/, a few at a time.

Resumable: finished trials are not run again, interrupted ones resume from their checkpoints, failed
ones are retried. A failing trial is reported and does not stop the others. With several GPUs each
running trial gets its own share of them (CUDA_VISIBLE_DEVICES).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Optional

from isojax.core import workdir as workdir_lib
from isojax.sweeps import results, spec


def _flag_value(value) -> str:
  return repr(value) if isinstance(value, float) else str(value)


def command(trial: spec.Trial, trial_dir: str, python: str = sys.executable) -> list[str]:
  """The `isojax.main` command line of one trial."""
  return [
    python,
    '-m',
    'isojax.main',
    f'--config={trial.config}',
    f'--workdir={trial_dir}',
    *(f'--config.{field}={_flag_value(value)}' for field, value in trial.overrides.items()),
  ]


def _gpu_groups(parallel: int) -> list[Optional[str]]:
  """CUDA_VISIBLE_DEVICES for each of `parallel` slots; None where there are no GPUs to split."""
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible:
    gpus = [g for g in visible.split(',') if g]
  else:
    try:
      listing = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=20).stdout
      gpus = [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith('GPU')]
    except (OSError, subprocess.TimeoutExpired):
      gpus = []
  if len(gpus) < parallel or parallel == 1:
    return [None] * parallel
  per = len(gpus) // parallel
  return [','.join(gpus[i * per : (i + 1) * per]) for i in range(parallel)]


def _start(trial, sweep_dir, gpus):
  trial_dir = os.path.join(sweep_dir, trial.name)
  os.makedirs(trial_dir, exist_ok=True)
  cmd = command(trial, trial_dir)
  workdir_lib.write_json(os.path.join(trial_dir, workdir_lib.LAUNCH), {'command': cmd, 'returncode': None})
  env = dict(os.environ)
  if gpus is not None:
    env['CUDA_VISIBLE_DEVICES'] = gpus
  log = open(os.path.join(trial_dir, workdir_lib.LOG), 'a')
  return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log, time.time()


def _finish(trial, sweep_dir, process, log):
  log.close()
  trial_dir = os.path.join(sweep_dir, trial.name)
  error = None
  if process.returncode != 0:
    with open(os.path.join(trial_dir, workdir_lib.LOG)) as f:
      lines = [l for l in f.read().splitlines() if l.strip()]
    error = '\n'.join(lines[-15:])
  launch = workdir_lib.read_json(os.path.join(trial_dir, workdir_lib.LAUNCH))
  workdir_lib.write_json(
    os.path.join(trial_dir, workdir_lib.LAUNCH), {**launch, 'returncode': process.returncode, 'error': error}
  )
  return error


def run(sweep: spec.Sweep, sweep_dir: str, parallel: int = 1, out=sys.stderr) -> list[dict]:
  """Runs the trials that are not done yet; returns the results rows."""
  trials = sweep.trials()
  os.makedirs(sweep_dir, exist_ok=True)
  workdir_lib.write_json(os.path.join(sweep_dir, workdir_lib.SWEEP), [vars(t) for t in trials])
  todo = [t for t in trials if results.trial_status(os.path.join(sweep_dir, t.name))[0] != 'done']
  done_before = len(trials) - len(todo)
  say = lambda text: (out.write(text + '\n'), out.flush())
  say(f'sweep: {len(trials)} trials, {done_before} already done, {len(todo)} to run, {parallel} at a time')
  slots = _gpu_groups(parallel)
  running: dict[int, tuple] = {}
  queue, finished, failed = list(todo), done_before, 0
  while queue or running:
    for slot in range(parallel):
      if slot not in running and queue:
        trial = queue.pop(0)
        running[slot] = (trial, *_start(trial, sweep_dir, slots[slot]))
        say(f'[{finished + failed + len(running)}/{len(trials)}] start {trial.name}')
    time.sleep(0.2)
    for slot, (trial, process, log, started) in list(running.items()):
      if process.poll() is None:
        continue
      del running[slot]
      error = _finish(trial, sweep_dir, process, log)
      elapsed = time.time() - started
      if error:
        failed += 1
        say(
          f'[{finished + failed}/{len(trials)}] FAILED {trial.name} after {elapsed:.0f}s: {results.error_line(error)}'
        )
      else:
        finished += 1
        summary = workdir_lib.summary(os.path.join(sweep_dir, trial.name)) or {}
        accuracy = summary.get('best_accuracy')
        say(
          f'[{finished + failed}/{len(trials)}] done {trial.name} in {elapsed:.0f}s: best accuracy '
          + (f'{100 * accuracy:.2f}%' if accuracy is not None else 'n/a')
        )
  table = results.write(sweep_dir)
  say(
    f'sweep: {finished} done, {failed} failed; results in {os.path.join(sweep_dir, workdir_lib.RESULTS)}.md/.csv/.png'
  )
  return table
