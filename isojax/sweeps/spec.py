"""Sweep files: a base config, axes over any config field (fixed trials) and an optional Optuna search.

    from isojax.sweeps import Sweep, choice, loguniform, product

    def get_sweep():
      return Sweep('configs/default.py', product({'model.kernel_size': [3, 5], 'optimizer.lr': [1e-3, 3e-3]}),
                   fixed={'num_epochs': 10},
                   search={'optimizer.lr': loguniform(1e-4, 1e-2), 'model.depth': choice([4, 6])},
                   n_trials=8, sampler='tpe', pruner='median', metric='val/accuracy', direction='maximize')

Axes are lists of {dotted field: value} dicts; `product`, `zip_axes` and `sample` build them and
compose (`product(a, b)` of two axes, `a + b` to concatenate). The key 'arg' sweeps the
config's `:ARG` string. Expansion is pure and deterministic given the seed. The axes' trials are enqueued
in the sweep's study once; the search's `n_trials` are the sampler's (isojax/sweeps/study.py).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import math
import os
import re
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import optuna

Axis = list  # of {field: value} dicts


def _as_axis(spec: dict | Axis) -> Axis:
  """{'a': [1, 2], 'b': [3]} -> the product over its keys; a list of dicts stays as it is."""
  if isinstance(spec, dict):
    for field, values in spec.items():
      if not isinstance(values, (list, tuple)):
        raise ValueError(f'Axis {field!r} needs a list of values, got {values!r}.')
    keys = list(spec)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(spec[k] for k in keys))]
  return list(spec)


def product(*axes: dict | Axis) -> Axis:
  """Every combination: product({'lr': [1, 2]}, {'wd': [0, 1]}) has 4 trials."""
  result: Axis = [{}]
  for axis in axes:
    result = [{**a, **b} for a in result for b in _as_axis(axis)]
  return result


def zip_axes(spec: dict) -> Axis:
  """Values taken together: zip_axes({'patch_size': [2, 4], 'kernel_size': [9, 5]}) has 2 trials."""
  lengths = {len(v) for v in spec.values()}
  if len(lengths) != 1:
    raise ValueError(f'zip_axes needs lists of one length, got { {k: len(v) for k, v in spec.items()} }.')
  keys = list(spec)
  return [dict(zip(keys, values)) for values in zip(*(spec[k] for k in keys))]


@dataclasses.dataclass(frozen=True)
class Distribution:
  """A search dimension: `loguniform`/`uniform` floats, `intuniform` integers or a `choice` of values. Called
  with a numpy RandomState it draws one value (`sample`'s axes); `optuna()` is the same space for a search."""

  kind: str  # 'float' | 'int' | 'choice'
  low: float = 0.0
  high: float = 0.0
  log: bool = False
  values: tuple = ()

  def __post_init__(self):
    if self.kind == 'choice':
      if not self.values:
        raise ValueError('choice() needs at least one value.')
      for value in self.values:
        if value is not None and not isinstance(value, (bool, int, float, str)):
          raise ValueError(f'choice() values must be None, bool, int, float or str (a database column), got {value!r}.')
    elif self.kind in ('float', 'int'):
      if not self.low < self.high or (self.log and self.low <= 0):
        raise ValueError(
          f'A {"log-" if self.log else ""}uniform range needs {"0 < " if self.log else ""}low < high, '
          f'got low={self.low}, high={self.high}.'
        )
    else:
      raise ValueError(f"Distribution kind {self.kind!r}: use 'float', 'int' or 'choice'.")

  def __call__(self, rng: np.random.RandomState) -> Any:
    if self.kind == 'choice':
      return self.values[rng.randint(len(self.values))]
    if self.kind == 'int':
      return int(rng.randint(int(self.low), int(self.high) + 1))
    if self.log:
      return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
    return float(rng.uniform(self.low, self.high))

  def optuna(self) -> optuna.distributions.BaseDistribution:
    """Optuna's distribution of this space (log scale for `loguniform`)."""
    if self.kind == 'choice':
      return optuna.distributions.CategoricalDistribution(self.values)
    if self.kind == 'int':
      return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
    return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)

  def contains(self, value: Any) -> bool:
    if self.kind == 'choice':
      return value in self.values
    return isinstance(value, (int, float)) and self.low <= value <= self.high

  def edges(self) -> list:
    """The values a config must accept for every draw to be valid: the ends of a range, every choice."""
    if self.kind == 'choice':
      return list(self.values)
    cast = int if self.kind == 'int' else float
    return [cast(self.low), cast(self.high)]

  def __repr__(self):
    if self.kind == 'choice':
      return f'choice({list(self.values)})'
    name = {'float': 'uniform', 'int': 'intuniform'}[self.kind]
    return f'{"log" if self.log else ""}{name}({self.low}, {self.high})'


def loguniform(low: float, high: float) -> Distribution:
  return Distribution('float', low, high, log=True)


def uniform(low: float, high: float) -> Distribution:
  return Distribution('float', low, high)


def intuniform(low: int, high: int, log: bool = False) -> Distribution:
  """An integer in [low, high], both included."""
  return Distribution('int', low, high, log=log)


def choice(values: Sequence) -> Distribution:
  return Distribution('choice', values=tuple(values))


def sample(n: int, spec: dict[str, Distribution], seed: int = 0) -> Axis:
  """n random trials; the same seed always gives the same trials."""
  rng = np.random.RandomState(seed)
  return [{field: dist(rng) for field, dist in spec.items()} for _ in range(n)]


@dataclasses.dataclass(frozen=True)
class Trial:
  name: str  # its folder in the sweep's workdir
  config: str  # path[:ARG]
  overrides: dict  # dotted field -> value, the swept values first
  swept: dict  # just the swept values


