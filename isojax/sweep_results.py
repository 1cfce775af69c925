"""The comparison of a sweep's trials: one row per trial, as CSV, Markdown and a plot.

Built only from the trial workdirs, so it can be rebuilt at any time, even while trials run.
"""
from __future__ import annotations

import csv
import os
import re
import statistics
from typing import Any, Optional

from isojax import workdir as workdir_lib

COLUMNS = ('best_accuracy', 'final_accuracy', 'final_loss', 'steps', 'wall_time_sec', 'images_per_sec')


def error_line(error: Optional[str]) -> str:
  """The line of a failed trial's output that names the exception, else its last line."""
  lines = [l.strip() for l in (error or '').splitlines() if l.strip()]
  named = [l for l in lines if re.match(r'^[\w.]*(Error|Exception|Interrupt)\b', l)]
  return (named or lines or [''])[-1]


def trial_status(trial_dir: str, records: Optional[list] = None) -> tuple[str, Optional[str]]:
  """('done' | 'failed' | 'running' | 'pending', error message or None); `records` are the
  trial's metrics if already read."""
  if not os.path.isdir(trial_dir):
    return 'pending', None
  records = workdir_lib.read_metrics(trial_dir) if records is None else records
  if any(m.get('split') == 'summary' for m in records):
    return 'done', None
  launch_path = os.path.join(trial_dir, workdir_lib.LAUNCH)
  if os.path.exists(launch_path):
    launch = workdir_lib.read_json(launch_path)
    if launch.get('returncode') not in (None, 0):
      return 'failed', launch.get('error')
  return 'running', None


def _primary_evaluator(trial_dir: str) -> str:
  """The evaluator whose accuracy ranks a trial (config.best_metric), 'val' if the trial has no config yet."""
  try:
    best = workdir_lib.read_config(trial_dir).get('best_metric', '')
  except FileNotFoundError:
    best = ''
  return best.partition('/')[0] or workdir_lib.DEFAULT_EVALUATOR


def rows(sweep_dir: str) -> list[dict[str, Any]]:
  """One dict per trial: name, status, swept values, results; best first."""
  trials = workdir_lib.read_json(os.path.join(sweep_dir, workdir_lib.SWEEP))
  table = []
  for trial in trials:
    trial_dir = os.path.join(sweep_dir, trial['name'])
    records = workdir_lib.read_metrics(trial_dir)
    status, error = trial_status(trial_dir, records)
    row = {'trial': trial['name'], 'status': status, **trial['swept']}
    summary = next((m for m in reversed(records) if m.get('split') == 'summary'), None)
    train = [m for m in records if m.get('split') == 'train']
    evals = workdir_lib.eval_records(records, _primary_evaluator(trial_dir))
    speeds = [m['images_per_sec'] for m in train[1:]] or [m['images_per_sec'] for m in train]   # first includes compile
    row.update({
        'best_accuracy': summary['best_accuracy'] if summary else max((m['accuracy'] for m in evals if 'accuracy' in m),
                                                                       default=None),
        'final_accuracy': summary['final_accuracy'] if summary else None,
        'final_loss': summary['final_loss'] if summary else None,
        'steps': summary['steps'] if summary else (train[-1]['step'] if train else 0),
        'wall_time_sec': summary['wall_time_sec'] if summary else None,
        'images_per_sec': statistics.median(speeds) if speeds else None,
        'error': error,
    })
    table.append(row)
  return sorted(table, key=lambda r: -(r['best_accuracy'] if r['best_accuracy'] is not None else -1))


def _cell(value) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value)


def write(sweep_dir: str) -> list[dict[str, Any]]:
  """Writes results.csv, results.md and results.png; returns the rows."""
  table = rows(sweep_dir)
  trials = workdir_lib.read_json(os.path.join(sweep_dir, workdir_lib.SWEEP))
  axes = list(dict.fromkeys(k for t in trials for k in t['swept']))
  header = ['trial', 'status', *axes, *COLUMNS, 'error']
  base = os.path.join(sweep_dir, workdir_lib.RESULTS)
  with open(base + '.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=header, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(table)
  with open(base + '.md', 'w') as f:
    f.write('| ' + ' | '.join(header[:-1]) + ' |\n|' + '---|' * (len(header) - 1) + '\n')
    for row in table:
      f.write('| ' + ' | '.join(_cell(row.get(h)) for h in header[:-1]) + ' |\n')
    for row in table:
      if row['error']:
        f.write(f'\n`{row["trial"]}` failed: {error_line(row["error"])}\n')
  _plot(table, axes, base + '.png')
  return table


def _plot(table, axes, path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  if not axes:
    axes = ['trial']
  fig, subplots = plt.subplots(1, len(axes), figsize=(4 * len(axes), 3.2), squeeze=False)
  for ax, axis in zip(subplots[0], axes):
    points = [(r.get(axis), r['best_accuracy']) for r in table if r['best_accuracy'] is not None]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in points)
    if numeric and points:
      ax.scatter([x for x, _ in points], [y for _, y in points])
      values = [x for x, _ in points]
      if min(values) > 0 and max(values) / min(values) > 20:
        ax.set_xscale('log')
    else:
      labels = list(dict.fromkeys(str(x) for x, _ in points))
      ax.scatter([labels.index(str(x)) for x, _ in points], [y for _, y in points])
      ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_xlabel(axis)
    ax.set_ylabel('best eval accuracy')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def markdown(sweep_dir: str) -> str:
  with open(os.path.join(sweep_dir, workdir_lib.RESULTS + '.md')) as f:
    return f.read()
