"""Random weights both timm (in the fixture generator) and the tests (without torch) can rebuild.

A fixture that would be a large file (a 21M-parameter ConvMixer-768/32) is stored as its tensor
names and shapes plus timm's logits; `seeded_state` regenerates the exact weights from a seed,
and `write_safetensors` writes them as a timm checkpoint file for isojax to read.
"""

import json
import struct

import numpy as np

_DTYPES = {np.dtype(np.float32): 'F32', np.dtype(np.int64): 'I64'}


def seeded_state(shapes: dict, seed: int) -> dict:
  """{name: array} for timm's state-dict `shapes` ({name: [shape, dtype]}), in their order.

  Weights of rank >= 2 ~ N(0, 1/fan_in) (activations keep their scale through 32 blocks), norm
  scales 1 + N(0, 0.2^2), running variances 0.5 + |N(0, 0.2^2)|, everything else N(0, 0.2^2);
  integer tensors (BatchNorm's step counters) are zero.
  """
  rng = np.random.RandomState(seed)
  state = {}
  for name, (shape, dtype) in shapes.items():
    if dtype != 'float32':
      state[name] = np.zeros(shape, np.dtype(dtype))
      continue
    noise = rng.standard_normal(shape).astype(np.float32)
    if name.endswith('running_var'):
      value = 0.5 + 0.2 * np.abs(noise)
    elif name.endswith('.weight') and len(shape) == 1:
      value = 1.0 + 0.2 * noise
    elif len(shape) >= 2 and name.endswith('.weight'):
      value = noise / np.sqrt(np.prod(shape[1:]))
    else:
      value = 0.2 * noise
    state[name] = value.astype(np.float32)
  return state


def write_safetensors(path, state: dict) -> None:
  """`state` as a .safetensors file (the format's header: JSON of dtypes, shapes, byte offsets)."""
  header, offset, blobs = {}, 0, []
  for name, value in state.items():
    data = np.ascontiguousarray(value).tobytes()
    header[name] = {
      'dtype': _DTYPES[value.dtype],
      'shape': list(value.shape),
      'data_offsets': [offset, offset + len(data)],
    }
    offset += len(data)
    blobs.append(data)
  encoded = json.dumps(header).encode()
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(encoded)) + encoded)
    for blob in blobs:
      f.write(blob)
