"""Entry points keep freed host memory, so a step's large buffers are not page-faulted in again."""

import os
import subprocess
import sys

import pytest

PROGRAM = """
import resource, sys
from isojax.core import host_memory
applied = host_memory.keep_freed_memory()
import jax, jax.numpy as jnp
# A training-like step: the backward pass keeps ~100 MiB of activations in XLA's temporary buffer.
ws = [jnp.full((256, 1024), 0.01), jnp.full((1024, 256), 0.01)] * 2
def loss(ws, x):
  for w in ws:
    x = jnp.tanh(x @ w)
  return x.sum()
step = jax.jit(jax.grad(loss))
x = jnp.ones((8192, 256), jnp.float32)
for _ in range(3):
  jax.block_until_ready(step(ws, x))
faults = []
for _ in range(4):   # the fewest: another process's load can evict pages now and then
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(step(ws, x))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
temp = step.lower(ws, x).compile().memory_analysis().temp_size_in_bytes
print(applied, min(faults), temp)
"""


def run(keep: bool) -> tuple[str, int, int]:
  env = {**os.environ, 'ISOJAX_KEEP_HOST_MEMORY': '1' if keep else '0'}
  env.pop('XLA_FLAGS', None)
  out = subprocess.run([sys.executable, '-c', PROGRAM], env=env, capture_output=True, text=True, check=True)
  applied, faults, temp_bytes = out.stdout.split()
  return applied, int(faults), int(temp_bytes)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc tuning is Linux-only')
def test_kept_host_memory_is_reused_instead_of_faulted_in_every_step():
  applied, faults, temp_bytes = run(keep=True)
  pages = temp_bytes // os.sysconf('SC_PAGE_SIZE')
  assert applied == 'True' and faults < pages // 10
  applied, faults, _ = run(keep=False)  # glibc's default: the buffer is mapped afresh every step
  assert applied == 'False' and faults > pages // 2


# 3 GiB malloc'd, written and freed three times: the heap's free top passes 2 GiB each time.
OVER_2_GIB = """
import ctypes, os, resource
from isojax.core import host_memory
applied = host_memory.keep_freed_memory()
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
size, faults = 3 * 2**30, []
for _ in range(3):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(size)
  libc.memset(block, 1, size)
  libc.free(block)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, max(faults[1:]), size // os.sysconf('SC_PAGE_SIZE'))
"""


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc tuning is Linux-only')
def test_a_freed_block_over_2_gib_is_kept_too():
  """A trim threshold of INT_MAX gave back any free heap top over 2 GiB (a Mixer-S/16 step's every few steps)."""
  env = {**os.environ, 'ISOJAX_KEEP_HOST_MEMORY': '1'}
  out = subprocess.run([sys.executable, '-c', OVER_2_GIB], env=env, capture_output=True, text=True, check=True)
  applied, faults, pages = out.stdout.split()
  assert applied == 'True' and int(faults) < int(pages) // 100, (faults, pages)


def test_freed_memory_is_kept_only_where_jax_computes_on_the_cpu(monkeypatch):
  from isojax.core import host_memory

  monkeypatch.setenv('JAX_PLATFORMS', 'cuda')
  monkeypatch.delenv('ISOJAX_KEEP_HOST_MEMORY', raising=False)
  assert not host_memory.jax_will_use_cpu() and not host_memory.keep_freed_memory()  # not measured there
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  assert host_memory.jax_will_use_cpu()
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda')
  monkeypatch.setenv('ISOJAX_KEEP_HOST_MEMORY', '0')
  assert not host_memory.keep_freed_memory()


def test_available_host_memory_names_its_source():
  from isojax.core import host_memory

  available, source = host_memory.available()
  assert 0 < available < 2**50 and ('meminfo' in source or 'cgroup' in source or 'sysconf' in source)
