"""Writes tests/data/torchvision/: torchvision's own RandAugment ops and ColorJitter adjustments on PIL
images, and timm's RandomErasing boxes, for tests/test_augmentation_fidelity.py to check isojax against
without torch.

Run in a venv with torch, torchvision and timm (not isojax dependencies), from the repository root:

    python tests/reference/make_torchvision_fixtures.py

Made with torch 2.14.1, torchvision 0.29.1, timm 1.0.31, Pillow 12+.
"""

import json
import os
import random
import sys

import numpy as np
import timm
import torch
import torchvision
from PIL import Image
from timm.data.random_erasing import RandomErasing
from torchvision.transforms import InterpolationMode, autoaugment
from torchvision.transforms import functional as F

OUT = os.path.join('tests', 'data', 'torchvision')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from augmentation_images import make_images  # noqa: E402  (the images the test uses)

BINS = (0, 9, 15, 30)
FACTORS = (0.0, 0.6, 0.9, 1.3, 1.9)


def randaugment_ops(images):
  """Each op of RandAugment(num_magnitude_bins=31) at each bin and sign, as RandAugment.forward calls
  _apply_op: magnitude = float(magnitudes[bin]), negated for a signed op, NEAREST, fill None."""
  out, magnitudes = {}, {}
  for k, image in enumerate(images):
    h, w = image.shape[:2]
    space = autoaugment.RandAugment()._augmentation_space(31, (h, w))
    for name, (values, signed) in space.items():
      for level in BINS:
        for sign in (1, -1) if signed else (1,):
          magnitude = float(values[level].item()) if values.ndim > 0 else 0.0
          magnitude = -magnitude if sign < 0 else magnitude
          result = autoaugment._apply_op(Image.fromarray(image), name, magnitude, InterpolationMode.NEAREST, None)
          out[f'{k}/{name}/{level}/{sign}'] = np.asarray(result)
          magnitudes[f'{k}/{name}/{level}/{sign}'] = magnitude
  return out, magnitudes


def color_jitter(images):
  """ColorJitter's three adjustments on PIL images (F.adjust_brightness/contrast/saturation) at fixed factors."""
  out = {}
  for k, image in enumerate(images):
    for factor in FACTORS:
      for name, fn in (
        ('brightness', F.adjust_brightness),
        ('contrast', F.adjust_contrast),
        ('saturation', F.adjust_saturation),
      ):
        out[f'{k}/{name}/{factor}'] = np.asarray(fn(Image.fromarray(image), factor))
  return out


def erasing_boxes(shape=(3, 24, 40), draws=4000, **kwargs):
  """timm RandomErasing(probability=1, mode='const') on ones: each draw's erased box (top, left, h, w), or
  -1s where all 10 attempts failed."""
  random.seed(0)
  torch.manual_seed(0)
  erase = RandomErasing(probability=1.0, mode='const', device='cpu', **kwargs)
  boxes = []
  for _ in range(draws):
    zeros = erase(torch.ones(shape))[0] == 0
    rows, cols = torch.nonzero(zeros.any(1)).ravel(), torch.nonzero(zeros.any(0)).ravel()
    boxes.append([-1] * 4 if len(rows) == 0 else [rows.min(), cols.min(), len(rows), len(cols)])
  return np.asarray(boxes, np.int32)


def torchvision_erasing_boxes(shape=(3, 24, 40), draws=4000):
  """torchvision RandomErasing.get_params(scale=(0.02, 0.33), ratio=(0.3, 3.3), value=[0]): (top, left, h, w),
  or -1s where all 10 attempts failed (it then returns the whole image, unerased)."""
  torch.manual_seed(0)
  erase = torchvision.transforms.RandomErasing(p=1.0)
  boxes = []
  for _ in range(draws):
    top, left, h, w, value = erase.get_params(torch.ones(shape), erase.scale, erase.ratio, [0])
    boxes.append([-1] * 4 if (h, w) == shape[1:] else [top, left, h, w])
  return np.asarray(boxes, np.int32)


def main():
  os.makedirs(OUT, exist_ok=True)
  images = make_images()
  ops, magnitudes = randaugment_ops(images)
  np.savez_compressed(os.path.join(OUT, 'randaugment.npz'), **{k.replace('/', '|'): v for k, v in ops.items()})
  np.savez_compressed(
    os.path.join(OUT, 'color_jitter.npz'), **{k.replace('/', '|'): v for k, v in color_jitter(images).items()}
  )
  np.savez_compressed(
    os.path.join(OUT, 'random_erasing.npz'),
    default=erasing_boxes(),
    large=erasing_boxes(min_area=0.3, max_area=0.9),
    torchvision=torchvision_erasing_boxes(),
  )
  versions = {
    'torch': torch.__version__,
    'torchvision': torchvision.__version__,
    'timm': timm.__version__,
    'PIL': Image.__version__,
  }
  with open(os.path.join(OUT, 'meta.json'), 'w') as f:
    json.dump({'versions': versions, 'magnitudes': magnitudes, 'bins': BINS, 'factors': FACTORS}, f, indent=1)


if __name__ == '__main__':
  main()
