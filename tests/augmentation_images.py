"""The images the augmentation fidelity tests run every source's ops on (numpy only, so that
tests/reference/make_torchvision_fixtures.py makes its fixtures from the same pixels)."""

import numpy as np


def make_images():
  """Square and not: a smooth ramp with half its pixels noise, and a low-contrast image (every
  channel inside 40..199, so AutoContrast and Equalize change it)."""
  rng = np.random.default_rng(0)
  out = []
  for h, w in ((32, 32), (24, 40)):
    yy, xx = np.mgrid[:h, :w]
    ramp = np.stack([(xx * 7 + yy * 3) % 256, (yy * 11) % 256, (xx * 5 + 40) % 256], -1)
    out.append(np.where(rng.random((h, w, 1)) < 0.5, ramp, rng.integers(0, 256, (h, w, 3))).astype(np.uint8))
  out.append(rng.integers(40, 200, (20, 36, 3)).astype(np.uint8))
  return out
