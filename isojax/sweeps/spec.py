"""Sweep files: a base config plus axes over any config field, expanded into trials.

    from isojax.sweeps import Sweep, loguniform, product, sample, zip_axes

    def get_sweep():
      return Sweep('configs/default.py', product({'model.kernel_size': [3, 5], 'optimizer.lr': [1e-3, 3e-3]}),
                   fixed={'num_epochs': 10})

Axes are lists of {dotted field: value} dicts; `product`, `zip_axes` and `sample` build them and
compose (`product(a, b)` of two axes, `a + b` to concatenate). The key 'arg' sweeps the
config's `:ARG` string. Expansion is pure and deterministic given the seed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

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
  """A named sampler `fn(rng) -> value`, with a readable repr for dry runs."""

  name: str
  fn: Callable[[np.random.RandomState], Any]

  def __call__(self, rng):
    return self.fn(rng)

  def __repr__(self):
    return self.name


def loguniform(low: float, high: float) -> Distribution:
  return Distribution(
    f'loguniform({low}, {high})', lambda rng: float(math.exp(rng.uniform(math.log(low), math.log(high))))
  )


def uniform(low: float, high: float) -> Distribution:
  return Distribution(f'uniform({low}, {high})', lambda rng: float(rng.uniform(low, high)))


def choice(values: Sequence) -> Distribution:
  return Distribution(f'choice({list(values)})', lambda rng: values[rng.randint(len(values))])


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


@dataclasses.dataclass
class Sweep:
  """A base config file, the axes, and fields fixed for every trial."""

  config: str
  axes: Axis
  fixed: dict = dataclasses.field(default_factory=dict)

  def trials(self) -> list[Trial]:
    trials, names = [], set()
    for values in self.axes:
      values = dict(values)
      arg = values.pop('arg', None)
      path = self.config.split(':')[0]
      config = f'{path}:{arg}' if arg is not None else self.config
      swept = ({'arg': arg} if arg is not None else {}) | values
      name = trial_name(swept)
      if name in names:
        raise ValueError(f'Two trials of the sweep have the same values {swept}.')
      names.add(name)
      trials.append(Trial(name, config, {**self.fixed, **values}, swept))
    return trials


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
