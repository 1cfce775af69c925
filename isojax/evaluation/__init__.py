"""Evaluators: `config.evals` names several, each with its own data and schedule (big_vision style).

    c.evals.val = classification_eval()                      # config.data's eval split, top-1/top-5/loss
    c.evals.train_probe = fewshot_eval(dataset='cifar100')   # big_vision's closed-form few-shot probe
    c.best_metric = 'val/accuracy'                           # which evaluator/metric picks the best checkpoint

A field an evaluator leaves unset (dataset, data_dir, split, pp, image_size, batch_size, every)
comes from the training config (`config.data.*`, `eval_batch_size`, `eval_every`). Metrics go to
metrics.jsonl as `{"step", "split": "eval", "evaluator": name, ...}` and to TensorBoard as
`eval/<name>/<metric>`. Adding a kind: a class with `run(variables) -> dict` and one KINDS line.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from isojax import data
from isojax.training import parallel
from isojax.data import preprocess
from isojax.evaluation import classification, fewshot
from isojax.models import features as model_features


def _inherit(config: ml_collections.ConfigDict, spec: ml_collections.ConfigDict) -> dict:
  """The evaluator's fields with the training config's values where it left them unset."""
  inherited = {'dataset': config.data.name, 'data_dir': config.data.get('data_dir'), 'split': config.data.eval_split,
               'pp': config.data.eval_pp, 'image_size': config.data.image_size,
               'batch_size': config.eval_batch_size, 'every': config.eval_every, 'cache': config.data.cache,
               'download': config.data.get('download', True),
               'skip_bad_files': config.data.get('skip_bad_files', False)}
  fields = spec.to_dict()
  return {**inherited, **{k: v for k, v in fields.items() if v is not None}}


def specs(config: ml_collections.ConfigDict) -> dict[str, dict]:
  """{name: resolved fields} of every evaluator of `config`."""
  if 'evals' not in config:   # a run configured before named evaluators: its one evaluation
    from isojax.training.config_base import classification_eval
    evals = {'val': classification_eval()}
  else:
    evals = config.evals
  out = {}
  for name, spec in evals.items():
    if '/' in name:
      raise ValueError(f'Evaluator name {name!r} contains "/"; metrics are named <evaluator>/<metric>.')
    kind = spec.get('kind')
    if kind not in KINDS:
      raise ValueError(f'config.evals.{name}.kind={kind!r}; expected one of {sorted(KINDS)}.')
    out[name] = _inherit(config, spec)
  if not out:
    raise ValueError('config.evals is empty; a run needs at least one evaluator (config_base.classification_eval()).')
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
    raise ValueError(f'config.best_metric={value!r}: {name!r} has no metric {metric!r} that improves upwards; '
                     f'choose one of {[f"{name}/{m}" for m in allowed]}.')
  return name, metric


class Evaluator:
  """One named evaluator: its data, its pmapped function, its schedule."""
  kind = ''

  def __init__(self, name: str, spec: dict, model: nn.Module, num_classes: int):
    self.name, self.spec, self.model, self.train_classes = name, spec, model, num_classes
    self.every = int(spec['every'])
    self._builder = None

  @staticmethod
  def higher_is_better(spec: dict) -> list[str]:
    raise NotImplementedError

  def due(self, step: int, last: bool) -> bool:
    return last or (self.every > 0 and step % self.every == 0)

  def builder(self):
    if self._builder is None:
      self._builder = data.get_builder(self.spec['dataset'], self.spec['data_dir'], self.spec['download'],
                                       self.spec['skip_bad_files'])
    return self._builder

  def _check_split(self, split: str) -> None:
    try:
      count = data.num_examples(self.builder(), split)
    except Exception as e:  # tfds raises several types for unknown or malformed splits
      raise ValueError(f'Evaluator {self.name!r}: dataset {self.spec["dataset"]!r} has no split {split!r} '
                       f'(splits: {sorted(self.builder().info.splits)}; {type(e).__name__}).') from None
    if count == 0:
      raise ValueError(f'Evaluator {self.name!r}: split {split!r} of {self.spec["dataset"]!r} is empty.')

  def validate(self) -> None:
    """Dataset, splits and preprocessing exist: checked before training starts."""
    try:
      builder = self.builder()
    except ValueError as e:
      raise ValueError(f'Evaluator {self.name!r}: {e}') from None
    try:
      preprocess.build(self.spec['pp'], self.spec['image_size'], builder.info.features['image'].shape[-1])
    except ValueError as e:
      raise ValueError(f'Evaluator {self.name!r}: pp {self.spec["pp"]!r}: {e}') from None
    if self.spec['batch_size'] % jax.device_count():
      raise ValueError(f'Evaluator {self.name!r}: batch_size={self.spec["batch_size"]} is not divisible by the '
                       f'{jax.device_count()} devices.')

  def batches(self, split: str):
    return parallel.prefetch(data.eval_batches(
        self.builder(), split=split, pp=self.spec['pp'], image_size=self.spec['image_size'],
        per_device_batch=self.spec['batch_size'] // jax.device_count(), **parallel.data_host(),
        cache=self.spec['cache']))

  def compile(self, variables: Any) -> None:
    """Compiles the pmapped function ahead of time (processes then start evaluating together)."""
    channels = self.builder().info.features['image'].shape[-1]
    size, shape = self.spec['image_size'], (jax.local_device_count(), self.spec['batch_size'] // jax.device_count())
    self._fn.lower(variables, parallel.shard({
        'image': np.zeros((*shape, size, size, channels), np.float32), 'label': np.zeros(shape, np.int32),
        'mask': np.zeros(shape, np.float32)})).compile()

  def run(self, variables: Any) -> dict:
    """Metrics for `variables` (replicated over the local devices, as pmap holds them)."""
    raise NotImplementedError

  def evaluate(self, variables: Any, step: Optional[int] = None) -> dict:
    """`run`, with a failure raised as one error naming this evaluator (and the step, in training)."""
    try:
      return self.run(variables)
    except Exception as e:
      at = f' at step {step}' if step is not None else ''
      raise RuntimeError(f'Evaluator {self.name!r} ({self.kind}) failed{at}: {type(e).__name__}: {e}') from e


class ClassificationEvaluator(Evaluator):
  kind = 'classification'

  @staticmethod
  def higher_is_better(spec: dict) -> list[str]:
    return ['accuracy', 'top5']

  def __init__(self, name, spec, model, num_classes):
    super().__init__(name, spec, model, num_classes)
    self._fn = jax.pmap(functools.partial(classification.eval_sums, model=model, num_classes=num_classes),
                        axis_name=classification.AXIS)

  def validate(self) -> None:
    super().validate()
    self._check_split(self.spec['split'])
    classes = self.builder().info.features['label'].num_classes
    if classes != self.train_classes:
      raise ValueError(f'Evaluator {self.name!r}: {self.spec["dataset"]!r} has {classes} classes, the model '
                       f'{self.train_classes}; classification needs the same label space (use kind="fewshot").')

  def run(self, variables):
    start, totals = time.perf_counter(), None
    for batch in self.batches(self.spec['split']):
      totals = classification.accumulate(totals, self._fn(variables, batch))
    metrics = classification.metrics_from_sums(parallel.unreplicate(totals), self.train_classes)
    # end to end, input pipeline included: inference speed as a user of this evaluator sees it
    metrics['images_per_sec'] = metrics['num_examples'] / max(time.perf_counter() - start, 1e-9)
    return metrics


def _gather(x: jax.Array) -> np.ndarray:
  """pmap output [devices, batch, ...] -> every process's rows on every process, [rows, ...]."""
  local = np.concatenate([np.asarray(s.data) for s in x.addressable_shards], axis=0)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    local = np.asarray(multihost_utils.process_allgather(local, tiled=True))
  return local.reshape(-1, *local.shape[2:])


