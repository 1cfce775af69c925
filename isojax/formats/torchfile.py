"""Reading PyTorch state dicts (`.pth`, `.bin`, `.safetensors`) into numpy, without torch.

`torch.save` writes a zip holding a pickle whose tensors point at raw storages in the same
zip; a restricted unpickler rebuilds them as numpy arrays. `.safetensors` is a JSON header
followed by raw little-endian arrays.
"""
from __future__ import annotations

import json
import pickle
import struct
import zipfile
from collections import OrderedDict

import ml_dtypes
import numpy as np

_STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}
_SAFETENSORS_DTYPES = {
    'F32': np.float32, 'F64': np.float64, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
    'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_,
}


class _StorageType:
  def __init__(self, dtype):
    self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *unused):
  itemsize = storage.dtype.itemsize
  return np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride)).copy()


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
    return np.frombuffer(raw, dtype=storage_type.dtype, count=numel)


def read_torch(path: str) -> dict[str, np.ndarray]:
  """A `torch.save`d state dict (zip format, torch >= 1.6) as {name: array}."""
  try:
    with zipfile.ZipFile(path) as archive:
      pickle_name = next(n for n in archive.namelist() if n.endswith('data.pkl'))
      prefix = pickle_name[:-len('/data.pkl')]
      with archive.open(pickle_name) as f:
        state = _Unpickler(f, archive, prefix).load()
  except (zipfile.BadZipFile, StopIteration, EOFError, KeyError) as e:
    raise ValueError(f'Cannot read {path!r} as a torch.save zip archive ({type(e).__name__}: {e}); '
                     f'is the file complete?') from None
  if isinstance(state, dict) and 'state_dict' in state:
    state = state['state_dict']
  if isinstance(state, dict) and 'model' in state and isinstance(state['model'], dict):
    state = state['model']
  return {k: np.asarray(v) for k, v in state.items() if isinstance(v, np.ndarray)}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """A `.safetensors` file as {name: array}."""
  with open(path, 'rb') as f:
    blob = f.read()
  try:
    (header_size,) = struct.unpack('<Q', blob[:8])
    header = json.loads(blob[8:8 + header_size])
  except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'Cannot read {path!r} as safetensors ({type(e).__name__}); is the file complete?') from None
  data = memoryview(blob)[8 + header_size:]
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    start, end = info['data_offsets']
    if end > len(data):
      raise ValueError(f'{path!r} is truncated: {name!r} needs bytes up to {end}, the file has {len(data)}.')
    dtype = _SAFETENSORS_DTYPES[info['dtype']]
    out[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(info['shape']).copy()
  return out
