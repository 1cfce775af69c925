"""Timing a stream of batches: the one protocol of every input-pipeline figure (`isojax.bench --input` and each
loader of benchmarks/input_side_by_side.py, torch's included). Only the standard library, so that a Python with
torch but not JAX imports it too."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

WARMUP = 2  # batches before timing: the first fills the shuffle buffer, the second lets the loader's threads settle


def time_batches(batches: Iterator[Any], images_per_batch: int, steps: int, warmup: int = WARMUP) -> dict:
  """{'images_per_sec', 'first_batch_seconds', 'last_batch'}: `steps` batches timed after `warmup` untimed ones,
  the first of them timed apart (start-up, file reads, the shuffle buffer filling: not throughput)."""
  if steps < 1 or warmup < 1:
    raise ValueError(f'steps={steps}, warmup={warmup}: time at least 1 batch after at least 1 untimed one')
  start = time.perf_counter()
  batch = next(batches)
  first_batch_seconds = time.perf_counter() - start
  for _ in range(warmup - 1):
    batch = next(batches)
  start = time.perf_counter()
  for _ in range(steps):
    batch = next(batches)
  seconds = time.perf_counter() - start
  return {
    'images_per_sec': steps * images_per_batch / seconds,
    'first_batch_seconds': first_batch_seconds,
    'last_batch': batch,
  }
