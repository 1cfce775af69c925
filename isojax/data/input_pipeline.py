"""TFDS datasets -> device-ready numpy batches [local_devices, per_device_batch, ...].

Sharding: the data is cut into one shard per *global device*; each process reads the
shards of its own devices. A run on 2 hosts x 2 devices therefore sees exactly the
global batches of a 1-host x 4-device run.

Determinism: epoch e of a shard is a shuffle seeded by (seed, shard, e), and each
example's augmentation is seeded by its position in the stream, so restarting at step
s (epoch and offset by arithmetic) continues exactly where an unbroken run would be.
This module knows TFDS and tf.data, nothing of models or JAX.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
from typing import Iterator, Optional, Sequence

import tensorflow as tf
import tensorflow_datasets as tfds

from isojax.data import digits  # noqa: F401  (registers the offline 'isojax_digits' builder)
from isojax.data import preprocess

LOCAL_BUILDERS = ('isojax_digits',)   # prepared on this machine, never downloaded
IMAGE_FOLDER = 'image_folder'         # the user's own split/class_name/*.jpg|png folder


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What training needs to know about a dataset, without reading it."""
  num_classes: int
  channels: int
  class_names: tuple[str, ...]
  num_train: int
  num_eval: int


def get_builder(name: str, data_dir: Optional[str] = None, download: bool = True,
                skip_bad_files: bool = False) -> tfds.core.DatasetBuilder:
  """A prepared TFDS builder: `image_folder` reads (and checks) `data_dir`; local builders prepare offline."""
  if name == IMAGE_FOLDER:
    if not data_dir or not os.path.isdir(data_dir):
      raise ValueError(f"data.name='image_folder' needs data.data_dir to be a folder of "
                       f"split/class_name/image files; got {data_dir!r}.")
    from isojax.data import image_folder
    return image_folder.open_folder(data_dir, skip_bad_files)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f'Unknown dataset {name!r}: {str(e).splitlines()[0]} '
                     f"Use a TFDS name (e.g. 'cifar10'), 'isojax_digits' or 'image_folder'.") from None
  if name in LOCAL_BUILDERS or download:
    # Concurrent runs (a parallel sweep) must not prepare the same dataset at once.
    with _prepare_lock(os.path.dirname(builder.data_dir)):
      builder = tfds.builder(name, data_dir=data_dir)   # sees what another process prepared meanwhile
      builder.download_and_prepare()
  return builder


