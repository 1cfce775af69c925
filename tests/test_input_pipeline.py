"""The input pipeline: offline digits, sharding, exact resume, exact-once eval, every augmentation."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from isojax import data
from isojax.data import preprocess, randaugment

PP = 'random_crop(size=8, padding=1)|randaugment(num_ops=2, magnitude=9)|normalize(half)|random_erasing(0.5)'


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
  return data.get_builder('isojax_digits', data_dir=str(tmp_path_factory.mktemp('tfds')))


def batches(builder, n, **kw):
  args = dict(split='train', pp=PP, image_size=8, per_device_batch=16, shards=[0], num_shards=1, seed=0)
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
  (batch,) = batches(digits, 1, shards=[0, 1], num_shards=2)
  assert batch['image'].shape == (2, 16, 8, 8, 1) and batch['image'].dtype == np.float32
  assert batch['label'].shape == (2, 16) and batch['label'].dtype == np.int32


def test_a_restarted_stream_continues_exactly_where_it_stopped(digits):
  # 1437 / 16 is not whole: step 95 starts mid-way through the second epoch.
  unbroken = batches(digits, 97)
  resumed = batches(digits, 2, start_step=95)
  for a, b in zip(unbroken[95:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_epochs_are_reshuffled_and_the_seed_matters(digits):
  first = batches(digits, 1)[0]['label']
  assert not np.array_equal(first, batches(digits, 1, seed=1)[0]['label'])
  epoch2 = batches(digits, 1, start_step=90)[0]['label']   # 90 * 16 = 1440: just past one epoch
  assert not np.array_equal(first, epoch2)


def test_each_process_reads_only_its_devices_shards_of_the_same_global_batch(digits):
  everyone = batches(digits, 2, shards=[0, 1, 2, 3], num_shards=4)
  host0 = batches(digits, 2, shards=[0, 1], num_shards=4)
  host1 = batches(digits, 2, shards=[2, 3], num_shards=4)
  for all_, a, b in zip(everyone, host0, host1):
    np.testing.assert_array_equal(all_['image'], np.concatenate([a['image'], b['image']]))


def test_evaluation_visits_every_example_exactly_once(digits):
  evals = list(data.eval_batches(digits, split='test', pp='normalize(half)', image_size=8,
                                 per_device_batch=16, shards=list(range(8)), num_shards=8))
  assert len(evals) == data.eval_steps(digits, 'test', 16, 8) == 3   # 360 / 8 = 45 -> 3 batches of 16
  mask = np.concatenate([e['mask'].reshape(-1) for e in evals])
  labels = np.concatenate([e['label'].reshape(-1) for e in evals])[mask > 0]
  assert mask.sum() == 360
  expected = np.array([ex['label'] for ex in tfds.as_numpy(digits.as_dataset(split='test'))])
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.bincount(expected, minlength=10))


def test_cifar10_mock_data_runs_every_augmentation(tmp_path):
  spec = ('random_crop(size=32, padding=4)|flip|randaugment(num_ops=2, magnitude=12)'
          '|normalize(cifar)|random_erasing(0.25)')
  with tfds.testing.mock_data(num_examples=12):
    builder = data.get_builder('cifar10', data_dir=str(tmp_path))
    (batch,) = batches(builder, 1, pp=spec, image_size=32, per_device_batch=4, shards=[0, 1], num_shards=2)
    assert batch['image'].shape == (2, 4, 32, 32, 3) and np.isfinite(batch['image']).all()
    inception = batches(builder, 1, pp='inception_crop(24)|flip|normalize(imagenet)', image_size=24,
                        per_device_batch=4)
    assert inception[0]['image'].shape == (1, 4, 24, 24, 3)


def write_image_folder(root, classes=('cat', 'dog'), per_class=6, size=(20, 14)):
  rng = np.random.RandomState(0)
  for split in ('train', 'test'):
    for name in classes:
      os.makedirs(root / split / name)
      for i in range(per_class):
        image = rng.randint(0, 255, (*size, 3), dtype=np.uint8)
        ext = 'png' if i % 2 else 'jpg'
        tf.io.write_file(str(root / split / name / f'{i}.{ext}'),
                         tf.image.encode_png(image) if ext == 'png' else tf.io.encode_jpeg(image))


def test_a_folder_of_the_users_own_images_is_a_dataset(tmp_path):
  write_image_folder(tmp_path)
  builder = data.get_builder('image_folder', str(tmp_path))
  info = data.describe(builder, 'train', 'test')
  assert (info.num_classes, info.num_train, info.num_eval) == (2, 12, 12)
  (batch,) = batches(builder, 1, pp='resize(16)|flip|normalize(imagenet)', image_size=16, per_device_batch=4,
                     shards=[0, 1], num_shards=2)
  assert batch['image'].shape == (2, 4, 16, 16, 3)


def test_unknown_dataset_names_are_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match=r"Unknown dataset 'cifar11'"):
    data.get_builder('cifar11', data_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"image_folder.*needs data.data_dir"):
    data.get_builder('image_folder', None)


def test_preprocessing_specs_parse_keywords_positional_words_and_reject_unknown_ops():
  assert preprocess.parse('resize(32)|normalize(cifar)|randaugment(num_ops=1, magnitude=5)') == [
      ('resize', {'size': 32}), ('normalize', {'stats': 'cifar'}),
      ('randaugment', {'num_ops': 1, 'magnitude': 5})]
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


@pytest.mark.parametrize('flavour', randaugment.FLAVOURS)
def test_randaugment_runs_on_images_of_unknown_static_shape(flavour):
  # Image folders decode to [None, None, None]; every op must work without a static channel count.
  apply = tf.function(lambda x, seed: randaugment.randaugment(x, seed, num_ops=3, magnitude=9, flavour=flavour),
                      input_signature=[tf.TensorSpec([None, None, None], tf.float32), tf.TensorSpec([2], tf.int32)])
  image = tf.random.stateless_uniform((12, 10, 3), (1, 2), 0, 255)
  for seed in range(5):
    assert apply(image, tf.constant([seed, 1])).shape == image.shape


def test_random_erasing_replaces_one_rectangle_with_noise():
  image = tf.ones((16, 16, 3)) * 100.0
  out = preprocess.random_erasing(image, tf.constant([3, 4], tf.int64), prob=1.0)
  changed = np.asarray(tf.reduce_any(out != image, axis=-1))
  rows, cols = np.where(changed)
  assert changed.any() and changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
