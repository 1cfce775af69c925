"""Seeded mutations of valid weight files, each read in a forked child with a memory limit and a timeout.

A fresh interpreter imports isojax once; every file is read in a fork of it (cheap, and a crash, a hang or a
runaway allocation stays in the child). A child reports one outcome: 'read' (the file still made sense), 'refused'
(a ValueError or FileNotFoundError naming the file), or a failure: 'crash' (a signal), 'hang' (past the
timeout), 'memory' (a MemoryError: more asked for than the limit allows) or 'other' (any other exception).
"""

from __future__ import annotations

import faulthandler
import functools
import importlib
import io
import json
import os
import pickle
import random
import re
import resource
import signal
import struct
import subprocess
import sys
import time
import traceback
import types
import warnings
import zipfile
from collections.abc import Callable, Iterator

import numpy as np

MUTATIONS = ('flip', 'truncate', 'delete', 'duplicate', 'tamper')
FAILURES = ('crash', 'hang', 'memory', 'other')
HUGE = (2**31 - 1, 2**32 - 1, 2**40, 2**62, 2**63 - 1, 10**12)


def _flip(data: bytes, rng: random.Random) -> bytes:
  out = bytearray(data)
  for _ in range(rng.randint(1, 8)):
    out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
  return bytes(out)


def _truncate(data: bytes, rng: random.Random) -> bytes:
  return data[: rng.randrange(len(data))]


def _delete(data: bytes, rng: random.Random) -> bytes:
  start = rng.randrange(len(data))
  return data[:start] + data[start + rng.randint(1, 256) :]


def _duplicate(data: bytes, rng: random.Random) -> bytes:
  start = rng.randrange(len(data))
  return data[:start] + data[start : start + rng.randint(1, 256)] * 2 + data[start + 256 :]


def _tamper(data: bytes, rng: random.Random) -> bytes:
  """A declared size, offset or shape made huge, zero or negative: a decimal number in a text header
  (an .npy header's shape, a safetensors header's offsets) or a little-endian integer field (zip sizes and
  offsets, a safetensors header length, pickled ints)."""
  numbers = [m.span() for m in re.finditer(rb'\d+', data)]
  if numbers and rng.random() < 0.5:
    start, end = rng.choice(numbers)
    value = str(rng.choice([*HUGE, 0, -1, rng.randint(0, 10**6)])).encode()
    return _same_length(data[:start] + value + data[end:], end + len(value) - (end - start), len(value) - (end - start))
  width = rng.choice((4, 8))
  where = rng.randrange(max(1, len(data) - width))
  value = rng.choice([*HUGE, 0, rng.randint(0, 2**20)]) % (1 << (8 * width))
  return data[:where] + struct.pack('<I' if width == 4 else '<Q', value) + data[where + width :]


def _same_length(data: bytes, after: int, grown: int) -> bytes:
  """`data` with `grown` padding spaces removed (or added) after `after`, so that a length-prefixed text
  header (an .npy header, a safetensors header) keeps its declared length and still parses."""
  pad = data.find(b' ' * max(grown, 1), after, after + 512)
  if pad < 0:
    return data
  return data[:pad] + data[pad + grown :] if grown > 0 else data[:pad] + b' ' * -grown + data[pad:]


_MUTATE: dict[str, Callable[[bytes, random.Random], bytes]] = {
  'flip': _flip,
  'truncate': _truncate,
  'delete': _delete,
  'duplicate': _duplicate,
  'tamper': _tamper,
}


def mutants(data: bytes, seed: int, count: int) -> Iterator[tuple[str, bytes]]:
  """`count` (mutation, bytes) pairs of `data`, the same for the same seed, cycling through every kind."""
  rng = random.Random(seed)
  for i in range(count):
    kind = MUTATIONS[i % len(MUTATIONS)]
    yield kind, _MUTATE[kind](data, rng)


def _limit_memory(extra_bytes: int) -> None:
  """Address space capped at what the child already maps plus `extra_bytes`: a larger allocation fails."""
  with open('/proc/self/status') as f:
    mapped = next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmSize:'))
  resource.setrlimit(resource.RLIMIT_AS, (mapped + extra_bytes, resource.RLIM_INFINITY))


def _child(read: Callable[[str], object], path: str, extra_bytes: int, report: str) -> None:
  faulthandler.disable()  # a crash is reported by the parent, not as a traceback on the test's stderr
  _limit_memory(extra_bytes)
  try:
    read(path)
    outcome = {'outcome': 'read'}
  except MemoryError as e:
    outcome = {'outcome': 'memory', 'message': f'MemoryError: {e}'}
  except (ValueError, FileNotFoundError) as e:
    outcome = {'outcome': 'refused', 'message': str(e)}
  except BaseException as e:  # noqa: BLE001 - the point is to report whatever escapes
    outcome = {'outcome': 'other', 'message': f'{type(e).__name__}: {e}', 'traceback': traceback.format_exc()[-1500:]}
  with open(report, 'w') as f:  # a file, not a pipe: a long message must not block the child
    json.dump(outcome, f)
  os._exit(0)


