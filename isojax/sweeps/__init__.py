"""Sweeps: a sweep file's axes, search and trials (`spec`), its Optuna study (`study`), the driver that runs
the trials (`launcher`), their table and plots (`results`). Sweep files import the spec's vocabulary from
here: `from isojax.sweeps import Sweep, choice, loguniform, product`."""

from isojax.sweeps.spec import (
  Axis,
  Distribution,
  Sweep,
  Trial,
  choice,
  intuniform,
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
  'intuniform',
  'load',
  'loguniform',
  'product',
  'sample',
  'trial_name',
  'uniform',
  'zip_axes',
]
