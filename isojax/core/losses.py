"""The classification losses, one definition for the train step and every evaluator.

big_vision/utils.py `softmax_xent` and `sigmoid_xent`: per example, summed over the classes (sigmoid treats
each class as its own binary problem: big_vision's Mixer and ViT recipes on ImageNet-21k). An evaluation's
`loss` is the run's training objective on one-hot labels, as big_vision passes `loss_name=config.loss` to its
classification evaluator (evaluators/classification.py).
"""

from __future__ import annotations

import jax
import optax

LOSSES = ('softmax_xent', 'sigmoid_xent')


def targets(labels: jax.Array, num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
  """One-hot targets of integer `labels`, smoothed towards the uniform distribution by `label_smoothing`."""
  one_hot = jax.nn.one_hot(labels, num_classes)
  return optax.smooth_labels(one_hot, label_smoothing) if label_smoothing else one_hot


def per_example(logits: jax.Array, targets: jax.Array, loss: str = 'softmax_xent') -> jax.Array:
  """The loss of each example ([batch]) for `targets` (one-hot, smoothed or mixed) under `loss`."""
  if loss == 'softmax_xent':
    return optax.softmax_cross_entropy(logits, targets)
  if loss == 'sigmoid_xent':
    return optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1)
  raise ValueError(f'Unknown loss {loss!r}; expected one of {LOSSES}.')
