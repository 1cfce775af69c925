"""Keep freed host memory for reuse instead of handing it back to the OS after every step.

XLA's CPU runtime allocates each step's temporary buffer (800 MB for a ViT-S/16 training
step at batch 16) with posix_memalign from a worker thread. glibc serves a request that
large from a fresh mmap and unmaps it on free, so every step page-faults its whole working
set in again: about 220,000 faults per step, 10-30% of the step time on a 2-core machine.
Serving all threads from the main heap, never through mmap, and never trimming it makes
the second step reuse the first step's pages, as PyTorch's and TensorFlow's allocators do.
The cost: the process keeps its peak host memory until it exits. Never means never: a trim
threshold of INT_MAX (2 GiB, the largest an int holds) still gave back the heap's free top
whenever it passed 2 GiB, as a Mixer-S/16 training step at batch 16 (1.4 GB of temporaries)
makes it do: 5.3 GB handed back over 12 steps, each time re-faulted (360,000 pages, 4.1 s
instead of 1.7 s per step). mallopt(3)'s -1 disables trimming completely.

Measured on the 2-core CPU only, so applied only where JAX will compute on the CPU (no
accelerator plugin installed, or JAX_PLATFORMS=cpu): on an accelerator host XLA's step buffers
live on the device, and one malloc arena serialises tf.data's many threads (the input pipeline
alone, measured here: ~10% slower with one arena; docs/input-pipeline.md).
Call `keep_freed_memory()` before JAX starts its threads (the entry points do it first);
ISOJAX_KEEP_HOST_MEMORY=1 applies it anywhere, =0 nowhere (unset: on the CPU backend only).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_NEVER = -1  # M_TRIM_THRESHOLD's value for "never trim" (glibc stores it as size_t: SIZE_MAX)


def jax_will_use_cpu() -> bool:
  """Whether JAX's default backend will be the CPU, decided without starting JAX."""
  platforms = os.environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  if importlib.util.find_spec('libtpu') is not None:
    return False
  if list(importlib.metadata.entry_points(group='jax_plugins')):  # jax-cuda12-plugin, rocm, ...
    return False
  try:
    import jax_plugins  # namespace package of older plugins

    return not any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))
  except ImportError:
    return True


def keep_freed_memory() -> bool:
  """Tunes glibc malloc to recycle large blocks; True when applied (Linux with glibc, CPU backend)."""
  setting = os.environ.get('ISOJAX_KEEP_HOST_MEMORY', 'auto')
  if setting == '0' or not sys.platform.startswith('linux') or (setting != '1' and not jax_will_use_cpu()):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
  except OSError:
    return False
  if not hasattr(libc, 'gnu_get_libc_version'):  # absent from musl and other C libraries
    return False
  # One arena: other threads' arenas fall back to mmap for large blocks whatever M_MMAP_MAX says.
  return all(
    libc.mallopt(param, value) == 1
    for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER))
  )


def available() -> tuple[int, str]:
  """Bytes this process can still allocate before the host (or its cgroup) runs out, and from where."""
  candidates = []
  try:
    with open('/proc/meminfo') as f:
      fields = dict(line.split(':', 1) for line in f)
    candidates.append((int(fields['MemAvailable'].split()[0]) * 1024, 'MemAvailable in /proc/meminfo'))
  except (OSError, KeyError, ValueError):
    pass
  for limit_file, usage_file in (
    ('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory.current'),
    ('/sys/fs/cgroup/memory/memory.limit_in_bytes', '/sys/fs/cgroup/memory/memory.usage_in_bytes'),
  ):
    try:
      with open(limit_file) as f, open(usage_file) as g:
        limit, usage = f.read().strip(), int(g.read())
    except (OSError, ValueError):
      continue
    if limit.isdigit() and int(limit) < 2**60:  # 'max' or a huge number: no cgroup limit
      candidates.append((int(limit) - usage, f'the cgroup limit in {limit_file}'))
  if not candidates:
    pages, page = os.sysconf('SC_PHYS_PAGES'), os.sysconf('SC_PAGE_SIZE')
    candidates.append((pages * page, 'physical memory (sysconf)'))
  return min(candidates)
