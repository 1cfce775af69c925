"""A run's evaluators: `config.evals` resolved against the training config, built, validated, and run.

    c.evals.val = classification_eval()                      # config.data's eval split, top-1/top-5/loss
    c.evals.train_probe = fewshot_eval(dataset='cifar100')   # big_vision's closed-form few-shot probe
    c.best_metric = 'val/accuracy'                           # which evaluator/metric picks the best checkpoint

A field an evaluator leaves unset (dataset, data_dir, split, pp, image_size, batch_size, every) comes from
the training config (`config.data.*`, `eval_batch_size`, `eval_every`); its loss is the run's (`config.loss`).
Adding a kind: an `Evaluator` subclass with `run(variables) -> dict` and one KINDS line.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import ml_collections
from jax.sharding import Mesh

from isojax.core import devices
from isojax.core.config import classification_eval
from isojax.evaluation.base import Evaluator
from isojax.evaluation.classification import ClassificationEvaluator
from isojax.evaluation.fewshot import FewshotEvaluator

KINDS: dict[str, type[Evaluator]] = {'classification': ClassificationEvaluator, 'fewshot': FewshotEvaluator}


def _inherit(config: ml_collections.ConfigDict, spec: ml_collections.ConfigDict) -> dict:
  """The evaluator's fields with the training config's values where it left them unset."""
  inherited = {
    'dataset': config.data.name,
    'data_dir': config.data.get('data_dir'),
    'split': config.data.eval_split,
    'pp': config.data.eval_pp,
    'image_size': config.data.image_size,
    'batch_size': config.eval_batch_size,
    'every': config.eval_every,
    'cache': config.data.cache,
    'download': config.data.get('download', True),
    'skip_bad_files': config.data.get('skip_bad_files', False),
    'loss': config.get('loss', 'softmax_xent'),
  }
  fields = spec.to_dict()
  return {**inherited, **{k: v for k, v in fields.items() if v is not None}}


def specs(config: ml_collections.ConfigDict) -> dict[str, dict]:
  """{name: resolved fields} of every evaluator of `config`."""
  # A run configured before named evaluators existed had one evaluation.
  evals = config.evals if 'evals' in config else {'val': classification_eval()}
  out = {}
  for name, spec in evals.items():
    if '/' in name:
      raise ValueError(f'Evaluator name {name!r} contains "/"; metrics are named <evaluator>/<metric>.')
    kind = spec.get('kind')
    if kind not in KINDS:
      raise ValueError(f'config.evals.{name}.kind={kind!r}; expected one of {sorted(KINDS)}.')
    out[name] = _inherit(config, spec)
  if not out:
    raise ValueError(
      'config.evals is empty; a run needs at least one evaluator (isojax.core.config.classification_eval()).'
    )
  return out


def best_metric(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """(evaluator, metric) that selects the best checkpoint (`config.best_metric`, higher is better)."""
  resolved = specs(config)
  first = next(iter(resolved))
  value = config.get('best_metric') or f'{first}/{KINDS[resolved[first]["kind"]].higher_is_better(resolved[first])[0]}'
  name, _, metric = value.partition('/')
  if name not in resolved:
    raise ValueError(f'config.best_metric={value!r} names no evaluator; evaluators: {sorted(resolved)}.')
  allowed = KINDS[resolved[name]['kind']].higher_is_better(resolved[name])
  if metric not in allowed:
    raise ValueError(
      f'config.best_metric={value!r}: {name!r} has no metric {metric!r} that improves upwards; '
      f'choose one of {[f"{name}/{m}" for m in allowed]}.'
    )
  return name, metric


def check_progress_metrics(config: ml_collections.ConfigDict) -> None:
  """Each `config.progress_metrics` entry names an evaluator and one of its metrics (a typo is not ignored)."""
  resolved = specs(config)
  choices = [
    f'{name}/{m}'
    for name, spec in resolved.items()
    for m in KINDS[spec['kind']].higher_is_better(spec) + KINDS[spec['kind']].lower_is_better(spec)
  ]
  for item in config.get('progress_metrics', ()):
    if item not in choices:
      raise ValueError(f'config.progress_metrics has {item!r}, which no evaluator reports; choose from {choices}.')


def create(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  num_classes: int,
  validate: bool = True,
  train_builder: Optional[Any] = None,
  mesh: Optional[Mesh] = None,
) -> dict[str, Evaluator]:
  """The evaluators of `config` for `model`, validated (datasets, splits, pp, features) unless told not to.

  Evaluators on the training data reuse `train_builder` (the dataset is opened, and an image folder checked,
  once). With `mesh` (the jit path), they run under jit on variables placed on it."""
  resolved = specs(config).items()
  evaluators = {name: KINDS[spec['kind']](name, spec, model, num_classes, mesh) for name, spec in resolved}
  training_data = (config.data.name, config.data.get('data_dir'), config.data.get('skip_bad_files', False))
  for evaluator in evaluators.values():
    if (
      train_builder is not None
      and (evaluator.spec['dataset'], evaluator.spec['data_dir'], evaluator.spec['skip_bad_files']) == training_data
    ):
      evaluator.share_builder(train_builder)
  if validate:
    for evaluator in evaluators.values():
      evaluator.validate()
    best_metric(config)
    check_progress_metrics(config)
  return evaluators


def evaluate(config: ml_collections.ConfigDict, model: nn.Module, variables: dict, num_classes: int) -> dict[str, dict]:
  """Every evaluator of `config` on host `variables`, on all local devices: {name: metrics}."""
  evaluators = create(config, model, num_classes)
  replicated = devices.replicate(variables)
  return {name: evaluator.evaluate(replicated) for name, evaluator in evaluators.items()}
