"""Split sizes, class counts and channels of common TFDS datasets, as the TFDS catalog publishes them.

Lets `--dry_run` plan an ImageNet or CIFAR run on a machine that has not downloaded the data.
A prepared dataset's own metadata always wins over this table.
"""

from __future__ import annotations

import types
from typing import Optional

import tensorflow_datasets as tfds

# name: (num_classes, channels, {split: examples}) from the TFDS catalog pages.
DATASETS = {
  'imagenet2012': (1000, 3, {'train': 1_281_167, 'validation': 50_000}),
  'imagenet2012_real': (1000, 3, {'validation': 50_000}),
  'imagenet_v2': (1000, 3, {'test': 10_000}),
  'cifar10': (10, 3, {'train': 50_000, 'test': 10_000}),
  'cifar100': (100, 3, {'train': 50_000, 'test': 10_000}),
  'oxford_iiit_pet': (37, 3, {'train': 3_680, 'test': 3_669}),
  'oxford_flowers102': (102, 3, {'train': 1_020, 'validation': 1_020, 'test': 6_149}),
}


def split_size(name: str, split: str) -> Optional[int]:
  """Examples in a TFDS split string ('train[:99%]', 'test+validation'), or None if unknown."""
  if name not in DATASETS:
    return None
  sizes = {k: types.SimpleNamespace(num_examples=v) for k, v in DATASETS[name][2].items()}
  try:
    parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(sizes)
  except (KeyError, ValueError, AssertionError):
    return None
  return sum((p.to if p.to is not None else sizes[p.splitname].num_examples) - (p.from_ or 0) for p in parts)
