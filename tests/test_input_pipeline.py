"""The input pipeline: offline digits, sharding, exact resume, exact-once eval, every augmentation."""

import glob
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from isojax import data
from isojax.core import loading
from isojax.data import preprocess, randaugment

PP = 'random_crop(size=8, padding=1)|randaugment(num_ops=2, magnitude=9)|normalize(half)|random_erasing(0.5)'


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
  return data.get_builder('isojax_digits', data_dir=str(tmp_path_factory.mktemp('tfds')))


def batches(builder, n, **kw):
  args = dict(split='train', pp=PP, image_size=8, per_device_batch=16, seed=0)
  it = data.train_batches(builder, **{**args, **kw})
  return [next(it) for _ in range(n)]


def test_digits_is_prepared_offline_with_a_fixed_held_out_split(digits):
  info = data.describe(digits, 'train', 'test')
  assert (info.num_train, info.num_eval, info.num_classes, info.channels) == (1437, 360, 10, 1)
  test = list(tfds.as_numpy(digits.as_dataset(split='test')))
  images = np.stack([ex['image'] for ex in test])
  assert images.shape == (360, 8, 8, 1) and images.dtype == np.uint8 and images.max() == 255
  assert sorted({int(ex['label']) for ex in test}) == list(range(10))


def test_training_batches_have_the_device_layout(digits):
  (batch,) = batches(digits, 1, local_devices=2)
  assert batch['image'].shape == (2, 16, 8, 8, 1) and batch['image'].dtype == np.float32
  assert batch['label'].shape == (2, 16) and batch['label'].dtype == np.int32


