"""TFDS datasets -> device-ready numpy batches [local_devices, per_device_batch, ...].

One pipeline per host, built so that a run's data depends on its *global* device count
only: training cuts a split into one shard per device of all processes, and each host
interleaves its devices' shards into one stream (each shard shuffled with its share,
shuffle_buffer / global devices, of one buffer), decodes and augments it in one map and
splits every batch among its devices. So 2 hosts x 2 devices train on exactly the batches
of 1 host x 4 devices, and a host holds at most `shuffle_buffer` examples however many
devices it has. Evaluation cuts the split into one part per process, each example once.

Memory: images stay encoded (PNG/JPEG bytes) through the cache and the shuffle buffer and
are decoded per example after shuffling, a leading Inception crop of a JPEG decoding only
its window. Training batches can be uint8, normalised on the device (a quarter of float32's
bytes). A cache or buffer that would not fit in the host's memory is refused up front.

Determinism: epoch e of a shard is a shuffle seeded by (seed, shard, e), and each example's
augmentation is seeded by its shard and position in the shard's stream, so restarting at
step s (epoch and offset by arithmetic) continues exactly where an unbroken run would be.
This module knows TFDS and tf.data, nothing of models or JAX.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
from collections.abc import Iterator
from typing import Optional

import tensorflow as tf
import tensorflow_datasets as tfds

from isojax.core import host_memory
from isojax.core.validation import ConfigError
from isojax.data import (
  digits,  # noqa: F401  (registers the offline 'isojax_digits' builder)
  image_folder,
  preprocess,
)

LOCAL_BUILDERS = ('isojax_digits',)  # prepared on this machine, never downloaded
IMAGE_FOLDER = 'image_folder'  # the user's own split/class_name/*.jpg|png folder


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What training needs to know about a dataset, without reading it."""

  num_classes: int
  channels: int
  class_names: tuple[str, ...]
  num_train: int
  num_eval: int


def get_builder(
  name: str, data_dir: Optional[str] = None, download: bool = True, skip_bad_files: bool = False
) -> tfds.core.DatasetBuilder:
  """A prepared TFDS builder: `image_folder` reads (and checks) `data_dir`; local builders prepare offline."""
  if name == IMAGE_FOLDER:
    if not data_dir or not os.path.isdir(data_dir):
      raise ConfigError(
        f"data.name='image_folder' needs data.data_dir to be a folder of "
        f'split/class_name/image files; got {data_dir!r}.'
      )
    return image_folder.open_folder(data_dir, skip_bad_files)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:  # not registered, or not a TFDS name
    raise ConfigError(
      f'data.name={name!r} is not a dataset here ({str(e).strip().splitlines()[0]}). '
      f"Use a TFDS name (e.g. 'cifar10'), 'isojax_digits' or 'image_folder'."
    ) from None
  if name in LOCAL_BUILDERS or download:
    # Concurrent runs (a parallel sweep) must not prepare the same dataset at once.
    with _prepare_lock(os.path.dirname(builder.data_dir)):
      builder = tfds.builder(name, data_dir=data_dir)  # sees what another process prepared meanwhile
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
  if isinstance(builder, tfds.ImageFolder):  # less the unreadable files data.skip_bad_files skips
    return len(_folder_paths(builder, split))
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError):  # no metadata (e.g. tfds.testing.mock_data): count
    return int(builder.as_dataset(split=split).reduce(0, lambda n, _: n + 1))


def _folder_paths(builder: tfds.ImageFolder, split: str) -> list[str]:
  examples = builder._split_examples.get(split)  # tfds.ImageFolder has no public list of its files
  if examples is None:
    builder.info.splits[split]  # raises tfds's error naming the splits there are
  bad = set(getattr(builder, 'isojax_bad_files', ()))
  return [str(ex.image_path) for ex in examples if str(ex.image_path) not in bad]


@dataclasses.dataclass(frozen=True)
class _Part:
  """Part `index` of `count` of a split (a device's shard, a process's eval part): a TFDS sub-split,
  or every count-th image of a folder."""

  split: str
  index: int
  count: int


def _part_size(builder, part: _Part) -> int:
  if isinstance(builder, tfds.ImageFolder):  # no sub-split API: Dataset.shard semantics
    return len(range(part.index, num_examples(builder, part.split), part.count))
  return num_examples(builder, tfds.even_splits(part.split, n=part.count)[part.index])