@contextlib.contextmanager
def _prepare_lock(dataset_dir: str):
  os.makedirs(dataset_dir, exist_ok=True)
  with open(os.path.join(dataset_dir, '.isojax_prepare.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def num_examples(builder, split: str) -> int:
  """Examples in `split` (any TFDS split string), from metadata or, lacking it, by counting."""
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError):  # no metadata (e.g. tfds.testing.mock_data): count
    return int(builder.as_dataset(split=split).reduce(0, lambda n, _: n + 1))


@dataclasses.dataclass(frozen=True)
class _Shard:
  """Shard `index` of `count` of a split: a TFDS sub-split, or every count-th example of a folder."""
  split: str
  index: int
  count: int


def _shards(split: str, num_shards: int) -> list[_Shard]:
  return [_Shard(split, k, num_shards) for k in range(num_shards)]


def _shard_size(builder, shard: _Shard) -> int:
  if isinstance(builder, tfds.ImageFolder):   # no sub-split API: Dataset.shard semantics
    return len(range(shard.index, num_examples(builder, shard.split), shard.count))
  return num_examples(builder, tfds.even_splits(shard.split, n=shard.count)[shard.index])


def describe(builder, train_split: str, eval_split: str) -> DatasetInfo:
  """Classes, channels and split sizes of a prepared builder."""
  label = builder.info.features['label']
  return DatasetInfo(num_classes=label.num_classes, channels=builder.info.features['image'].shape[-1],
                     class_names=tuple(label.names), num_train=num_examples(builder, train_split),
                     num_eval=num_examples(builder, eval_split))


def _examples(builder, shard: _Shard, cache: bool) -> tf.data.Dataset:
  if isinstance(builder, tfds.ImageFolder):
    ds = builder.as_dataset(split=shard.split, shuffle_files=False).shard(shard.count, shard.index)
  else:
    ds = builder.as_dataset(split=tfds.even_splits(shard.split, n=shard.count)[shard.index],
                            shuffle_files=False)
  if getattr(builder, 'isojax_skip_bad_files', False):
    ds = ds.ignore_errors()   # the files image_folder.check found unreadable (and logged)
  ds = ds.map(lambda ex: {'image': ex['image'], 'label': ex['label'],
                          'filename': ex.get('image/filename', tf.constant(''))},
              num_parallel_calls=tf.data.AUTOTUNE)
  return ds.cache() if cache else ds


def _sized(image: tf.Tensor, filename: tf.Tensor, image_size: int, pp: str) -> tf.Tensor:
  """`image` after preprocessing, checked to be image_size x image_size, else an error naming the file."""
  size = tf.shape(image)[:2]
  check = tf.debugging.Assert(tf.reduce_all(tf.equal(size, [image_size, image_size])),
                              [f'An image is not {image_size}x{image_size} after preprocessing {pp!r} (add a resize '
                               f'or crop); file and height, width:', filename, size], summarize=8)
  with tf.control_dependencies([check]):
    return tf.ensure_shape(tf.identity(image), (image_size, image_size, image.shape[-1]))


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = max(os.cpu_count() or 1, 2)
  return options


def _stack_devices(*per_device):
  return {k: tf.stack([d[k] for d in per_device]) for k in per_device[0]}


def train_batches(builder, *, split: str, pp: str, image_size: int, per_device_batch: int,
                  shards: Sequence[int], num_shards: int, seed: int, start_step: int = 0,
                  shuffle_buffer: int = 50_000, cache: bool = True) -> Iterator[dict]:
  """Endless training batches for this process's `shards`, starting at step `start_step`."""
  channels = builder.info.features['image'].shape[-1]
  process = preprocess.build(pp, image_size, channels, fixed_shape=False)   # _sized checks, naming the file
  all_shards = _shards(split, num_shards)
  per_device = []
  for shard in shards:
    examples = _examples(builder, all_shards[shard], cache)
    n = _shard_size(builder, all_shards[shard])
    if n < per_device_batch:
      raise ValueError(f'Shard {shard} of {split!r} has {n} examples, fewer than the per-device '
                       f'batch {per_device_batch}; use a smaller batch or fewer devices.')
    epoch, offset = divmod(start_step * per_device_batch, n)
    shard_seed = seed * 1_000_003 + shard * 7919

    def one_epoch(e, examples=examples, n=n, shard_seed=shard_seed):
      shuffled = examples.shuffle(min(n, shuffle_buffer), seed=shard_seed + e * 104_729,
                                  reshuffle_each_iteration=False)
      return shuffled.enumerate().map(lambda i, ex: (e * n + i, ex))

    def augment(index, ex, shard_seed=shard_seed):
      image = process(ex['image'], tf.stack([tf.cast(shard_seed, tf.int64), index]))
      return {'image': _sized(image, ex['filename'], image_size, pp), 'label': tf.cast(ex['label'], tf.int32)}

    ds = tf.data.Dataset.range(epoch, 2 ** 62).flat_map(one_epoch).skip(offset)
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    per_device.append(ds.batch(per_device_batch, drop_remainder=True))
  ds = tf.data.Dataset.zip(tuple(per_device)).map(_stack_devices).prefetch(2)
  return tfds.as_numpy(ds.with_options(_options())).__iter__()


def eval_steps(builder, split: str, per_device_batch: int, num_shards: int) -> int:
  """How many eval batches every device runs so that the largest shard is covered."""
  sizes = [_shard_size(builder, s) for s in _shards(split, num_shards)]
  return max(1, math.ceil(max(sizes) / per_device_batch))


def eval_batches(builder, *, split: str, pp: str, image_size: int, per_device_batch: int,
                 shards: Sequence[int], num_shards: int, cache: bool = True) -> Iterator[dict]:
  """Every example of `split` exactly once; short shards are padded with mask=0 examples."""
  channels = builder.info.features['image'].shape[-1]
  process = preprocess.build(pp, image_size, channels, fixed_shape=False)   # _sized checks, naming the file
  steps = eval_steps(builder, split, per_device_batch, num_shards)
  all_shards = _shards(split, num_shards)
  padding = {'image': tf.zeros((image_size, image_size, channels)), 'label': tf.constant(0, tf.int32),
             'mask': tf.constant(0.0)}
  per_device = []
  for shard in shards:
    ds = _examples(builder, all_shards[shard], cache).map(
        lambda ex: {'image': _sized(process(ex['image'], tf.constant([0, 0], tf.int64)), ex['filename'],
                                    image_size, pp),
                    'label': tf.cast(ex['label'], tf.int32), 'mask': tf.constant(1.0)},
        num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat()).take(steps * per_device_batch)
    per_device.append(ds.batch(per_device_batch, drop_remainder=True))
  ds = tf.data.Dataset.zip(tuple(per_device)).map(_stack_devices).prefetch(2)
  return tfds.as_numpy(ds.with_options(_options())).__iter__()