def test_a_restarted_stream_continues_exactly_where_it_stopped(digits):
  # 1437 / 16 is not whole: step 95 starts mid-way through the second epoch.
  unbroken = batches(digits, 97)
  resumed = batches(digits, 2, start_step=95)
  for a, b in zip(unbroken[95:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


@pytest.mark.slow
def test_epochs_are_reshuffled_and_the_seed_matters(digits):
  first = batches(digits, 1)[0]['label']
  assert not np.array_equal(first, batches(digits, 1, seed=1)[0]['label'])
  epoch2 = batches(digits, 1, start_step=90)[0]['label']  # 90 * 16 = 1440: just past one epoch
  assert not np.array_equal(first, epoch2)


@pytest.mark.slow
def test_the_training_stream_depends_on_the_global_device_count_not_on_the_hosts(digits):
  # One shard per device of all hosts: 1 host x 4 devices sees exactly what hosts 0 and 1 x 2 devices see.
  one_host = batches(digits, 2, per_device_batch=4, local_devices=4)
  for host in (0, 1):
    half = batches(digits, 2, per_device_batch=4, local_devices=2, process_index=host, process_count=2)
    for whole, part in zip(one_host, half):
      assert part['image'].shape == (2, 4, 8, 8, 1)
      np.testing.assert_array_equal(whole['image'][2 * host : 2 * host + 2], part['image'])
      np.testing.assert_array_equal(whole['label'][2 * host : 2 * host + 2], part['label'])


def test_a_host_holds_one_shuffle_buffer_however_many_devices_it_has(digits, monkeypatch):
  # 8 shards of ~180 digits, each shuffling with 800 / 8 = 100 of them: 800 held, as with one device.
  held = {}
  monkeypatch.setattr(data.input_pipeline, 'check_fits_in_memory', lambda needs, what: held.update(needs))
  batches(digits, 1, per_device_batch=4, local_devices=8, shuffle_buffer=800, cache=False)
  assert held['data.shuffle_buffer'][0] == 800
  batches(digits, 1, per_device_batch=4, local_devices=1, shuffle_buffer=800, cache=False)
  assert held['data.shuffle_buffer'][0] == 800


def test_each_process_trains_on_its_own_part_and_evaluates_it_exactly_once(digits):
  # 1437 examples on 2 hosts: parts of 719 and 718. A batch as large as its part is one whole epoch;
  # the eval stream of the same part holds the same images, and the two parts hold the whole split.
  rows = lambda images: sorted(map(bytes, images.reshape(len(images), -1)))
  parts = []
  for host, size in ((0, 719), (1, 718)):
    (epoch,) = batches(digits, 1, per_device_batch=size, process_index=host, process_count=2, pp='normalize(half)')
    evals = list(
      data.eval_batches(
        digits,
        split='train',
        pp='normalize(half)',
        image_size=8,
        per_device_batch=100,
        process_index=host,
        process_count=2,
      )
    )
    assert len(evals) == data.eval_steps(digits, 'train', 100, 1, 2) == 8
    images = np.concatenate([e['image'][0] for e in evals])[np.concatenate([e['mask'][0] for e in evals]) > 0]
    assert len(images) == size and rows(images) == rows(epoch['image'][0])
    parts.append(images)
  everything = list(data.eval_batches(digits, split='train', pp='normalize(half)', image_size=8, per_device_batch=1437))
  assert rows(np.concatenate(parts)) == rows(everything[0]['image'][0])


def test_evaluation_visits_every_example_exactly_once(digits):
  evals = list(
    data.eval_batches(digits, split='test', pp='normalize(half)', image_size=8, per_device_batch=16, local_devices=8)
  )
  assert len(evals) == data.eval_steps(digits, 'test', 16, 8) == 3  # 360 / (8 x 16) -> 3 steps
  mask = np.concatenate([e['mask'].reshape(-1) for e in evals])
  labels = np.concatenate([e['label'].reshape(-1) for e in evals])[mask > 0]
  assert mask.sum() == 360
  expected = np.array([ex['label'] for ex in tfds.as_numpy(digits.as_dataset(split='test'))])
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.bincount(expected, minlength=10))


def test_cifar10_mock_data_runs_every_augmentation(tmp_path):
  spec = (
    'random_crop(size=32, padding=4)|flip|randaugment(num_ops=2, magnitude=12)|normalize(cifar)|random_erasing(0.25)'
  )
  with tfds.testing.mock_data(num_examples=12):
    builder = data.get_builder('cifar10', data_dir=str(tmp_path))
    (batch,) = batches(builder, 1, pp=spec, image_size=32, per_device_batch=4, local_devices=2)
    assert batch['image'].shape == (2, 4, 32, 32, 3) and np.isfinite(batch['image']).all()
    inception = batches(builder, 1, pp='inception_crop(24)|flip|normalize(imagenet)', image_size=24, per_device_batch=4)
    assert inception[0]['image'].shape == (1, 4, 24, 24, 3)


def write_image_folder(root, classes=('cat', 'dog'), per_class=6, size=(20, 14)):
  rng = np.random.RandomState(0)
  for split in ('train', 'test'):
    for name in classes:
      os.makedirs(root / split / name)
      for i in range(per_class):
        image = rng.randint(0, 255, (*size, 3), dtype=np.uint8)
        ext = 'png' if i % 2 else 'jpg'
        tf.io.write_file(
          str(root / split / name / f'{i}.{ext}'),
          tf.image.encode_png(image) if ext == 'png' else tf.io.encode_jpeg(image),
        )


def test_a_folder_of_the_users_own_images_is_a_dataset(tmp_path):
  write_image_folder(tmp_path)
  builder = data.get_builder('image_folder', str(tmp_path))
  info = data.describe(builder, 'train', 'test')
  assert (info.num_classes, info.num_train, info.num_eval) == (2, 12, 12)
  (batch,) = batches(
    builder, 1, pp='resize(16)|flip|normalize(imagenet)', image_size=16, per_device_batch=4, local_devices=2
  )
  assert batch['image'].shape == (2, 4, 16, 16, 3)


def test_unknown_dataset_names_are_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match=r"data.name='cifar11' is not a dataset"):
    data.get_builder('cifar11', data_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r'image_folder.*needs data.data_dir'):
    data.get_builder('image_folder', None)


def test_preprocessing_specs_parse_keywords_positional_words_and_reject_unknown_ops():
  assert preprocess.parse('resize(32)|normalize(cifar)|randaugment(num_ops=1, magnitude=5)') == [
    ('resize', {'size': 32}),
    ('normalize', {'stats': 'cifar'}),
    ('randaugment', {'num_ops': 1, 'magnitude': 5}),
  ]
  with pytest.raises(ValueError, match=r"Unknown preprocessing op 'colour_jitterr'.*known ops"):
    preprocess.parse('flip|colour_jitterr(0.4)')


ALL_OPS = [(flavour, name) for flavour in randaugment.FLAVOURS for name in randaugment.ops_of(flavour)]


