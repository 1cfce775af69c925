"""The comparison of a sweep's trials: one row per trial, as CSV, Markdown and plots.

Built only from the trial workdirs, so it can be rebuilt at any time, even while trials run. Beside the
accuracies: each trial's model (canonical name, parameters, forward GFLOPs per image by XLA's count,
'isotropic', 'hybrid' or 'pyramid' by its shape profile) and its speeds as trained (median training images/s of the
logged intervals after the first, which includes compilation; median end-to-end images/s of its primary
evaluator). results.png plots accuracy against each swept axis, results_cost.png against GFLOPs and
parameters, results_shapes.png each model's tokens and width after every block or stage.
"""

from __future__ import annotations

import csv
import os
import re
import statistics
import warnings
from typing import Any, Optional

import matplotlib
import optuna
from optuna.trial import FrozenTrial, TrialState

from isojax import models
from isojax.core import workdir as workdir_lib
from isojax.evaluation import explain
from isojax.sweeps import study as study_lib
from isojax.training import plan

COLUMNS = (
  'model',
  'shape',
  'best_accuracy',
  'final_accuracy',
  'final_loss',
  'parameters',
  'gflops_per_image',
  'train_images_per_sec',
  'eval_images_per_sec',
  'steps',
  'wall_time_sec',
)


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


def model_profile(trial_dir: str) -> dict[str, Any]:
  """{'model', 'parameters', 'gflops_per_image', 'shape', 'profile'} of a trial's model, from its config and
  dataset record alone (abstract evaluation: nothing is initialised); {} before the trial has written them,
  or when the model cannot be built."""
  try:
    config, info = workdir_lib.read_config(trial_dir), workdir_lib.read_dataset_info(trial_dir)
  except FileNotFoundError:
    return {}
  try:
    model = models.from_config(config, info['num_classes'])
    parameters, gflops = plan.model_cost(model, config.data.image_size, info['channels'])
    profile = explain.shape_profile(model, config.data.image_size, info['channels'])
  except ValueError:  # a model that cannot be built (the trial failed for it: its error says why)
    return {}
  return {
    'model': models.config_name(config),
    'parameters': parameters,
    'gflops_per_image': gflops,
    'shape': shape_kind(profile),
    'profile': profile,
  }


def shape_kind(profile: list[tuple[str, int, int]]) -> str:
  """'isotropic' (every block keeps one shape), 'pyramid' (stages that change it, no blocks) or 'hybrid'
  (a pyramid stem under same-shape blocks)."""
  blocks = {(tokens, width) for name, tokens, width in profile if name.startswith('block')}
  stages = [name for name, *_ in profile if not name.startswith('block')]
  if not blocks:
    return 'pyramid'
  if len(blocks) > 1:
    raise ValueError(f'Blocks of different shapes in {profile}: not an isotropic body.')
  return 'hybrid' if stages else 'isotropic'


STATES = {
  TrialState.COMPLETE: 'complete',
  TrialState.PRUNED: 'pruned',
  TrialState.FAIL: 'failed',
  TrialState.RUNNING: 'running',
  TrialState.WAITING: 'waiting',
}


def _folder_columns(trial_dir: str) -> dict[str, Any]:
  """What a trial's folder says: accuracies, steps, speeds, its error, its model's profile."""
  records = workdir_lib.read_metrics(trial_dir)
  status, error = trial_status(trial_dir, records)
  summary = next((m for m in reversed(records) if m.get('split') == 'summary'), None)
  train = [m for m in records if m.get('split') == 'train']
  evals = workdir_lib.eval_records(records, _primary_evaluator(trial_dir))
  speeds = [m['images_per_sec'] for m in train[1:]] or [m['images_per_sec'] for m in train]  # first includes compile
  eval_speeds = [m['images_per_sec'] for m in evals if 'images_per_sec' in m]
  columns = {
    'status': status,
    'best_accuracy': summary['best_accuracy']
    if summary
    else max((m['accuracy'] for m in evals if 'accuracy' in m), default=None),
    'final_accuracy': summary['final_accuracy'] if summary else None,
    'final_loss': summary['final_loss'] if summary else None,
    'steps': summary['steps'] if summary else (train[-1]['step'] if train else 0),
    'wall_time_sec': summary['wall_time_sec'] if summary else None,
    'train_images_per_sec': statistics.median(speeds) if speeds else None,
    'eval_images_per_sec': statistics.median(eval_speeds) if eval_speeds else None,
    'error': error,
  }
  if status != 'pending':
    columns.update(model_profile(trial_dir))
  return columns


def _folder_rows(sweep_dir: str) -> list[dict[str, Any]]:
  """The rows of a sweep run before it had a study: the trials listed in DIR/sweep.json, from their folders."""
  table = []
  for trial in workdir_lib.read_json(os.path.join(sweep_dir, workdir_lib.SWEEP)):
    table.append({'trial': trial['name'], **trial['swept'], **_folder_columns(os.path.join(sweep_dir, trial['name']))})
  return table


