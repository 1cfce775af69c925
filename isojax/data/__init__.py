"""Input pipeline: TFDS datasets, preprocessing ops, the offline digits dataset."""

from isojax.data.input_pipeline import (
  DatasetInfo,
  describe,
  eval_batches,
  eval_steps,
  get_builder,
  num_examples,
  train_batches,
)
from isojax.data.preprocess import device_normalization

__all__ = [
  'DatasetInfo',
  'describe',
  'device_normalization',
  'eval_batches',
  'eval_steps',
  'get_builder',
  'num_examples',
  'train_batches',
]