SPLIT_FORMAT = "a TFDS split such as 'train', 'train[:90%]' or 'train[10:]+test'"
SPLIT_FIELDS = ('split', 'train_split', 'test_split')  # an evaluator's fields that hold split strings


def split_fields(config) -> list[tuple[str, str]]:
  """(dotted field, split string) of every split the config names: the data's and the evaluators'."""
  found = [(f'data.{key}', config.data.get(key)) for key in ('train_split', 'eval_split')]
  evals = config.get('evals') or {}
  for name, spec in evals.items():
    found += [(f'evals.{name}.{key}', spec.get(key)) for key in SPLIT_FIELDS if spec.get(key) is not None]
  return found


def check_config(config) -> None:
  """Refuses, naming the field, a split that TFDS's own parser cannot read and a preprocessing spec whose
  ops or arguments do not exist; before any dataset opens."""
  errors = []
  for field, split in split_fields(config):
    try:
      tfds.core.ReadInstruction.from_spec(split)
    except (ValueError, TypeError, AssertionError):
      errors.append(f'{field}={split!r} ({SPLIT_FORMAT}; see https://www.tensorflow.org/datasets/splits)')
  specs = [('data.train_pp', config.data.get('train_pp')), ('data.eval_pp', config.data.get('eval_pp'))]
  specs += [(f'evals.{name}.pp', spec.get('pp')) for name, spec in (config.get('evals') or {}).items()]
  for field, spec in specs:
    try:
      preprocess.parse(spec) if spec is not None else None
    except (ValueError, AttributeError) as e:
      errors.append(f'{field}={spec!r} ({e})')
  if errors:
    raise ConfigError('Invalid data field(s): ' + '; '.join(errors))


def _split_size(builder, field: str, split: str) -> int:
  try:
    count = num_examples(builder, split)
  except (KeyError, ValueError, AssertionError) as e:  # a split the dataset lacks, or a slice past its end
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ConfigError(f'{field}={split!r} cannot be read from {builder.name}: {reason}') from None
  if count < 1:
    raise ConfigError(f'{field}={split!r} has no examples in {builder.name} (a split with at least one).')
  return count


def describe(builder, train_split: str, eval_split: str) -> DatasetInfo:
  """Classes, channels and split sizes of a prepared builder; a split it lacks is a `ConfigError`."""
  label = builder.info.features['label']
  return DatasetInfo(
    num_classes=label.num_classes,
    channels=builder.info.features['image'].shape[-1],
    class_names=tuple(label.names),
    num_train=_split_size(builder, 'data.train_split', train_split),
    num_eval=_split_size(builder, 'data.eval_split', eval_split),
  )


def _encoded_examples(builder, part: _Part, cache: bool) -> tf.data.Dataset:
  """{'image': encoded bytes, 'label', 'filename'} of a host's part, in a fixed order."""
  skip_decoding = {'image': tfds.decode.SkipDecoding()}
  if isinstance(builder, tfds.ImageFolder):
    ds = builder.as_dataset(split=part.split, shuffle_files=False, decoders=skip_decoding)
    bad = tuple(getattr(builder, 'isojax_bad_files', ()))
    if bad:  # the files image_folder.check found unreadable (and logged)
      ds = ds.filter(lambda ex: tf.logical_not(tf.reduce_any(tf.equal(ex['image/filename'], bad))))
    ds = ds.shard(part.count, part.index)
  else:
    ds = builder.as_dataset(
      split=tfds.even_splits(part.split, n=part.count)[part.index], shuffle_files=False, decoders=skip_decoding
    )
  ds = ds.map(
    lambda ex: {'image': ex['image'], 'label': ex['label'], 'filename': ex.get('image/filename', tf.constant(''))},
    num_parallel_calls=tf.data.AUTOTUNE,
  )
  return ds.cache() if cache else ds


# What tf.data keeps per buffered example besides the encoded image (tensor headers, label, name).
_EXAMPLE_OVERHEAD_BYTES = 1024