def read_in_child(
  read: Callable[[str], object], path: str, timeout_s: float = 20.0, extra_bytes: int = 512 * 2**20
) -> dict:
  """The outcome of `read(path)` in a forked child with `extra_bytes` of memory to spare and `timeout_s`."""
  report = f'{path}.outcome.json'
  with warnings.catch_warnings():  # the child only reads files: JAX's threads are never used there
    warnings.filterwarnings('ignore', message='os.fork', category=RuntimeWarning)
    pid = os.fork()
  if pid == 0:  # the child
    try:
      _child(read, path, extra_bytes, report)
    finally:
      os._exit(1)
  deadline = time.time() + timeout_s
  while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      break
    if time.time() > deadline:
      os.kill(pid, signal.SIGKILL)
      os.waitpid(pid, 0)
      return {'outcome': 'hang', 'message': f'still reading after {timeout_s} s'}
    time.sleep(0.002)
  if os.WIFSIGNALED(status) or not os.path.exists(report):
    return {'outcome': 'crash', 'message': f'wait status {status}'}
  with open(report) as f:
    outcome = json.load(f)
  os.remove(report)
  return outcome


def fuzz(
  read: Callable[[str], object], valid: bytes, suffix: str, folder: str, seed: int, count: int, fresh: bool = True
) -> list[dict]:
  """Reads `count` seeded mutants of `valid` (written as `folder`/mutant_<i><suffix>); one outcome each.

  With `fresh`, the forks come from a fresh interpreter (`python -m tests.weight_fuzz`), not from the calling
  process: a pytest worker grown by everything the suite ran before forks up to ~10x slower (its page tables
  and threads copied for every file). Starting that interpreter costs a few seconds: for a dozen files,
  forking here is cheaper."""
  if not fresh:
    return _fuzz_here(read, valid, suffix, folder, seed, count)
  request = os.path.join(folder, 'fuzz_request.json')
  with open(os.path.join(folder, f'valid{suffix}'), 'wb') as f:
    f.write(valid)
  with open(request, 'w') as f:
    json.dump({'read': f'{read.__module__}:{read.__qualname__}', 'suffix': suffix, 'seed': seed, 'count': count}, f)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [root, os.environ.get('PYTHONPATH')]))}
  subprocess.run([sys.executable, '-m', 'tests.weight_fuzz', request], env=env, check=True, timeout=60 + count)
  with open(f'{request}.outcomes.json') as f:
    return json.load(f)


def _fuzz_here(read: Callable[[str], object], valid: bytes, suffix: str, folder: str, seed: int, count: int):
  outcomes = []
  for i, (kind, data) in enumerate(mutants(valid, seed, count)):
    path = os.path.join(folder, f'mutant_{i}{suffix}')
    with open(path, 'wb') as f:
      f.write(data)
    outcomes.append({'mutation': kind, 'path': path, **read_in_child(read, path)})
    os.remove(path)
  return outcomes


def _serve(request_path: str) -> None:
  """`fuzz`'s other half, in the fresh interpreter: the request's reader on its mutants, outcomes to a file."""
  with open(request_path) as f:
    request = json.load(f)
  module, name = request['read'].split(':')
  folder = os.path.dirname(request_path)
  with open(os.path.join(folder, f'valid{request["suffix"]}'), 'rb') as f:
    valid = f.read()
  read = functools.reduce(getattr, name.split('.'), importlib.import_module(module))
  outcomes = _fuzz_here(read, valid, request['suffix'], folder, request['seed'], request['count'])
  with open(f'{request_path}.outcomes.json', 'w') as f:
    json.dump(outcomes, f)


def crafted_torch_file(path, numel_stored, size, offset=0, stride=None):
  """A torch.save-format zip whose one tensor declares `size` (contiguous, or `stride`) at `offset` over a
  storage of `numel_stored`."""
  torch_utils = types.ModuleType('torch._utils')
  torch_module = types.ModuleType('torch')

  def _rebuild_tensor_v2(*args):
    raise AssertionError('never called when writing')

  _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = 'torch._utils', '_rebuild_tensor_v2'
  torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2

  class FloatStorage:
    pass

  FloatStorage.__module__, FloatStorage.__qualname__ = 'torch', 'FloatStorage'
  torch_module.FloatStorage = FloatStorage
  saved = {k: sys.modules.get(k) for k in ('torch', 'torch._utils')}
  sys.modules.update({'torch': torch_module, 'torch._utils': torch_utils})

  class Storage:
    pass

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      return ('storage', FloatStorage, '0', 'cpu', numel_stored) if isinstance(obj, Storage) else None

  class Tensor:
    def __reduce__(self):
      strides = stride or tuple(int(np.prod(size[i + 1 :])) for i in range(len(size)))
      return _rebuild_tensor_v2, (Storage(), offset, tuple(size), tuple(strides), False, {})

  try:
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({'w': Tensor()})
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v
  with zipfile.ZipFile(path, 'w') as archive:
    archive.writestr('archive/data.pkl', buffer.getvalue())
    archive.writestr('archive/data/0', np.arange(numel_stored, dtype=np.float32).tobytes())


if __name__ == '__main__':
  _serve(sys.argv[1])
