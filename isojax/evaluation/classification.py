"""Top-1, top-5 and loss over every example of a split, exactly once (padding masked out)."""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from isojax.training.parallel import AXIS  # the pmap axis shared with the train step


def batch_sums(logits: jax.Array, batch: dict, num_classes: int) -> dict:
  """Sums of correct predictions and loss over the real (mask=1) examples of the batch."""
  mask, labels = batch['mask'], batch['label']
  loss = optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, num_classes))
  top5 = jax.lax.top_k(logits, min(5, num_classes))[1]
  return {'count': mask.sum(), 'loss': (loss * mask).sum(),
          'correct': ((logits.argmax(-1) == labels) * mask).sum(),
          'correct_top5': ((top5 == labels[:, None]).any(-1) * mask).sum()}


def eval_sums(variables: dict, batch: dict, *, model: nn.Module, num_classes: int,
              axis_name: Optional[str] = AXIS) -> dict:
  """`batch_sums` of the model's logits, summed over devices."""
  sums = batch_sums(model.apply(variables, batch['image'], train=False), batch, num_classes)
  return jax.lax.psum(sums, axis_name) if axis_name is not None else sums


def metrics_from_sums(totals: dict, num_classes: int) -> dict:
  count = max(float(totals['count']), 1.0)
  metrics = {'accuracy': float(totals['correct']) / count, 'loss': float(totals['loss']) / count,
             'num_examples': float(totals['count'])}
  if num_classes > 5:   # with 5 classes or fewer, top-5 is always 100%
    metrics['top5'] = float(totals['correct_top5']) / count
  return metrics


def accumulate(totals: Optional[dict], sums: dict) -> dict:
  return sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