class FewshotEvaluator(Evaluator):
  kind = 'fewshot'

  @staticmethod
  def higher_is_better(spec: dict) -> list[str]:
    return [f'{k}shot' for k in spec['shots']]

  def __init__(self, name, spec, model, num_classes):
    super().__init__(name, spec, model, num_classes)
    feature = spec['feature']

    def represent(variables, batch):
      _, found = model_features(model, variables, batch['image'])
      return found[feature].reshape(batch['image'].shape[0], -1), batch['label'], batch['mask']
    self._fn = jax.pmap(represent, axis_name=classification.AXIS)

  def validate(self) -> None:
    super().validate()
    for split in (self.spec['train_split'], self.spec['test_split']):
      self._check_split(split)
    channels = self.builder().info.features['image'].shape[-1]
    size = self.spec['image_size']
    # The feature must exist: trace the model once (no compute) and list what it offers.
    variables = jax.eval_shape(lambda: self.model.init(jax.random.PRNGKey(0), np.zeros((1, size, size, channels),
                                                                                      np.float32), train=False))
    _, found = jax.eval_shape(lambda v: model_features(self.model, v, np.zeros((1, size, size, channels),
                                                                               np.float32)), variables)
    if self.spec['feature'] not in found:
      raise ValueError(f'Evaluator {self.name!r}: the model has no feature {self.spec["feature"]!r}; '
                       f'features: {sorted(found)}.')

  def _represent(self, variables: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    feats, labels, masks = [], [], []
    for batch in self.batches(split):
      f, y, m = self._fn(variables, batch)
      feats.append(_gather(f))
      labels.append(_gather(y))
      masks.append(_gather(m))
    keep = np.concatenate(masks) > 0
    return np.concatenate(feats)[keep], np.concatenate(labels)[keep]

  def run(self, variables):
    train_x, train_y = self._represent(variables, self.spec['train_split'])
    test_x, test_y = self._represent(variables, self.spec['test_split'])
    num_classes = self.builder().info.features['label'].num_classes
    return fewshot.fewshot_metrics(train_x, train_y, test_x, test_y, num_classes, shots=self.spec['shots'],
                                   seeds=self.spec['seeds'], l2_reg=self.spec['l2_reg'])


KINDS = {'classification': ClassificationEvaluator, 'fewshot': FewshotEvaluator}


def create(config: ml_collections.ConfigDict, model: nn.Module, num_classes: int, validate: bool = True,
           train_builder: Optional[Any] = None) -> dict[str, Evaluator]:
  """The evaluators of `config` for `model`, validated (datasets, splits, pp, features) unless told not to.

  Evaluators on the training data reuse `train_builder` (the dataset is opened, and an image
  folder checked, once)."""
  evaluators = {name: KINDS[spec['kind']](name, spec, model, num_classes) for name, spec in specs(config).items()}
  training_data = (config.data.name, config.data.get('data_dir'), config.data.get('skip_bad_files', False))
  for evaluator in evaluators.values():
    if train_builder is not None and (evaluator.spec['dataset'], evaluator.spec['data_dir'],
                                      evaluator.spec['skip_bad_files']) == training_data:
      evaluator._builder = train_builder
  if validate:
    for evaluator in evaluators.values():
      evaluator.validate()
    best_metric(config)
  return evaluators


def evaluate(config: ml_collections.ConfigDict, model: nn.Module, variables: dict,
             num_classes: int) -> dict[str, dict]:
  """Every evaluator of `config` on host `variables`, on all local devices: {name: metrics}."""
  evaluators = create(config, model, num_classes)
  replicated = parallel.replicate(variables)
  return {name: evaluator.evaluate(replicated) for name, evaluator in evaluators.items()}


def table(results: dict[str, dict]) -> str:
  """A Markdown table: evaluator | metric | value (accuracies in %)."""
  lines = ['| evaluator | metric | value |', '|---|---|---|']
  for name, metrics in results.items():
    for metric, value in metrics.items():
      if isinstance(value, list):
        continue
      shown = (f'{value:.4f}' if metric == 'loss' else f'{value:.0f}' if metric in ('num_examples', 'images_per_sec')
               else f'{100 * value:.2f}%')
      lines.append(f'| {name} | {metric} | {shown} |')
  return '\n'.join(lines)


def _headline(metrics: dict) -> list[str]:
  """What an evaluator shows first: top-1/top-5/loss, or its few-shot accuracies."""
  shown = [m for m in ('accuracy', 'top5', 'loss') if m in metrics]
  return shown or [m for m in metrics if m.endswith('shot')]


def display(results: dict[str, dict], primary: str, chosen: Optional[list[str]] = None) -> str:
  """`accuracy 98.61% top5 100.00% loss 0.1317 | fewshot 10shot 94.71%`: the primary evaluator's
  headline unprefixed, then `chosen` ('name/metric'; by default each other evaluator's accuracy or 10-shot)."""
  def fmt(metric, value):
    return f'{metric} {value:.4f}' if metric == 'loss' else f'{metric} {100 * value:.2f}%'
  segments = []
  if primary in results:
    segments.append(' '.join(fmt(m, results[primary][m]) for m in _headline(results[primary])))
  if chosen is None:
    chosen = [f'{name}/{next((m for m in ("accuracy", "10shot", "5shot", "1shot") if m in r), "")}'
              for name, r in results.items() if name != primary]
  for item in chosen:
    name, _, metric = item.partition('/')
    if metric in results.get(name, {}) and not (name == primary and metric in _headline(results[name])):
      segments.append(f'{name} {fmt(metric, results[name][metric])}')
  return ' | '.join(segments)
