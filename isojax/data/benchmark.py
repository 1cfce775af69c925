"""Speed of a config's training input pipeline alone: images/s of this process's batches, as `isojax.main`
builds them (its train_pp, shuffle buffer, cache and uint8 batches). The command line is
`python -m isojax.bench --input CONFIG`."""

from __future__ import annotations

import time
from typing import Any, Optional

from isojax.core import devices, loading
from isojax.data import input_pipeline


def bench_input(config_path: str, steps: int = 50, overrides: Optional[dict[str, Any]] = None) -> dict:
  """Images/s of the config's training input pipeline alone, for this process's devices."""
  config = loading.load(config_path, overrides)
  builder = input_pipeline.get_builder(config.data.name, config.data.data_dir, config.data.download)
  host = devices.data_host()
  per_device = config.batch_size // (host['local_devices'] * host['process_count'])
  batches = input_pipeline.train_batches(
    builder,
    split=config.data.train_split,
    pp=config.data.train_pp,
    image_size=config.data.image_size,
    per_device_batch=per_device,
    **host,
    seed=0,
    shuffle_buffer=config.data.shuffle_buffer,
    cache=config.data.cache,
    uint8_batches=config.data.uint8_batches,
  )
  next(batches)  # start-up (file reads, caches) is not throughput
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)
  seconds = time.perf_counter() - start
  return {
    'input': config_path,
    'dataset': config.data.name,
    'train_pp': config.data.train_pp,
    'images_per_sec': steps * per_device * host['local_devices'] / seconds,
    'batches': steps,
  }
