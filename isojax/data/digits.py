"""scikit-learn's 1,797 8x8 handwritten digits as a TFDS dataset: the offline default.

Prepared locally on first use (scikit-learn ships the data), so the default run goes
through exactly the same TFDS code path as CIFAR-10 on a machine with no internet.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

NUM_TEST = 360  # a fixed, held-out 20% test split


class IsojaxDigits(tfds.core.GeneratorBasedBuilder):
  """Handwritten digits 0-9, 8x8 grey-scale, pixel values 0..16 scaled to 0..255."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'sklearn.datasets.load_digits, fixed 1437/360 split (seed 0).'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(8, 8, 1)),
          'label': tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
        }
      ),
      supervised_keys=('image', 'label'),
      homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset',
    )

  def _split_generators(self, dl_manager):
    from sklearn.datasets import load_digits  # heavy import, only when preparing

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    # RandomState's permutation is frozen across numpy versions: the split never moves.
    order = np.random.RandomState(0).permutation(len(labels))
    test, train = order[:NUM_TEST], order[NUM_TEST:]
    return {
      'train': self._generate_examples(images, labels, train),
      'test': self._generate_examples(images, labels, test),
    }

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {'image': images[i], 'label': labels[i]}
