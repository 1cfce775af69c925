"""Weight files read into tensors, without torch: which format a file is, and its arrays by name.

    .npz                          flat arrays named by flax scope paths (vision_transformer, big_vision)
    .pth .pt .bin                 a `torch.save`d state dict (torchfile.py: a restricted unpickler)
    .safetensors                  read and validated by the `safetensors` library

What the tensors mean is the families' business: `isojax.models.reader_for(format, tensors)` finds the family
that claims them.
"""

from __future__ import annotations

import os

import numpy as np

from isojax.models.convert import NPZ, TIMM
from isojax.weights import torchfile

TORCH_SUFFIXES = ('.pth', '.bin', '.pt')
SUFFIXES = ('.npz', *TORCH_SUFFIXES, '.safetensors')


def read(path: str) -> tuple[str, dict[str, np.ndarray]]:
  """(format, {name: array}) of the weight file at `path`; a broken file is one error naming it."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'No pretrained weights at {path!r}.')
  if path.endswith('.npz'):
    return NPZ, read_npz(path)
  if path.endswith('.safetensors'):
    return TIMM, torchfile.read_safetensors(path)
  if path.endswith(TORCH_SUFFIXES):
    return TIMM, torchfile.read_torch(path)
  raise ValueError(
    f'Cannot read pretrained weights from {path!r}: expected the workdir of an isojax run, '
    f'an official .npz, or a timm .pth/.bin/.pt/.safetensors file.'
  )


def read_npz(path: str) -> dict[str, np.ndarray]:
  """Every array of an `.npz` archive (no pickled objects)."""
  try:
    with np.load(path, allow_pickle=False) as archive:
      return {k: archive[k] for k in archive.files}
  except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError, OSError: a broken file
    raise ValueError(
      f'Cannot read {path!r} as a .npz archive ({type(e).__name__}: {e}); is the file complete?'
    ) from None
