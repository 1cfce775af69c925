"""Reading PyTorch state dicts (`.pth`, `.bin`, `.safetensors`) into numpy, without torch.

`torch.save` writes a zip holding a pickle whose tensors point at raw storages in the same
zip; a restricted unpickler rebuilds them as numpy arrays, checking every storage's declared size against
its zip member and every tensor's offset, shape and strides against its storage before anything is
allocated (archive.py checks the zip's own declared sizes): reading never allocates more than the file holds.
`.safetensors` files are read by the `safetensors` library's numpy API, which validates them.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from collections import OrderedDict
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from isojax.weights import archive as archive_lib

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

  def __call__(self, *args):
    raise pickle.UnpicklingError('the pickle calls a storage type; a state dict only names them')


def _ints(value: Any, what: str) -> tuple[int, ...]:
  if not isinstance(value, (tuple, list)) or not all(isinstance(n, int) for n in value):
    raise pickle.UnpicklingError(f'a tensor declares {what} {value!r}: not a tuple of ints')
  return tuple(value)


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """A tensor viewing `storage`, refused unless every element it declares lies inside the storage."""
  size, stride = _ints(size, 'shape'), _ints(stride, 'strides')
  if not isinstance(storage, np.ndarray) or not isinstance(offset, int):
    raise pickle.UnpicklingError(f'a tensor over {type(storage).__name__} at offset {offset!r}: not a tensor')
  if offset < 0 or len(size) != len(stride) or any(n < 0 for n in size) or any(s < 0 for s in stride):
    raise pickle.UnpicklingError(f'A tensor declares offset {offset}, shape {size}, strides {stride}: not a tensor.')
  last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
  if last >= storage.size:
    raise pickle.UnpicklingError(
      f'A tensor of shape {size} (offset {offset}, strides {stride}) reaches element '
      f'{last}, but its storage holds {storage.size}; the file is corrupt.'
    )
  if math.prod(size) > storage.size:  # strides of 0 repeat elements: the copy would outgrow the file
    raise pickle.UnpicklingError(
      f'A tensor of shape {size} (strides {stride}) has {math.prod(size)} elements, '
      f'more than its storage holds ({storage.size}).'
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
    """A storage: `numel` elements of its member, checked against the member's size before reading."""
    if not isinstance(saved_id, tuple) or len(saved_id) != 5:
      raise pickle.UnpicklingError(f'a storage reference {saved_id!r}: expected (storage, type, key, device, numel)')
    _, storage_type, key, _, numel = saved_id
    if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or not isinstance(key, str):
      raise pickle.UnpicklingError(f'a storage reference {saved_id!r}: not a storage')
    member = f'{self._prefix}/data/{key}'
    try:
      info = self._archive.getinfo(member)
    except KeyError:
      raise pickle.UnpicklingError(f'storage {key!r} is referenced but the archive has no member {member!r}') from None
    itemsize = np.dtype(storage_type.dtype).itemsize
    if numel < 0 or numel * itemsize > info.file_size:
      raise pickle.UnpicklingError(
        f'Storage {key!r} declares {numel} elements of {itemsize} bytes, but holds '
        f'{info.file_size} bytes; the file is corrupt.'
      )
    with self._archive.open(info) as f:
      raw = archive_lib.read_exactly(f, numel * itemsize, f'storage {key!r}')
    return np.frombuffer(raw, dtype=storage_type.dtype, count=numel)


def read_torch(path: str) -> dict[str, np.ndarray]:
  """A `torch.save`d state dict (zip format, torch >= 1.6) as {name: array}."""
  try:
    with archive_lib.open_checked(path) as archive:
      pickle_name = next((n for n in archive.namelist() if n.endswith('data.pkl')), None)
      if pickle_name is None:
        raise ValueError('the archive has no data.pkl')
      prefix = pickle_name[: -len('/data.pkl')]
      with archive.open(pickle_name) as f:
        state = _Unpickler(f, archive, prefix).load()
  except MemoryError:
    raise
  except Exception as e:  # whatever a damaged zip or pickle raises (zipfile, zlib, pickle, struct, ...)
    raise ValueError(
      f'Cannot read {path!r} as a torch.save zip archive ({archive_lib.cause(e)}); is the file complete?'
    ) from None
  return _state_dict(path, state)


def _state_dict(path: str, state: Any) -> dict[str, np.ndarray]:
  """The {name: array} of a loaded pickle (a state dict, or a checkpoint holding one as 'state_dict'/'model')."""
  if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
    state = state['state_dict']
  if isinstance(state, dict) and isinstance(state.get('model'), dict):
    state = state['model']
  if not isinstance(state, dict):
    raise ValueError(f'{path!r} holds a pickled {type(state).__name__}, not a state dict of tensors.')
  return {str(k): np.asarray(v) for k, v in state.items() if isinstance(v, np.ndarray)}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """A `.safetensors` file as {name: array}, read and validated by the safetensors library."""
  try:
    return load_file(path)
  except MemoryError:
    raise
  except (SafetensorError, Exception) as e:  # the library checks the header's offsets, shapes and dtypes
    raise ValueError(f'Cannot read {path!r} as safetensors ({archive_lib.cause(e)}); is the file complete?') from None
