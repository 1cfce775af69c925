"""Config values that cannot be right, refused before anything is compiled or downloaded.

Each refusal names the field, its value and what is allowed. Called by `isojax.main`, `--dry_run`,
`isojax.core.loading.load` callers and sweeps (before any trial starts). Whether the model name exists is the
model layer's to say (`isojax.models.resolve`), whether the evaluators' data exists the evaluation layer's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import ml_collections

from isojax.core.config import (
  DTYPES,
  ERASING_FILLS,
  KERNELS,
  LOSSES,
  OPTIMIZERS,
  PARALLELISMS,
  REMAT_POLICIES,
  SCHEDULES,
  WEIGHT_DECAY_MODES,
)


class ConfigError(ValueError):
  """A config value that cannot be right, named with what is allowed; commands print it as a usage error
  (one line, exit code 2), wherever it is found: here, in the model layer, or when the dataset is opened."""


Rule = tuple[str, Callable[[Any], bool], str]  # (dotted field, test of its value, what is allowed)


def _positive(v) -> bool:
  return v > 0 and math.isfinite(v)


def _at_least_one(v) -> bool:
  return isinstance(v, int) and v >= 1


def _non_negative(v) -> bool:
  return v >= 0 and v == v


def _fraction(v) -> bool:
  return 0 <= v < 1


def _one_of(choices: tuple) -> Callable[[Any], bool]:
  return lambda v: v in choices


_COUNTS: list[Rule] = [
  ('batch_size', _at_least_one, 'an integer >= 1'),
  ('eval_batch_size', _at_least_one, 'an integer >= 1'),
  ('grad_accum_steps', _at_least_one, 'an integer >= 1'),
  ('num_steps', lambda v: isinstance(v, int) and v >= 0, 'an integer >= 0; 0 means use num_epochs'),
  ('log_every', _at_least_one, 'an integer >= 1 (steps between train log lines)'),
  ('eval_every', _at_least_one, 'an integer >= 1 (steps between evaluations; the last step always evaluates)'),
  ('checkpoint.every', _at_least_one, 'an integer >= 1 (steps between checkpoints)'),
  ('checkpoint.keep', _at_least_one, 'an integer >= 1'),
  ('data.image_size', _at_least_one, 'an integer >= 1 (pixels)'),
  ('data.shuffle_buffer', _at_least_one, 'an integer >= 1'),
]
_CHOICES: list[Rule] = [
  ('model.name', lambda v: isinstance(v, str) and bool(v.strip()), "a model name such as 'ViT-S/16'"),
  ('dtype', _one_of(DTYPES), f'one of {DTYPES}'),
  ('loss', _one_of(LOSSES), f'one of {LOSSES}'),
  ('kernels', _one_of(KERNELS), f'one of {KERNELS}'),
  ('remat_policy', _one_of(REMAT_POLICIES), f'one of {REMAT_POLICIES} (jax.checkpoint_policies)'),
  ('parallelism', _one_of(PARALLELISMS), f'one of {PARALLELISMS}'),
  ('mesh', lambda v: isinstance(v, str) and bool(v.strip()), "axis sizes such as 'data:-1' or 'data:2,fsdp:4'"),
  (
    'sharding_strategy',
    lambda v: all(len(rule) == 2 and all(isinstance(part, str) for part in rule) for rule in v),
    "(regex, tactic) pairs, e.g. (('.*', 'fsdp(min_size_mb=4)'),); () for the mesh's default",
  ),
  ('optimizer.name', _one_of(OPTIMIZERS), f'one of {OPTIMIZERS}'),
  ('optimizer.weight_decay_mode', _one_of(WEIGHT_DECAY_MODES), f'one of {WEIGHT_DECAY_MODES}'),
  ('optimizer.schedule', _one_of(SCHEDULES), f'one of {SCHEDULES}'),
  ('optimizer.mu_dtype', lambda v: v is None or v in DTYPES, f'None or one of {DTYPES}'),
  ('random_erasing.fill', _one_of(ERASING_FILLS), f'one of {ERASING_FILLS}'),
]
_AMOUNTS: list[Rule] = [
  ('label_smoothing', _fraction, 'in [0, 1)'),
  ('ema_decay', _fraction, 'in [0, 1); 0 disables the EMA'),
  ('mixup.mixup_alpha', _non_negative, '>= 0; 0 disables mixup'),
  ('mixup.cutmix_alpha', _non_negative, '>= 0; 0 disables cutmix'),
  ('random_erasing.prob', lambda v: 0 <= v <= 1, 'in [0, 1]; 0 disables it'),
  ('random_erasing.area_min', lambda v: 0 < v <= 1, 'in (0, 1]'),
  ('random_erasing.area_max', lambda v: 0 < v <= 1, 'in (0, 1], at least area_min'),
  ('random_erasing.aspect_min', lambda v: 0 < v <= 1, 'in (0, 1] (the largest aspect is 1 / aspect_min)'),
  ('optimizer.lr', _positive, 'a finite learning rate > 0'),
  ('optimizer.weight_decay', _non_negative, '>= 0'),
  ('optimizer.clip_norm', _non_negative, '>= 0; 0 disables clipping'),
  ('optimizer.b1', _fraction, 'in [0, 1)'),
  ('optimizer.b2', _fraction, 'in [0, 1)'),
  ('optimizer.eps', _non_negative, '>= 0'),
  ('optimizer.momentum', _fraction, 'in [0, 1)'),
  ('optimizer.warmup_steps', lambda v: isinstance(v, int) and v >= 0, 'an integer >= 0'),
  ('optimizer.warmup_epochs', lambda v: v is None or v >= 0, '>= 0'),
  ('optimizer.warmup_fraction', lambda v: v is None or 0 <= v < 1, 'in [0, 1)'),
  ('optimizer.end_lr_factor', lambda v: 0 <= v <= 1, 'in [0, 1]'),
]
RULES: list[Rule] = _COUNTS + _CHOICES + _AMOUNTS


def _check(errors: list[str], config: ml_collections.ConfigDict, rule: Rule) -> None:
  field, ok, allowed = rule
  node: Any = config
  for key in field.split('.'):
    if node is None or key not in node:
      return  # an older or trimmed config: nothing to check
    node = node[key]
  try:
    good = ok(node)
  except TypeError:
    good = False
  if not good:
    errors.append(f'{field}={node!r} ({allowed})')


def validate(config: ml_collections.ConfigDict) -> None:
  """Refuses values that cannot be right, naming each field, its value and what is allowed."""
  errors: list[str] = []
  for rule in RULES:
    _check(errors, config, rule)
  epochs = config.get('num_epochs')
  if config.get('num_steps', 0) == 0 and not (isinstance(epochs, (int, float)) and epochs > 0):
    errors.append(f'num_epochs={epochs!r} (> 0, or set num_steps >= 1)')
  if errors:
    raise ConfigError('Invalid config value(s): ' + '; '.join(errors) + '.')