SAMPLERS = ('tpe', 'random', 'grid', 'cmaes')
PRUNERS = ('median', 'asha', 'hyperband')
DIRECTIONS = ('maximize', 'minimize')


@dataclasses.dataclass
class Sweep:
  """A base config file, the axes (fixed trials, each run once), fields fixed for every trial, and an optional
  Optuna search: `n_trials` more trials whose `search` fields the sampler suggests, pruned on `metric`."""

  config: str
  axes: Axis = dataclasses.field(default_factory=list)
  fixed: dict = dataclasses.field(default_factory=dict)
  search: dict = dataclasses.field(default_factory=dict)  # dotted field -> Distribution
  n_trials: int = 0
  sampler: str = 'tpe'
  pruner: Union[str, optuna.pruners.BasePruner, None] = None
  metric: str = 'val/accuracy'  # evaluator/key of the eval lines in metrics.jsonl
  direction: str = 'maximize'
  seed: int = 0

  def __post_init__(self):
    for field, space in self.search.items():
      if not isinstance(space, Distribution):
        raise ValueError(f'search[{field!r}] must be loguniform(), uniform(), intuniform() or choice(), got {space!r}.')
    if self.sampler not in SAMPLERS:
      raise ValueError(f'sampler={self.sampler!r}: use one of {SAMPLERS}.')
    if not (self.pruner is None or self.pruner in PRUNERS or isinstance(self.pruner, optuna.pruners.BasePruner)):
      raise ValueError(f'pruner={self.pruner!r}: use one of {PRUNERS}, None or an optuna.pruners.BasePruner.')
    if self.direction not in DIRECTIONS:
      raise ValueError(f'direction={self.direction!r}: use one of {DIRECTIONS}.')
    if self.metric.count('/') != 1:
      raise ValueError(f"metric={self.metric!r}: name an evaluator and a key, e.g. 'val/accuracy' or 'val/loss'.")
    if self.n_trials < 0 or bool(self.search) != (self.n_trials > 0):
      raise ValueError(
        f'n_trials={self.n_trials} with search={self.search}: a search needs n_trials > 0, and only one.'
      )
    if self.sampler == 'grid' and self.search:
      ranges = [f for f, d in self.search.items() if d.kind != 'choice']
      if ranges:
        raise ValueError(f'sampler="grid" needs choice() for every search field; {ranges} are ranges.')
      if self.n_trials > self.grid_size():
        raise ValueError(f'n_trials={self.n_trials} is more than the {self.grid_size()} points of the grid.')
    for values in self.axes:
      for field, value in values.items():
        if field in self.search and not self.search[field].contains(value):
          raise ValueError(f'Axis value {field}={value!r} lies outside its search space {self.search[field]!r}.')
    if not self.axes and not self.search:
      raise ValueError('A sweep needs axes (fixed trials), a search, or both.')

  def grid_size(self) -> int:
    return math.prod(len(d.values) for d in self.search.values())

  def fields(self) -> list[str]:
    """Every swept field in naming order: 'arg' first, then the axes' fields, then the search's."""
    fields = list(dict.fromkeys([k for values in self.axes for k in values] + list(self.search)))
    return sorted(fields, key=lambda f: f != 'arg')

  def axis_choices(self) -> dict[str, tuple]:
    """Each axis field's values over all fixed trials: one categorical space per field, as a study keeps one."""
    choices: dict[str, list] = {}
    for values in self.axes:
      for field, value in values.items():
        if field not in self.search and value not in choices.setdefault(field, []):
          choices[field].append(value)
    return {field: choice(values).values for field, values in choices.items()}

  def trial(self, swept: dict) -> Trial:
    """The trial of one set of swept values (an axis entry, or a search trial's parameters)."""
    values = {f: swept[f] for f in self.fields() if f in swept}
    arg = values.pop('arg', None)
    config = f'{self.config.split(":")[0]}:{arg}' if arg is not None else self.config
    ordered = ({'arg': arg} if arg is not None else {}) | values
    return Trial(trial_name(ordered), config, {**self.fixed, **values}, ordered)

  def trials(self) -> list[Trial]:
    """The fixed trials, one per axis entry (a search's trials are the study's to suggest)."""
    trials, names = [], set()
    for values in self.axes:
      trial = self.trial(values)
      if trial.name in names:
        raise ValueError(f'Two trials of the sweep have the same values {trial.swept}.')
      names.add(trial.name)
      trials.append(trial)
    return trials

  def total_trials(self) -> int:
    return len(self.axes) + self.n_trials


def _format(value) -> str:
  if isinstance(value, float):
    return f'{value:.3g}'
  return str(value)


def trial_name(swept: dict) -> str:
  """'model.kernel_size=5,optimizer.lr=0.003' -> 'kernel_size=5,lr=0.003', safe as a folder name."""
  if not swept:
    return 'base'
  parts = [f'{field.rsplit(".", 1)[-1]}={_format(value)}' for field, value in swept.items()]
  return re.sub(r'[^A-Za-z0-9=.,_+-]', '_', ','.join(parts))


def load(path: str) -> Sweep:
  """The Sweep that a sweep file's `get_sweep()` returns."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'No sweep file {path!r}.')
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  if spec is None or spec.loader is None:
    raise ValueError(f'{path!r} is not a Python sweep file (expected a .py file with get_sweep()).')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  sweep = module.get_sweep()
  if not isinstance(sweep, Sweep):
    raise TypeError(f'{path}: get_sweep() must return an isojax.sweeps.Sweep, got {type(sweep).__name__}.')
  return sweep