def encoded_example_bytes(builder, split: str) -> float:
  """Mean bytes an encoded example of `split` holds in memory: file sizes, TFDS metadata, or a sample."""
  if isinstance(builder, tfds.ImageFolder):  # the mean of at most 1,024 evenly spaced files' sizes
    paths = _folder_paths(builder, split)
    sample = paths[:: max(1, len(paths) // 1024)]
    return sum(os.path.getsize(p) for p in sample) / max(len(sample), 1) + _EXAMPLE_OVERHEAD_BYTES
  base = split.split('[')[0].split('+')[0]
  try:
    info = builder.info.splits[base]
    if info.num_bytes and info.num_examples:
      return info.num_bytes / info.num_examples + _EXAMPLE_OVERHEAD_BYTES
  except (KeyError, ValueError):
    pass
  sample = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()}).take(64)
  sizes = [int(n) for n in tfds.as_numpy(sample.map(lambda ex: tf.strings.length(ex['image'])))]
  return sum(sizes) / max(len(sizes), 1) + _EXAMPLE_OVERHEAD_BYTES


def _readable(size: float) -> str:
  return f'{size / 2**30:,.2f} GiB' if size >= 2**30 else f'{size / 2**20:,.1f} MiB'


def check_fits_in_memory(needs: dict[str, tuple[int, float]], what: str) -> None:
  """Refuses buffers that would not fit in host memory; `needs`: setting -> (examples, bytes each)."""
  total = sum(n * each for n, each in needs.values())
  limit, source = host_memory.available()
  if total <= limit:
    return
  parts = ', '.join(
    f'{setting}: {n:,} encoded examples x {each / 1024:,.0f} KiB = {_readable(n * each)}'
    for setting, (n, each) in needs.items()
  )
  raise ValueError(
    f'The {what} would hold about {_readable(total)} in host memory ({parts}), more than the '
    f'{_readable(limit)} available ({source}). Lower data.shuffle_buffer or set data.cache=False '
    f'(read from disk each epoch).'
  )


def _sized(image: tf.Tensor, filename: tf.Tensor, image_size: int, pp: str) -> tf.Tensor:
  """`image` after preprocessing, checked to be image_size x image_size, else an error naming the file."""
  size = tf.shape(image)[:2]
  check = tf.debugging.Assert(
    tf.reduce_all(tf.equal(size, [image_size, image_size])),
    [
      f'An image is not {image_size}x{image_size} after preprocessing {pp!r} (add a resize '
      f'or crop); file and height, width:',
      filename,
      size,
    ],
    summarize=8,
  )
  with tf.control_dependencies([check]):
    return tf.ensure_shape(tf.identity(image), (image_size, image_size, image.shape[-1]))


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.private_threadpool_size = max(os.cpu_count() or 1, 2)
  return options


def _per_device(batch: dict, local_devices: int) -> dict:
  """[local_devices * b, ...] -> [local_devices, b, ...]."""
  return {k: tf.reshape(v, tf.concat([[local_devices, -1], tf.shape(v)[1:]], 0)) for k, v in batch.items()}


def _batched(ds: tf.data.Dataset, per_device_batch: int, local_devices: int):
  ds = ds.batch(per_device_batch * local_devices, drop_remainder=True)
  ds = ds.map(lambda batch: _per_device(batch, local_devices)).prefetch(1)
  return tfds.as_numpy(ds.with_options(_options())).__iter__()


def _check_shards(
  builder, shards: list[_Part], sizes: list[int], per_device_batch: int, buffer_share: int, cache: bool
) -> None:
  """Every device's shard fills a batch, and the shuffle buffers (and cache) fit in host memory."""
  split, count = shards[0].split, shards[0].count
  if min(sizes) < per_device_batch:
    raise ValueError(
      f'Shard {shards[sizes.index(min(sizes))].index} of {split!r} (one per device of '
      f'{count}) has {min(sizes)} examples, fewer than the per-device batch '
      f'{per_device_batch}; use a smaller batch or fewer devices.'
    )
  each = encoded_example_bytes(builder, split)
  needs = {'data.shuffle_buffer': (sum(min(n, buffer_share) for n in sizes), each)}
  if cache:
    needs['data.cache'] = (sum(sizes), each)
  check_fits_in_memory(needs, f'training pipeline of {split!r}')


def _shard_stream(
  builder, shard: _Part, n: int, cache: bool, buffer_share: int, seed: int, start: int
) -> tf.data.Dataset:
  """(augmentation seed, encoded example) of one device's shard of `n` examples, endless, from its `start`-th
  example on: epoch e is a shuffle seeded by (seed, shard, e), each example's seed its position in the stream."""
  examples = _encoded_examples(builder, shard, cache)
  epoch, offset = divmod(start, n)
  shard_seed = seed * 1_000_003 + shard.index * 7919

  def one_epoch(e):
    shuffled = examples.shuffle(min(n, buffer_share), seed=shard_seed + e * 104_729, reshuffle_each_iteration=False)
    return shuffled.enumerate().map(lambda i, ex: (tf.stack([tf.constant(shard_seed, tf.int64), e * n + i]), ex))

  return tf.data.Dataset.range(epoch, 2**62).flat_map(one_epoch).skip(offset)


