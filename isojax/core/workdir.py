"""The workdir: the one contract shared by training, notebooks and sweeps.

    DIR/config.json      the resolved config of the run
    DIR/dataset.json     what the run trained on: class names, channels, split sizes
    DIR/metrics.jsonl    one JSON object per line: {"step", "split": "train"|"eval"|"summary", ...};
                         eval lines name their evaluator: {"split": "eval", "evaluator": "val", ...}
    DIR/checkpoints/     Orbax checkpoints (see checkpoint.py)
    DIR/tensorboard/     TensorBoard event files

A sweep's workdir holds one such run per trial, plus:

    DIR/sweep.json       the expanded trials (name, config, overrides, swept values)
    DIR/<trial>/launch.json   the trial's command, return code and error, written by the launcher
    DIR/<trial>/log.txt  the trial's output
    DIR/results.csv, DIR/results.md, DIR/results.png   the comparison (isojax.sweep --summarize)

Everything that reads or writes these paths goes through this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import ml_collections

CONFIG = 'config.json'
DATASET = 'dataset.json'
METRICS = 'metrics.jsonl'
CHECKPOINTS = 'checkpoints'
SWEEP = 'sweep.json'
LAUNCH = 'launch.json'
LOG = 'log.txt'
RESULTS = 'results'  # .csv, .md, .png
TENSORBOARD = 'tensorboard'
LOCK = '.isojax.lock'  # held by the one run writing this workdir: {"host", "pid", "since"}

# Fields that fix the shapes in a checkpoint or the meaning of its steps: a run cannot
# resume from a workdir whose config differs in any of them.
ARCHITECTURE_FIELDS = (
  'model',
  'data.name',
  'data.image_size',
  'optimizer.name',
  'optimizer.freeze',
  'ema_decay',
  'seed',
)


DEFAULT_EVALUATOR = 'val'  # what eval lines written before named evaluators existed were


def eval_records(records, evaluator: str) -> list[dict]:
  """The eval lines of one evaluator, in order."""
  return [m for m in records if m.get('split') == 'eval' and m.get('evaluator', DEFAULT_EVALUATOR) == evaluator]


def config_path(workdir: str) -> str:
  return os.path.join(workdir, CONFIG)


def is_run(path: str) -> bool:
  """Whether `path` is a run's workdir (it has the config a run writes first)."""
  return os.path.isdir(path) and os.path.exists(config_path(path))


def metrics_path(workdir: str) -> str:
  return os.path.join(workdir, METRICS)


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINTS)


def tensorboard_dir(workdir: str) -> str:
  return os.path.join(workdir, TENSORBOARD)


def _get(config: dict, dotted: str) -> Any:
  for key in dotted.split('.'):
    if not isinstance(config, dict) or key not in config:
      return None
    config = config[key]
  return config


def write_dataset_info(workdir: str, info: dict) -> None:
  write_json(os.path.join(workdir, DATASET), info)