def load_study(sweep_dir: str, storage: Optional[str] = None) -> optuna.Study:
  """The sweep's study, from the storage recorded in DIR/study.json (or `storage`, for a URL with a password)."""
  recorded = workdir_lib.read_json(os.path.join(sweep_dir, study_lib.STUDY))
  url = storage or recorded['storage']
  if '***' in url:
    raise study_lib.StorageError(f'{sweep_dir}: its study is on {url}; give the URL with its password: --storage=URL.')
  return optuna.load_study(study_name=recorded['study_name'], storage=url)


def _representatives(trials: list[FrozenTrial]) -> dict[str, FrozenTrial]:
  """One trial per folder: the latest attempt that ran there (a trial that took another's outcome stands aside);
  in the order the folders first appeared."""
  chosen: dict[str, FrozenTrial] = {}
  for trial in sorted(trials, key=lambda t: (study_lib.SAME_AS not in t.user_attrs, t.number)):
    name = trial.user_attrs.get(study_lib.NAME)
    if name is not None:
      chosen[name] = trial
  return chosen


def _study_rows(study: optuna.Study, sweep_dir: str) -> list[dict[str, Any]]:
  """The rows of a sweep with a study: one per trial folder, its state and value from the study; best first."""
  counted = study_lib.counted(study.get_trials(deepcopy=False))
  table = []
  for name, trial in _representatives(counted).items():
    params = _ordered_params(trial)
    row = {'trial': name, 'number': trial.number, **params, '_params': tuple(params)}
    row.update(_folder_columns(os.path.join(sweep_dir, name)))
    row['status'] = STATES[trial.state]
    row['objective'] = trial.value if trial.state == TrialState.COMPLETE else None
    row['pruned_at'] = max(trial.intermediate_values, default=None) if trial.state == TrialState.PRUNED else None
    row['error'] = row['error'] or trial.user_attrs.get(study_lib.ERROR)
    table.append(row)
  sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
  return sorted(table, key=lambda r: (r['objective'] is None, sign * (r['objective'] or 0), r['number']))


def _ordered_params(trial: FrozenTrial) -> dict[str, Any]:
  values = trial.params or trial.system_attrs.get('fixed_params', {})
  return dict(sorted(values.items(), key=lambda kv: kv[0] != 'arg'))


def rows(sweep_dir: str, storage: Optional[str] = None) -> list[dict[str, Any]]:
  """One dict per trial: name, status, swept values, results and its model's profile; best first."""
  if os.path.exists(os.path.join(sweep_dir, study_lib.STUDY)):
    return _study_rows(load_study(sweep_dir, storage), sweep_dir)
  table = _folder_rows(sweep_dir)
  return sorted(table, key=lambda r: -(r['best_accuracy'] if r['best_accuracy'] is not None else -1))


def _cell(value) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    return f'{value:.4g}'
  return str(value)


def _axes(sweep_dir: str, table: list[dict[str, Any]]) -> list[str]:
  """The swept fields, in the sweep's order."""
  if os.path.exists(os.path.join(sweep_dir, study_lib.STUDY)):
    return list(
      dict.fromkeys(k for r in sorted(table, key=lambda r: r['number']) for k in r if k in r.get('_params', ()))
    )
  trials = workdir_lib.read_json(os.path.join(sweep_dir, workdir_lib.SWEEP))
  return list(dict.fromkeys(k for t in trials for k in t['swept']))


