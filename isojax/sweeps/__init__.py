"""Sweeps: a sweep file's axes and trials (`spec`), running them (`launcher`), their table and plots
(`results`). Sweep files import the spec's vocabulary from here: `from isojax.sweeps import Sweep, product`."""

from isojax.sweeps.spec import (
  Axis,
  Distribution,
  Sweep,
  Trial,
  choice,
  load,
  loguniform,
  product,
  sample,
  trial_name,
  uniform,
  zip_axes,
)

__all__ = [
  'Axis',
  'Distribution',
  'Sweep',
  'Trial',
  'choice',
  'load',
  'loguniform',
  'product',
  'sample',
  'trial_name',
  'uniform',
  'zip_axes',
]
