"""Speed of a config's training input pipeline alone: images/s of this process's batches, as `isojax.main`
builds them (its train_pp, shuffle buffer, cache and uint8 batches). The command line is
`python -m isojax.bench --input CONFIG`; benchmarks/input_side_by_side.py calls `bench_input` too, so the two
report one measurement of one pipeline."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional

import ml_collections

from isojax.core import devices, loading, throughput
from isojax.data import input_pipeline


def config_batches(config: ml_collections.ConfigDict) -> tuple[Iterator[Any], int]:
  """(batches, images per batch): the training batches isojax.main builds from `config` for this process."""
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
  return batches, per_device * host['local_devices']


def bench_input(
  config_path: str, steps: int = 50, overrides: Optional[dict[str, Any]] = None, warmup: int = throughput.WARMUP
) -> dict:
  """Images/s of the config's training input pipeline alone, for this process's devices."""
  config = loading.load(config_path, overrides)
  batches, images_per_batch = config_batches(config)
  timed = throughput.time_batches(batches, images_per_batch, steps, warmup)
  last = timed.pop('last_batch')
  return {
    'input': config_path,
    'dataset': config.data.name,
    'train_pp': config.data.train_pp,
    'images_per_batch': images_per_batch,
    'image_batch_shape': list(last['image'].shape),
    **timed,
    'batches': steps,
    'warmup': warmup,
  }