def write(sweep_dir: str, storage: Optional[str] = None) -> list[dict[str, Any]]:
  """Writes results.csv, results.md and the plots (results.png, results_cost.png, results_shapes.png; with a
  study also results_history.png and results_importance.png); returns the rows."""
  table = rows(sweep_dir, storage)
  axes = _axes(sweep_dir, table)
  extra = ['objective', 'pruned_at'] if any('objective' in r for r in table) else []
  header = ['trial', 'status', *axes, *extra, *COLUMNS, 'error']
  base = os.path.join(sweep_dir, workdir_lib.RESULTS)
  with open(base + '.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=header, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(table)
  with open(base + '.md', 'w') as f:
    f.write(_markdown_table(table, header[:-1]))
    if extra:
      f.write(_best_line(table))
    for row in table:
      if row['error']:
        f.write(f'\n`{row["trial"]}` failed: {error_line(row["error"])}\n')
  plt = _pyplot()
  _plot(plt, table, axes, base + '.png')
  _plot_cost(plt, table, base + '_cost.png')
  _plot_shapes(plt, table, base + '_shapes.png')
  if extra:
    _plot_study(plt, load_study(sweep_dir, storage), base)
  return table


def _markdown_table(table: list[dict[str, Any]], header: list[str]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(_cell(row.get(h)) for h in header) + ' |' for row in table]
  return '\n'.join(lines) + '\n'


def _best_line(table: list[dict[str, Any]]) -> str:
  """'Best trial: NAME (trial N): objective X.' (rows are sorted best first)."""
  best = next((r for r in table if r.get('objective') is not None), None)
  if best is None:
    return '\nNo trial has completed yet.\n'
  counts = {s: sum(1 for r in table if r['status'] == s) for s in STATES.values()}
  tally = ', '.join(f'{n} {s}' for s, n in counts.items() if n)
  return (
    f'\nBest trial: `{best["trial"]}` (trial {best["number"]}), objective {best["objective"]:.4g}. Trials: {tally}.\n'
  )


def _plot_study(plt, study: optuna.Study, base: str) -> None:
  """Optuna's optimisation history and parameter importances (fANOVA), where the study has enough trials."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # optuna.visualization.matplotlib is experimental
    for suffix, plot in (
      ('_history', optuna.visualization.matplotlib.plot_optimization_history),
      ('_importance', optuna.visualization.matplotlib.plot_param_importances),
    ):
      try:
        ax = plot(study)
      except (ValueError, RuntimeError, ZeroDivisionError):  # too few complete trials, or a single value
        continue
      figure = ax.get_figure(root=True)
      if figure is None:
        continue
      figure.set_size_inches(6, 4)
      figure.tight_layout()
      figure.savefig(base + suffix + '.png', dpi=100)
      plt.close(figure)


def _pyplot():
  matplotlib.use('Agg')  # before pyplot is imported: files only, no display
  import matplotlib.pyplot as plt  # lazily: matplotlib picks its backend on this import

  return plt


def _scatter_labelled(ax, table, x_key, label_key, scale=1.0):
  """Accuracy against `x_key` / `scale`, one labelled point per trial, isotropic, hybrid and pyramid models in
  three colours."""
  for shape, colour in (('isotropic', 'tab:blue'), ('hybrid', 'tab:green'), ('pyramid', 'tab:orange')):
    points = [
      r for r in table if r['best_accuracy'] is not None and r.get(x_key) and r.get('shape', 'isotropic') == shape
    ]
    if points:
      ax.scatter([r[x_key] / scale for r in points], [r['best_accuracy'] for r in points], color=colour, label=shape)
      for r in points:
        ax.annotate(
          str(r.get(label_key) or r['trial']),
          (r[x_key] / scale, r['best_accuracy']),
          fontsize=6,
          xytext=(3, 2),
          textcoords='offset points',
          rotation=20,
        )
  _log_scale_if_wide(ax, [r[x_key] / scale for r in table if r.get(x_key)])
  ax.set_ylabel('best eval accuracy')


def _log_scale_if_wide(ax, values) -> None:
  """A log x axis when the values span more than 20x."""
  if values and min(values) > 0 and max(values) / min(values) > 20:
    ax.set_xscale('log')


def _plot(plt, table, axes, path):
  if not axes:
    axes = ['trial']
  fig, subplots = plt.subplots(1, len(axes), figsize=(4 * len(axes), 3.2), squeeze=False)
  for ax, axis in zip(subplots[0], axes):
    points = [(r.get(axis), r['best_accuracy']) for r in table if r['best_accuracy'] is not None]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in points)
    if numeric and points:
      ax.scatter([x for x, _ in points], [y for _, y in points])
      _log_scale_if_wide(ax, [x for x, _ in points])
    else:
      labels = list(dict.fromkeys(str(x) for x, _ in points))
      ax.scatter([labels.index(str(x)) for x, _ in points], [y for _, y in points])
      ax.set_xticks(range(len(labels)), labels, rotation=30, ha='right', fontsize=7)
    ax.set_xlabel(axis)
    ax.set_ylabel('best eval accuracy')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _plot_cost(plt, table, path):
  """Accuracy against forward GFLOPs per image and against parameters."""
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  _scatter_labelled(left, table, 'gflops_per_image', 'model')
  left.set_xlabel('GFLOPs per image (forward)')
  _scatter_labelled(right, table, 'parameters', 'model', scale=1e6)
  right.set_xlabel('parameters (millions)')
  if right.get_legend_handles_labels()[0]:
    right.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _plot_shapes(plt, table, path):
  """Tokens and width after each block or stage, against relative depth: flat lines are isotropic models."""
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  colours = plt.get_cmap('tab20').colors
  for i, row in enumerate(r for r in table if r.get('profile')):
    profile = row['profile']
    depth = [(i + 1) / len(profile) for i in range(len(profile))]
    style = {'isotropic': '-', 'hybrid': '-.'}.get(row.get('shape'), '--')
    label = row.get('model') or row['trial']
    colour = colours[(2 * i) % 20 + (2 * i) // 20 % 2]
    left.plot(depth, [tokens for _, tokens, _ in profile], style, marker='.', color=colour, label=label)
    right.plot(depth, [width for _, _, width in profile], style, marker='.', color=colour, label=label)
  for ax, what in ((left, 'tokens (positions) after the block'), (right, 'width (channels) after the block')):
    ax.set_xlabel('relative depth (block or stage / all)')
    ax.set_ylabel(what)
    ax.set_yscale('log')
  if right.get_legend_handles_labels()[0]:
    right.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def markdown(sweep_dir: str) -> str:
  with open(os.path.join(sweep_dir, workdir_lib.RESULTS + '.md')) as f:
    return f.read()
