"""Reading PyTorch state dicts (`.pth`, `.bin`, `.safetensors`) into numpy, without torch.

`torch.save` writes a zip holding a pickle whose tensors point at raw storages in the same
zip; a restricted unpickler rebuilds them as numpy arrays, checking every tensor's declared
offset, shape and strides against the bytes its storage really holds (no read past the end).
`.safetensors` files are read by the `safetensors` library's numpy API, which validates them.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict

import ml_dtypes
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

_STORAGE_DTYPES = {
  'FloatStorage': np.float32,
  'DoubleStorage': np.float64,
  'HalfStorage': np.float16,
  'BFloat16Storage': ml_dtypes.bfloat16,
  'LongStorage': np.int64,
  'IntStorage': np.int32,
  'ShortStorage': np.int16,
  'CharStorage': np.int8,
  'ByteStorage': np.uint8,
  'BoolStorage': np.bool_,
}


class _StorageType:
  def __init__(self, dtype):
    self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *unused):
  size, stride = tuple(size), tuple(stride)
  if offset < 0 or len(size) != len(stride) or any(n < 0 for n in size) or any(s < 0 for s in stride):
    raise pickle.UnpicklingError(f'A tensor declares offset {offset}, shape {size}, strides {stride}: not a tensor.')
  last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
  if last >= storage.size:
    raise pickle.UnpicklingError(
      f'A tensor of shape {size} (offset {offset}, strides {stride}) reaches element '
      f'{last}, but its storage holds {storage.size}; the file is corrupt.'
    )
  itemsize = storage.dtype.itemsize
  return np.lib.stride_tricks.as_strided(
    storage[offset:], shape=size, strides=tuple(s * itemsize for s in stride)
  ).copy()


def _rebuild_parameter(data, *unused):
  return data


class _Unpickler(pickle.Unpickler):
  """Only what a state dict needs: tensors, parameters, ordered dicts."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive, self._prefix = archive, prefix

  def find_class(self, module, name):
    if module == 'torch._utils' and name == '_rebuild_tensor_v2':
      return _rebuild_tensor
    if module == 'torch._utils' and name == '_rebuild_parameter':
      return _rebuild_parameter
    if module == 'torch' and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    if module == 'collections' and name == 'OrderedDict':
      return OrderedDict
    raise pickle.UnpicklingError(f'Refusing to load {module}.{name} from a state dict.')

  def persistent_load(self, saved_id):
    _, storage_type, key, _, numel = saved_id
    raw = self._archive.read(f'{self._prefix}/data/{key}')
    itemsize = np.dtype(storage_type.dtype).itemsize
    if numel < 0 or numel * itemsize > len(raw):
      raise pickle.UnpicklingError(
        f'Storage {key!r} declares {numel} elements of {itemsize} bytes, but holds '
        f'{len(raw)} bytes; the file is corrupt.'
      )
    return np.frombuffer(raw, dtype=storage_type.dtype, count=numel)


def read_torch(path: str) -> dict[str, np.ndarray]:
  """A `torch.save`d state dict (zip format, torch >= 1.6) as {name: array}."""
  try:
    with zipfile.ZipFile(path) as archive:
      pickle_name = next(n for n in archive.namelist() if n.endswith('data.pkl'))
      prefix = pickle_name[: -len('/data.pkl')]
      with archive.open(pickle_name) as f:
        state = _Unpickler(f, archive, prefix).load()
  except (zipfile.BadZipFile, StopIteration, EOFError, KeyError, pickle.UnpicklingError, ValueError) as e:
    raise ValueError(
      f'Cannot read {path!r} as a torch.save zip archive ({type(e).__name__}: {e}); is the file complete?'
    ) from None
  if isinstance(state, dict) and 'state_dict' in state:
    state = state['state_dict']
  if isinstance(state, dict) and 'model' in state and isinstance(state['model'], dict):
    state = state['model']
  return {k: np.asarray(v) for k, v in state.items() if isinstance(v, np.ndarray)}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """A `.safetensors` file as {name: array}, read and validated by the safetensors library."""
  try:
    return load_file(path)
  except (SafetensorError, ValueError, OSError) as e:
    raise ValueError(f'Cannot read {path!r} as safetensors ({type(e).__name__}: {e}); is the file complete?') from None
