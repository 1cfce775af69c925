"""Weight files read into tensors, without torch: which format a file is, and its arrays by name.

    .npz                          flat arrays named by flax scope paths (vision_transformer, big_vision)
    .pth .pt .bin                 a `torch.save`d state dict (torchfile.py: a restricted unpickler)
    .safetensors                  read and validated by the `safetensors` library

What the tensors mean is the families' business: `isojax.models.reader_for(format, tensors)` finds the family
that claims them.
"""

from __future__ import annotations

import math
import os
import zipfile

import ml_dtypes
import numpy as np

from isojax.models.convert import NPZ, TIMM
from isojax.weights import archive, torchfile

TORCH_SUFFIXES = ('.pth', '.bin', '.pt')
SUFFIXES = ('.npz', *TORCH_SUFFIXES, '.safetensors')


def read(path: str, allow_non_finite: bool = False) -> tuple[str, dict[str, np.ndarray]]:
  """(format, {name: array}) of the weight file at `path`; a broken file is one error naming it.

  A tensor holding NaN or inf is refused by name (a flipped exponent bit reads as a valid file);
  `allow_non_finite=True` accepts the rare file that means it."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'No pretrained weights at {path!r}.')
  if path.endswith('.npz'):
    file_format, tensors = NPZ, read_npz(path)
  elif path.endswith('.safetensors'):
    file_format, tensors = TIMM, torchfile.read_safetensors(path)
  elif path.endswith(TORCH_SUFFIXES):
    file_format, tensors = TIMM, torchfile.read_torch(path)
  else:
    raise ValueError(
      f'Cannot read pretrained weights from {path!r}: expected the workdir of an isojax run, '
      f'an official .npz, or a timm .pth/.bin/.pt/.safetensors file.'
    )
  if not allow_non_finite:
    _refuse_non_finite(path, tensors)
  return file_format, tensors


def _refuse_non_finite(path: str, tensors: dict[str, np.ndarray]) -> None:
  for name, value in tensors.items():
    if np.issubdtype(value.dtype, np.inexact) or value.dtype == ml_dtypes.bfloat16:
      bad = value.size - int(np.count_nonzero(np.isfinite(value)))
      if bad:
        raise ValueError(
          f'{path!r}: tensor {name!r} holds {bad} NaN or inf value(s) of {value.size}; the file is corrupt '
          f'(or, if it means them, load it with allow_non_finite=True).'
        )


def read_npz(path: str) -> dict[str, np.ndarray]:
  """Every array of an `.npz` archive (no pickled objects), each `.npy` header's shape and dtype checked
  against the bytes its member holds before the array is allocated."""
  try:
    with archive.open_checked(path) as npz:
      return {_array_name(info): _read_npy(npz, info) for info in npz.infolist()}
  except MemoryError:
    raise
  except Exception as e:  # whatever a damaged zip or header raises (zipfile, zlib, numpy's header parser)
    raise ValueError(f'Cannot read {path!r} as a .npz archive ({archive.cause(e)}); is the file complete?') from None


def _array_name(info: zipfile.ZipInfo) -> str:
  if not info.filename.endswith('.npy'):
    raise ValueError(f'member {info.filename!r} is not an .npy array')
  return info.filename[: -len('.npy')]


def _read_npy(npz: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
  """One `.npy` member: magic, header (numpy's own bounded parser), then exactly the bytes it declares."""
  with npz.open(info) as f:
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0), (3, 0)):
      raise ValueError(f'member {info.filename!r} is .npy format {version}; expected 1.0, 2.0 or 3.0')
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(f)
    if dtype.hasobject:
      raise ValueError(f'array {info.filename!r} holds Python objects (dtype {dtype}); refusing to unpickle them')
    declared = math.prod(shape) * dtype.itemsize
    present = info.file_size - f.tell()
    if declared != present:
      raise ValueError(
        f'array {info.filename!r} declares shape {shape} of {dtype} ({declared} bytes) but holds {present} bytes'
      )
    data = archive.read_exactly(f, declared, f'array {info.filename!r}')
  return np.frombuffer(data, dtype).reshape(shape, order='F' if fortran_order else 'C').copy()