def read_dataset_info(workdir: str) -> dict:
  """{'num_classes', 'class_names', 'channels', 'num_train', 'num_eval'} of the run's dataset."""
  with open(os.path.join(workdir, DATASET)) as f:
    return json.load(f)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was started with."""
  return ml_collections.ConfigDict(read_json(config_path(workdir)))


def read_metrics(workdir: str) -> list[dict]:
  """All metric records written so far (tolerates a half-written last line of a running job)."""
  return list(iter_metrics(workdir))


def iter_metrics(workdir: str) -> Iterator[dict]:
  try:
    with open(metrics_path(workdir)) as f:
      yield from _parsed(f)
  except FileNotFoundError:
    return


def is_locked(workdir: str) -> bool:
  """Whether a live run holds DIR/.isojax.lock (`exclusive`); a lock left by a dead run holds nothing."""
  path = os.path.join(workdir, LOCK)
  if not os.path.exists(path):
    return False
  with open(path) as handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return True
    fcntl.flock(handle, fcntl.LOCK_UN)
  return False


@contextlib.contextmanager
def exclusive(workdir: str, enabled: bool = True):
  """Holds DIR/.isojax.lock for the run: a second run on the same workdir is refused, naming the first.

  An OS file lock (flock), so a run that died (even by SIGKILL) holds nothing: its lock is taken
  over with a warning naming it. Local and most network file systems honour flock.
  """
  if not enabled:
    yield
    return
  path = os.path.join(workdir, LOCK)
  handle = open(path, 'a+')
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.seek(0)
    holder = handle.read().strip() or 'unknown'
    handle.close()
    raise RuntimeError(
      f'Workdir {workdir!r} is in use by another run ({holder}); wait for it to finish, stop '
      f'it, or choose another --workdir.'
    ) from None
  try:
    handle.seek(0)
    previous = handle.read().strip()
    if previous:
      warnings.warn(f'Taking over the lock of workdir {workdir!r} from a run that is gone ({previous}).', stacklevel=2)
    handle.seek(0)
    handle.truncate()
    handle.write(
      json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'since': time.strftime('%Y-%m-%d %H:%M:%S')})
    )
    handle.flush()
    yield
  finally:
    handle.seek(0)
    handle.truncate()  # a clean exit leaves no holder behind
    handle.flush()
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()


def discard_metrics_after(workdir: str, step: int) -> int:
  """Keeps the metric lines of steps <= `step` (the checkpoint a run resumes from), minus summaries.

  Lines after it were written by an attempt that died before its next checkpoint (they will be
  written again) or belong to a run whose checkpoints were deleted; keeping them would make
  "best" and "final" report evaluations of states this run no longer has, and log a step twice.
  Returns how many lines were dropped.
  """
  path = metrics_path(workdir)
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.read().splitlines(keepends=True)
  kept = [m for m in _parsed(lines) if m.get('step', 0) <= step and m.get('split') != 'summary']
  # A run killed mid-write leaves half a line: rewritten without it, or the next append would join it.
  if len(kept) != len(lines) or (lines and not lines[-1].endswith('\n')):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(json.dumps(m) + '\n' for m in kept)
    os.replace(tmp, path)
  return len(lines) - len(kept)


def _parsed(lines: Iterable[str]) -> Iterator[dict]:
  """The records of metrics.jsonl lines, skipping a line cut short by a kill mid-write."""
  for line in lines:
    try:
      yield json.loads(line)
    except json.JSONDecodeError:
      continue


def prepare(workdir: str, config: ml_collections.ConfigDict, write: bool = True) -> None:
  """Checks that `workdir` is writable and compatible with `config`, then records the config."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix='.write_test'):  # unique per process
      pass
  except OSError as e:
    raise ValueError(
      f'Workdir {workdir!r} is not writable ({e.strerror}); choose a --workdir you can write to.'
    ) from None
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(config_path(workdir)):
    with open(config_path(workdir)) as f:
      old = json.load(f)
    for field in ARCHITECTURE_FIELDS:
      if _get(old, field) != _get(new, field):
        raise ValueError(
          f'Workdir {workdir!r} holds a run with {field}={_get(old, field)!r}, but this config has '
          f'{field}={_get(new, field)!r}; its checkpoints cannot be resumed. Use a new --workdir.'
        )
  if write:  # atomic: the other processes of a multi-process run read it at the same moment
    write_json(config_path(workdir), new, sort_keys=True)


def summary(workdir: str):
  """The run's final summary record, or None while it has not finished."""
  records = [m for m in iter_metrics(workdir) if m.get('split') == 'summary']
  return records[-1] if records else None


def write_json(path: str, value: Any, sort_keys: bool = False) -> None:
  """Writes `value` so that readers (another process, a notebook on a running run) never see half a file."""
  tmp = f'{path}.{os.getpid()}.tmp'
  try:
    with open(tmp, 'w') as f:
      json.dump(value, f, indent=2, default=str, sort_keys=sort_keys)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def read_json(path: str) -> Any:
  """The JSON file at `path`; a corrupt one is an error naming it."""
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path} is not valid JSON ({e}); was it cut short or edited by hand?') from None
