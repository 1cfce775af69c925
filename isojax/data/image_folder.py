"""The user's own images, `DIR/<split>/<class>/<image>.{jpg,jpeg,png}`, checked before training.

tfds.ImageFolder reads them; before it does, every file is opened (PIL `verify`, which reads the
headers and checksums, not the pixels) so that an unreadable image fails with its path instead of
a bare "Input is empty" from inside tf.data, and an empty class folder (a class no example can
teach) is an error naming it. With `data.skip_bad_files=True` unreadable files are skipped and
counted in the log instead. Grayscale, RGB and RGBA files mix freely (decoded to the folder's
channels).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import tensorflow_datasets as tfds

EXTENSIONS = ('.jpg', '.jpeg', '.png')


def unreadable(path: str) -> Optional[str]:
  """Why the image at `path` cannot be decoded, or None."""
  if os.path.getsize(path) == 0:
    return 'an empty file'
  from PIL import Image

  try:
    with Image.open(path) as image:
      image.verify()
  except Exception as e:  # PIL raises many types for a file that is not an image
    return f'{type(e).__name__}: {e}'
  return None


def check(root: str) -> list[tuple[str, str]]:
  """(path, reason) of every unreadable image under `root`; an empty class folder raises."""
  bad = []
  for split in sorted(os.listdir(root)):
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      continue
    for label in sorted(os.listdir(split_dir)):
      class_dir = os.path.join(split_dir, label)
      if not os.path.isdir(class_dir):
        continue
      images = [f for f in sorted(os.listdir(class_dir)) if f.lower().endswith(EXTENSIONS)]
      if not images:
        raise ValueError(
          f'Class folder {class_dir} has no images ({", ".join(EXTENSIONS)}); add some or remove '
          f'the folder (an empty folder would be a class no example can teach).'
        )
      for name in images:
        reason = unreadable(os.path.join(class_dir, name))
        if reason:
          bad.append((os.path.join(class_dir, name), reason))
  return bad


def open_folder(root: str, skip_bad_files: bool = False) -> tfds.ImageFolder:
  """A tfds.ImageFolder over `root` after `check`; unreadable files fail (or, if told, are skipped)."""
  bad = check(root)
  if bad and not skip_bad_files:
    listed = '; '.join(f'{path} ({reason})' for path, reason in bad[:5])
    raise ValueError(
      f'{len(bad)} unreadable image file(s) under {root}: {listed}{" ..." if len(bad) > 5 else ""}. '
      f'Fix or remove them, or set data.skip_bad_files=True to skip them.'
    )
  builder = tfds.ImageFolder(root)
  builder.isojax_bad_files = tuple(path for path, _ in bad)  # the input pipeline leaves them out
  if bad:
    logging.warning(
      'Skipping %d unreadable image file(s) under %s (data.skip_bad_files=True): %s',
      len(bad),
      root,
      ', '.join(path for path, _ in bad[:10]),
    )
  return builder