def train_batches(
  builder,
  *,
  split: str,
  pp: str,
  image_size: int,
  per_device_batch: int,
  local_devices: int = 1,
  process_index: int = 0,
  process_count: int = 1,
  seed: int,
  start_step: int = 0,
  shuffle_buffer: int = 50_000,
  cache: bool = True,
  uint8_batches: bool = False,
) -> Iterator[dict]:
  """Endless training batches of this process's devices' shards of `split`, starting at step `start_step`.

  `shuffle_buffer` is the whole run's buffer: each of the `local_devices * process_count` shards
  shuffles with an equal share of it. With `uint8_batches`, a `pp` that ends with `normalize`
  yields uint8 images and leaves that normalisation (`device_normalization(pp)`) to the train step."""
  channels = builder.info.features['image'].shape[-1]
  uint8 = uint8_batches and preprocess.device_normalization(pp) is not None
  process = preprocess.build(
    pp,
    image_size,
    channels,
    fixed_shape=False,
    encoded=True,  # _sized names the file
    uint8=uint8,
  )
  global_devices = local_devices * process_count
  shards = [_Part(split, process_index * local_devices + d, global_devices) for d in range(local_devices)]
  sizes = [_part_size(builder, shard) for shard in shards]
  buffer_share = max(1, shuffle_buffer // global_devices)
  _check_shards(builder, shards, sizes, per_device_batch, buffer_share, cache)
  streams = [
    _shard_stream(builder, shard, n, cache, buffer_share, seed, start_step * per_device_batch)
    for shard, n in zip(shards, sizes)
  ]

  def augment(rng, ex):
    image = process(ex['image'], rng)
    return {'image': _sized(image, ex['filename'], image_size, pp), 'label': tf.cast(ex['label'], tf.int32)}

  # A host batch: each device's next per_device_batch examples from its own shard, in device order.
  if local_devices == 1:
    ds = streams[0]
  else:
    device = tf.data.Dataset.range(2**62).map(lambda i: i // per_device_batch % local_devices)
    ds = tf.data.Dataset.choose_from_datasets(streams, device)
  ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _batched(ds, per_device_batch, local_devices)


def eval_steps(builder, split: str, per_device_batch: int, local_devices: int = 1, process_count: int = 1) -> int:
  """How many eval batches every process runs so that the largest part is covered."""
  sizes = [_part_size(builder, _Part(split, k, process_count)) for k in range(process_count)]
  return max(1, math.ceil(max(sizes) / (per_device_batch * local_devices)))


def eval_batches(
  builder,
  *,
  split: str,
  pp: str,
  image_size: int,
  per_device_batch: int,
  local_devices: int = 1,
  process_index: int = 0,
  process_count: int = 1,
  cache: bool = True,
) -> Iterator[dict]:
  """Every example of this process's part of `split` exactly once, padded with mask=0 examples."""
  channels = builder.info.features['image'].shape[-1]
  process = preprocess.build(pp, image_size, channels, fixed_shape=False, encoded=True)  # _sized names the file
  part = _Part(split, process_index, process_count)
  if cache:
    check_fits_in_memory(
      {'data.cache': (_part_size(builder, part), encoded_example_bytes(builder, split))},
      f'evaluation pipeline of {split!r}',
    )
  steps = eval_steps(builder, split, per_device_batch, local_devices, process_count)
  padding = {
    'image': tf.zeros((image_size, image_size, channels)),
    'label': tf.constant(0, tf.int32),
    'mask': tf.constant(0.0),
  }
  ds = _encoded_examples(builder, part, cache).map(
    lambda ex: {
      'image': _sized(process(ex['image'], tf.constant([0, 0], tf.int64)), ex['filename'], image_size, pp),
      'label': tf.cast(ex['label'], tf.int32),
      'mask': tf.constant(1.0),
    },
    num_parallel_calls=tf.data.AUTOTUNE,
  )
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat()).take(steps * per_device_batch * local_devices)
  return _batched(ds, per_device_batch, local_devices)
