"""An ImageNet-like JPEG image folder made offline from the photographs scikit-learn ships.

    python benchmarks/photo_folder.py --out=/tmp/photos                       # 5,000 + 500 images, ~350 MB
    python benchmarks/photo_folder.py --out=/tmp/tiny --per_class=4 --classes=2 --val_per_class=1

`sklearn.datasets.load_sample_images()` holds two 640x427 photographs (a temple in China, a
flower). Each image here is a random crop of one of them at a random scale (0.5-1.6x), mostly
landscape about 500x375 (a third portrait 375x500, sizes jittered +-15%, as ImageNet's are),
randomly flipped, with a random brightness and a per-class colour cast (so the classes are
learnable), saved as baseline JPEG, quality 90, 4:2:0 chroma subsampling (PIL's default, as
most cameras). Layout: OUT/train/class_XX/*.jpg and OUT/validation/class_XX/*.jpg, the
`image_folder` dataset of isojax and torchvision's ImageFolder alike. Deterministic in `seed`.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import numpy as np
from absl import flags

from isojax.core import command_line

if TYPE_CHECKING:
  from PIL import Image


def _sources() -> list[np.ndarray]:
  from sklearn.datasets import load_sample_images

  return [np.asarray(image) for image in load_sample_images().images]


def photo(sources: list[np.ndarray], label: int, classes: int, rng: np.random.Generator) -> Image.Image:
  """One ImageNet-sized photograph of class `label`."""
  from PIL import Image

  width, height = (375, 500) if rng.random() < 1 / 3 else (500, 375)
  width, height = (int(round(v * rng.uniform(0.85, 1.15))) for v in (width, height))
  source = sources[rng.integers(len(sources))]
  # Large enough to cut width x height from: at least the crop, at most 1.6x the photograph.
  need = max(width / source.shape[1], height / source.shape[0])
  scale = max(need, rng.uniform(0.5, 1.6))
  scaled = Image.fromarray(source).resize(
    (int(np.ceil(source.shape[1] * scale)), int(np.ceil(source.shape[0] * scale))), Image.BILINEAR
  )
  left = rng.integers(scaled.width - width + 1)
  top = rng.integers(scaled.height - height + 1)
  image = scaled.crop((left, top, left + width, top + height))
  if rng.random() < 0.5:
    image = image.transpose(Image.FLIP_LEFT_RIGHT)
  hue = 2 * np.pi * label / classes
  cast = 1 + 0.25 * np.cos(hue + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]))
  pixels = np.asarray(image, np.float32) * cast * rng.uniform(0.7, 1.3)
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make(
  out: str, per_class: int = 500, classes: int = 10, val_per_class: int = 50, seed: int = 0, quality: int = 90
) -> dict:
  """Writes the folder (skipping files already there) and returns its counts and size on disk."""
  sources = _sources()
  total_bytes = 0
  counts = {}
  for split, count in (('train', per_class), ('validation', val_per_class)):
    counts[split] = 0
    for label in range(classes):
      class_dir = os.path.join(out, split, f'class_{label:02d}')
      os.makedirs(class_dir, exist_ok=True)
      for i in range(count):
        path = os.path.join(class_dir, f'{split}_{label:02d}_{i:05d}.jpg')
        if not os.path.exists(path):
          rng = np.random.default_rng([seed, split == 'train', label, i])
          photo(sources, label, classes, rng).save(path, quality=quality)
        total_bytes += os.path.getsize(path)
        counts[split] += 1
  return {'path': out, **counts, 'classes': classes, 'bytes': total_bytes}


FLAGS = flags.FlagValues()
flags.DEFINE_string('out', None, 'The folder to write (files already there are kept).', flag_values=FLAGS)
flags.DEFINE_integer('per_class', 500, 'Training images per class.', flag_values=FLAGS)
flags.DEFINE_integer('val_per_class', 50, 'Validation images per class.', flag_values=FLAGS)
flags.DEFINE_integer('classes', 10, 'Classes.', flag_values=FLAGS)
flags.DEFINE_integer('seed', 0, 'The seed of every image.', flag_values=FLAGS)
flags.DEFINE_integer('quality', 90, 'JPEG quality.', flag_values=FLAGS)
flags.mark_flag_as_required('out', flag_values=FLAGS)


@command_line.command
def main(argv=None) -> int:
  command_line.parse(FLAGS, argv, __doc__)
  args = FLAGS
  made = make(args.out, args.per_class, args.classes, args.val_per_class, args.seed, args.quality)
  print(
    f'{made["train"]} training and {made["validation"]} validation images in {made["classes"]} classes, '
    f'{made["bytes"] / 2**20:.0f} MiB on disk: {made["path"]}'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