@pytest.mark.parametrize('channels', [1, 3])
@pytest.mark.parametrize('flavour,op', ALL_OPS, ids=[f'{f}-{n}' for f, n in ALL_OPS])
def test_every_randaugment_op_keeps_shape_and_pixel_range(flavour, op, channels):
  image = tf.random.stateless_uniform((12, 10, channels), (1, 2), 0, 255)
  fn, to_arg = randaugment.ops_of(flavour)[op]
  for sign in (-1.0, 1.0):
    out = fn(image, to_arg(tf.constant(9.0), tf.constant(sign), image))
    assert out.shape == image.shape
    assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 255.001


@pytest.mark.parametrize(
  'flavour', [f if f == 'big_vision' else pytest.param(f, marks=pytest.mark.slow) for f in randaugment.FLAVOURS]
)
def test_randaugment_runs_on_images_of_unknown_static_shape(flavour):
  # Image folders decode to [None, None, None]; every op must work without a static channel count.
  apply = tf.function(
    lambda x, seed: randaugment.randaugment(x, seed, num_ops=3, magnitude=9, flavour=flavour),
    input_signature=[tf.TensorSpec([None, None, None], tf.float32), tf.TensorSpec([2], tf.int32)],
  )
  image = tf.random.stateless_uniform((12, 10, 3), (1, 2), 0, 255)
  for seed in range(5):
    assert apply(image, tf.constant([seed, 1])).shape == image.shape


def test_random_erasing_replaces_one_rectangle_with_noise():
  image = tf.ones((16, 16, 3)) * 100.0
  out = preprocess.random_erasing(image, tf.constant([3, 4], tf.int64), prob=1.0)
  changed = np.asarray(tf.reduce_any(out != image, axis=-1))
  rows, cols = np.where(changed)
  assert changed.any() and changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()


# --- encoded images: buffers, fused decode-and-crop, memory checks, a folder of photographs --------------

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
import photo_folder  # noqa: E402


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
  """A small version of the benchmark's JPEG folder: 2 classes x 4 training photographs of ~500x375."""
  root = str(tmp_path_factory.mktemp('photos'))
  photo_folder.make(root, per_class=4, classes=2, val_per_class=1)
  return root


def test_the_photo_folder_is_imagenet_sized_jpegs_made_offline(photos):
  from PIL import Image

  files = sorted(glob.glob(os.path.join(photos, 'train', '*', '*.jpg')))
  assert len(files) == 8 and len(glob.glob(os.path.join(photos, 'validation', '*', '*.jpg'))) == 2
  for path in files:
    with Image.open(path) as image:
      assert image.format == 'JPEG' and image.mode == 'RGB'
      assert 318 <= min(image.size) <= 432 and 425 <= max(image.size) <= 575


def test_the_imagenet_training_and_eval_pipelines_run_on_a_jpeg_folder(photos):
  # The image folder's images have no static shape; every op (RandAugment's included) must cope.

  config = loading.load('configs/imagenet_vit_s16.py')
  builder = data.get_builder('image_folder', photos)
  (batch,) = batches(builder, 1, pp=config.data.train_pp, image_size=224, per_device_batch=2, local_devices=2)
  assert batch['image'].shape == (2, 2, 224, 224, 3) and -1.001 < batch['image'].min() < batch['image'].max() < 1.001
  (evaluation,) = list(
    data.eval_batches(builder, split='validation', pp=config.data.eval_pp, image_size=224, per_device_batch=2)
  )
  assert evaluation['image'].shape == (1, 2, 224, 224, 3) and evaluation['mask'].sum() == 2


def test_uint8_batches_are_the_pixels_before_the_final_normalize_rounded_at_a_quarter_the_bytes(photos):
  from isojax.training import train_step

  config = loading.load('configs/imagenet_vit_s16.py')
  builder = data.get_builder('image_folder', photos)
  kw = dict(pp=config.data.train_pp, image_size=224, per_device_batch=2, local_devices=2)
  (floats,) = batches(builder, 1, **kw)
  (pixels,) = batches(builder, 1, uint8_batches=True, **kw)
  assert pixels['image'].dtype == np.uint8 and 4 * pixels['image'].nbytes == floats['image'].nbytes
  np.testing.assert_array_equal(pixels['label'], floats['label'])
  mean, std = data.device_normalization(config.data.train_pp)
  assert (mean, std) == ((127.5,), (127.5,))  # normalize(half)
  before_normalize = floats['image'] * 127.5 + 127.5  # the same crops, flips and RandAugment ops, unrounded
  assert np.abs(pixels['image'] - before_normalize).max() <= 0.5 + 1e-3
  on_device = np.asarray(train_step.normalize_on_device(pixels['image'], mean, std))
  assert np.abs(on_device - floats['image']).max() <= 0.5 / 127.5 + 1e-5


