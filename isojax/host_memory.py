"""Keep freed host memory for reuse instead of handing it back to the OS after every step.

XLA's CPU runtime allocates each step's temporary buffer (800 MB for a ViT-S/16 training
step at batch 16) with posix_memalign from a worker thread. glibc serves a request that
large from a fresh mmap and unmaps it on free, so every step page-faults its whole working
set in again: about 220,000 faults per step, 10-30% of the step time on a 2-core machine.
Serving all threads from the main heap, never through mmap, and never trimming it makes
the second step reuse the first step's pages, as PyTorch's and TensorFlow's allocators do.
The cost: the process keeps its peak host memory until it exits.

Call `keep_freed_memory()` before JAX starts its threads (the entry points do it first);
set ISOJAX_KEEP_HOST_MEMORY=0 to leave glibc's defaults alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_INT_MAX = 2 ** 31 - 1


def keep_freed_memory() -> bool:
  """Tunes glibc malloc to recycle large blocks; True when applied (Linux with glibc only)."""
  if os.environ.get('ISOJAX_KEEP_HOST_MEMORY', '1') == '0' or not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    libc.gnu_get_libc_version    # absent from musl and other C libraries
  except (OSError, AttributeError):
    return False
  # One arena: other threads' arenas fall back to mmap for large blocks whatever M_MMAP_MAX says.
  return all(libc.mallopt(param, value) == 1 for param, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX)))
