"""Top-1, top-5 and loss over every example of a split, exactly once (padding masked out).

The loss is the run's training objective (`config.loss`, isojax/core/losses.py) on one-hot labels, as
big_vision's classification evaluator takes `loss_name` (big_vision/evaluators/classification.py).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from isojax.core import losses
from isojax.core.devices import AXIS  # the pmap axis shared with the train step
from isojax.evaluation.base import Evaluator


def batch_sums(logits: jax.Array, batch: dict, num_classes: int, loss: str = 'softmax_xent') -> dict:
  """Sums of correct predictions and loss over the real (mask=1) examples of the batch."""
  mask, labels = batch['mask'], batch['label']
  per_example = losses.per_example(logits, losses.targets(labels, num_classes), loss)
  top5 = jax.lax.top_k(logits, min(5, num_classes))[1]
  return {
    'count': mask.sum(),
    'loss': (per_example * mask).sum(),
    'correct': ((logits.argmax(-1) == labels) * mask).sum(),
    'correct_top5': ((top5 == labels[:, None]).any(-1) * mask).sum(),
  }


def eval_sums(
  variables: dict,
  batch: dict,
  *,
  model: nn.Module,
  num_classes: int,
  loss: str = 'softmax_xent',
  axis_name: Optional[str] = AXIS,
) -> dict:
  """`batch_sums` of the model's logits, summed over devices."""
  logits: Any = model.apply(variables, batch['image'], train=False)
  sums = batch_sums(logits, batch, num_classes, loss)
  return jax.lax.psum(sums, axis_name) if axis_name is not None else sums


def metrics_from_sums(totals: dict, num_classes: int) -> dict:
  count = max(float(totals['count']), 1.0)
  metrics = {
    'accuracy': float(totals['correct']) / count,
    'loss': float(totals['loss']) / count,
    'num_examples': float(totals['count']),
  }
  if num_classes > 5:  # with 5 classes or fewer, top-5 is always 100%
    metrics['top5'] = float(totals['correct_top5']) / count
  return metrics


def accumulate(totals: Optional[dict], sums: dict) -> dict:
  return sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)


class ClassificationEvaluator(Evaluator):
  kind = 'classification'

  @staticmethod
  def higher_is_better(spec: dict) -> list[str]:
    return ['accuracy', 'top5']

  @staticmethod
  def lower_is_better(spec: dict) -> list[str]:
    return ['loss']

  def __init__(self, name, spec, model, num_classes, mesh=None):
    super().__init__(name, spec, model, num_classes, mesh)
    sums = functools.partial(eval_sums, model=model, num_classes=num_classes, loss=spec['loss'])
    self.fn = self.parallel(functools.partial(sums, axis_name=self.axis_name))

  def validate(self) -> None:
    super().validate()
    self._check_split(self.spec['split'])
    classes = self.builder().info.features['label'].num_classes
    if classes != self.train_classes:
      raise ValueError(
        f'Evaluator {self.name!r}: {self.spec["dataset"]!r} has {classes} classes, the model '
        f'{self.train_classes}; classification needs the same label space (use kind="fewshot").'
      )

  def run(self, variables):
    start, totals = time.perf_counter(), None
    for batch in self.batches(self.spec['split']):
      totals = accumulate(totals, self.fn(variables, batch))
    metrics = metrics_from_sums(self.on_host(totals), self.train_classes)
    # end to end, input pipeline included: inference speed as a user of this evaluator sees it
    metrics['images_per_sec'] = metrics['num_examples'] / max(time.perf_counter() - start, 1e-9)
    return metrics