def test_uint8_batches_apply_only_to_specs_that_end_with_normalize(digits):
  assert data.device_normalization(PP) is None  # random_erasing runs after normalize: floats stay floats
  (batch,) = batches(digits, 1, uint8_batches=True)
  assert batch['image'].dtype == np.float32
  with pytest.raises(ValueError, match=r"uint8 output needs a spec that ends with normalize.*got 'resize\(8\)'"):
    preprocess.build('resize(8)', 8, 1, uint8=True)


def test_shuffle_buffers_hold_encoded_bytes_and_a_buffer_too_large_is_refused(photos, monkeypatch):
  builder = data.get_builder('image_folder', photos)
  files = glob.glob(os.path.join(photos, 'train', '*', '*.jpg'))
  mean_file = sum(os.path.getsize(f) for f in files) / len(files)
  each = data.input_pipeline.encoded_example_bytes(builder, 'train')
  assert mean_file < each < mean_file + 2048  # the JPEG's bytes, not 500 x 375 x 3 pixels
  from isojax.core import host_memory

  monkeypatch.setattr(host_memory, 'available', lambda: (2**19, 'MemAvailable in /proc/meminfo'))
  with pytest.raises(
    ValueError,
    match=r"training pipeline of 'train' would hold about [\d.]+ MiB .*"
    r'data.shuffle_buffer: 8 encoded .*data.cache: 8 encoded.*'
    r'more than the 0.5 MiB available \(MemAvailable',
  ):
    data.train_batches(
      builder, split='train', pp='resize(8)', image_size=8, per_device_batch=2, seed=0, shuffle_buffer=100, cache=True
    )
  monkeypatch.setattr(host_memory, 'available', lambda: (1000, 'the cgroup limit in /sys/fs/cgroup/memory.max'))
  with pytest.raises(ValueError, match=r'Lower data.shuffle_buffer or set data.cache=False'):
    data.train_batches(
      builder, split='train', pp='resize(8)', image_size=8, per_device_batch=2, seed=0, shuffle_buffer=100, cache=False
    )


def test_a_fused_jpeg_crop_equals_decoding_then_cropping():
  rng = np.random.default_rng(0)
  smooth = tf.image.resize(rng.uniform(0, 255, (30, 40, 3)).astype(np.float32), (375, 500))
  pixels = tf.cast(tf.clip_by_value(smooth + rng.normal(0, 8, (375, 500, 3)), 0, 255), tf.uint8)
  spec = 'inception_crop(64, area_min=0.05, antialias=False)'
  fused = preprocess.build(spec, 64, 3, encoded=True)
  unfused = preprocess.build(spec, 64, 3)
  for k in range(4):
    seed = tf.constant([k, 1], tf.int64)
    for encoded, exact in (
      (tf.io.encode_png(pixels), True),
      (tf.io.encode_jpeg(pixels, chroma_downsampling=False), True),
      (tf.io.encode_jpeg(pixels, quality=90), False),
    ):
      reference = unfused(preprocess.decode(encoded, 3), seed).numpy()
      difference = np.abs(fused(encoded, seed).numpy() - reference)
      if exact:  # PNG and 4:4:4 JPEG: the same pixels
        assert difference.max() == 0
      else:  # 4:2:0 JPEG: libjpeg upsamples the window's edge columns without their neighbours
        assert difference.mean() < 0.5


def test_equalize_is_pils_equalize_for_any_channel_count():
  from PIL import Image, ImageOps

  rng = np.random.default_rng(1)
  for shape in ((37, 53, 3), (20, 21, 1)):
    pixels = (rng.beta(2, 5, shape) * 255).astype(np.uint8)
    pixels[..., 0] = np.clip(pixels[..., 0], 30, 60)  # a narrow histogram in one channel
    ours = randaugment.equalize(tf.constant(pixels, tf.float32), None).numpy()
    pil = np.asarray(ImageOps.equalize(Image.fromarray(pixels.squeeze(-1) if shape[-1] == 1 else pixels)))
    np.testing.assert_array_equal(ours, pil.reshape(shape))
  flat = np.full((5, 5, 3), 7, np.uint8)  # one grey level: left as it is
  np.testing.assert_array_equal(randaugment.equalize(tf.constant(flat, tf.float32), None).numpy(), flat)
