"""Opening runs (`isojax.load`) and starting from pretrained weights (`config.init_from`)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import isojax
from isojax import models
from isojax.core import loading
from isojax.training import loop
from isojax.weights import pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.xdist_group('finished_run')  # one worker trains the module's run once


def short_default_run(workdir, tfds_dir, **overrides):
  config = loading.load(
    os.path.join(ROOT, 'configs', 'default.py'),
    {
      'num_steps': 4,
      'eval_every': 4,
      'checkpoint.every': 2,
      'log_every': 2,
      'batch_size': 16,
      'eval_batch_size': 368,
      'model.name': 'ConvMixer-16/1',
      'data.data_dir': str(tfds_dir),
      **overrides,
    },
  )
  return config, loop.train_and_evaluate(config, str(workdir))


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  tfds_dir = tmp_path_factory.mktemp('tfds')
  workdir = tmp_path_factory.mktemp('run')
  config, result = short_default_run(workdir, tfds_dir)
  return workdir, tfds_dir, result


@pytest.mark.slow
def test_load_gives_the_model_and_variables_of_the_last_checkpoint(finished_run):
  workdir, _, result = finished_run
  model, variables, config = isojax.load(str(workdir))
  assert config.model.name == 'ConvMixer-16/1' and set(variables) == {'params', 'batch_stats'}
  for a, b in zip(jax.tree_util.tree_leaves(variables['params']), jax.tree_util.tree_leaves(result.state.params)):
    np.testing.assert_array_equal(a, b)
  logits = model.apply(variables, jnp.zeros((2, 8, 8, 1)), train=False)
  assert logits.shape == (2, 10)


def test_load_of_a_missing_step_or_workdir_is_a_clear_error(finished_run, tmp_path):
  workdir, _, _ = finished_run
  with pytest.raises(ValueError, match=r'No checkpoint for step 3 .* kept steps: \[2, 4\]'):
    isojax.load(str(workdir), step=3)
  with pytest.raises(FileNotFoundError):
    isojax.load(str(tmp_path))


@pytest.mark.slow
def test_init_from_a_run_starts_from_its_weights_with_a_new_head_size(finished_run, tmp_path):
  source, tfds_dir, result = finished_run
  # Same architecture, 10 -> 10 classes: every trained weight carries over before the first step.
  model = models.create('ConvMixer-16/1', 10, kernel_size=3, patch_size=2)
  variables = pretrained.load(str(source), model, image_size=8, channels=1)
  np.testing.assert_array_equal(
    variables['params']['block_0']['token_mixing']['depthwise']['kernel'],
    result.state.params['block_0']['token_mixing']['depthwise']['kernel'],
  )
  # A 3-class model keeps the body and gets a fresh head, initialised as the family starts one.
  small = models.create('ConvMixer-16/1', 3, kernel_size=3, patch_size=2)
  variables = pretrained.load(str(source), small, image_size=8, channels=1)
  fresh = small.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32))['params']['head']['kernel']
  np.testing.assert_array_equal(variables['params']['head']['kernel'], fresh)
  np.testing.assert_array_equal(
    variables['params']['block_0']['token_mixing']['depthwise']['kernel'],
    result.state.params['block_0']['token_mixing']['depthwise']['kernel'],
  )
  # And training with init_from runs end to end.
  _, fine_tuned = short_default_run(tmp_path / 'ft', tfds_dir, init_from=str(source), num_steps=2)
  assert fine_tuned.summary['steps'] == 2


def test_create_from_a_run_builds_its_model_and_can_change_the_head(finished_run):
  workdir, _, result = finished_run
  model, variables = pretrained.create(str(workdir))
  images = jnp.asarray(np.random.RandomState(0).normal(size=(2, 8, 8, 1)), jnp.float32)
  reference, reference_variables, _ = isojax.load(str(workdir))
  np.testing.assert_array_equal(model.apply(variables, images), reference.apply(reference_variables, images))
  model, variables = pretrained.create(str(workdir), num_classes=3)
  assert model.apply(variables, images).shape == (2, 3)
  np.testing.assert_array_equal(
    variables['params']['block_0']['token_mixing']['depthwise']['kernel'],
    result.state.params['block_0']['token_mixing']['depthwise']['kernel'],
  )


def test_another_architecture_is_refused_naming_the_first_parameter_that_does_not_fit(finished_run):
  source, _, _ = finished_run
  wider = models.create('ConvMixer-32/1', 10, kernel_size=3, patch_size=2)
  with pytest.raises(ValueError, match=r"'(params|batch_stats)/block_0/.*' has shape .*16.* expects .*32"):
    pretrained.load(str(source), wider, image_size=8, channels=1)


def test_learned_position_embeddings_are_resized_over_the_grid_keeping_the_class_token():
  grid = np.arange(4 * 4, dtype=np.float32).reshape(1, 16, 1) * np.ones((1, 1, 8), np.float32)
  posemb = np.concatenate([np.full((1, 1, 8), -7.0, np.float32), grid], axis=1)
  resized = pretrained.resize_posemb(posemb, (1, 1 + 8 * 8, 8))
  assert resized.shape == (1, 65, 8)
  np.testing.assert_array_equal(resized[0, 0], -7.0)
  rows = resized[0, 1:, 0].reshape(8, 8)
  assert (np.diff(rows, axis=1) >= 0).all() and (np.diff(rows, axis=0) >= 0).all()  # order kept


@pytest.mark.slow
def test_a_vit_fine_tuned_at_a_larger_image_size_gets_resized_position_embeddings():
  small = models.create('ViT-16x1/4-h2-m32', 10)
  variables = jax.device_get(jax.jit(lambda: small.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3))))())
  larger = models.create('ViT-16x1/4-h2-m32', 5)
  target = jax.device_get(jax.jit(lambda: larger.init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3))))())
  adapted = pretrained.adapt(variables, target)
  assert adapted['params']['stem']['pos_embedding'].shape == (1, 1 + 64, 16)
  assert adapted['params']['head']['kernel'].shape == (16, 5)
  assert larger.apply(adapted, jnp.ones((1, 32, 32, 3))).shape == (1, 5)


@pytest.mark.slow
def test_the_model_is_initialised_only_when_a_layer_must_start_fresh():
  # pretrained.create and load hand adapt the shapes alone (jax.eval_shape): compiling a large
  # model's init takes seconds, and only a re-initialised head needs its values.
  ten, five = models.create('ViT-16x1/4-h2-m32', 10), models.create('ViT-16x1/4-h2-m32', 5)
  init = {n: (lambda m=m: m.init(jax.random.PRNGKey(1), jnp.zeros((1, 16, 16, 3)))) for n, m in ((10, ten), (5, five))}
  weights = jax.device_get(jax.jit(init[10])())
  calls = []

  def initialise(classes):
    calls.append(classes)
    return jax.device_get(jax.jit(init[classes])())

  same = pretrained.adapt(weights, jax.eval_shape(init[10]), initialise=lambda: initialise(10))
  assert calls == []
  for a, b in zip(jax.tree_util.tree_leaves(same), jax.tree_util.tree_leaves(weights)):
    np.testing.assert_array_equal(a, b)
  new_head = pretrained.adapt(weights, jax.eval_shape(init[5]), initialise=lambda: initialise(5))
  assert calls == [5] and new_head['params']['head']['kernel'].shape == (16, 5)
  np.testing.assert_array_equal(
    new_head['params']['stem']['patch_embed']['embedding']['kernel'],
    weights['params']['stem']['patch_embed']['embedding']['kernel'],
  )


def test_predict_applies_the_runs_eval_preprocessing_to_raw_images(finished_run):
  workdir, tfds_dir, _ = finished_run
  import tensorflow_datasets as tfds

  from isojax import data

  model, variables, config = isojax.load(str(workdir))
  builder = data.get_builder('isojax_digits', str(tfds_dir))
  examples = list(tfds.as_numpy(builder.as_dataset(split='test').take(5)))
  probabilities = isojax.predict(model, variables, config, [ex['image'] for ex in examples])
  assert probabilities.shape == (5, 10)
  np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
  # The same as normalising by hand the way configs/default.py's eval_pp does.
  by_hand = np.stack([(ex['image'].astype(np.float32) - 127.5) / 127.5 for ex in examples])
  expected = jax.nn.softmax(model.apply(variables, by_hand, train=False))
  np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)


def write_png(path, image):
  import tensorflow as tf

  tf.io.write_file(str(path), tf.image.encode_png(image))


@pytest.mark.slow
def test_a_run_saved_on_eight_devices_opens_in_a_fresh_one_device_process(finished_run, tmp_path):
  import subprocess
  import sys

  workdir, _, result = finished_run  # trained under pytest's 8 forced CPU devices
  assert jax.local_device_count() == 8
  write_png(tmp_path / 'digit.png', np.full((8, 8, 1), 200, np.uint8))
  env = {
    **os.environ,
    'XLA_FLAGS': '--xla_force_host_platform_device_count=1',
    'PYTHONPATH': os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])),
  }
  script = (
    'import sys, jax, numpy as np, isojax\n'
    'assert jax.local_device_count() == 1\n'
    'model, variables, config = isojax.load(sys.argv[1])\n'
    'np.savez(sys.argv[2], *jax.tree_util.tree_leaves(variables["params"]))\n'
  )
  subprocess.run(
    [sys.executable, '-c', script, str(workdir), str(tmp_path / 'p.npz')],
    env=env,
    check=True,
    capture_output=True,
    timeout=300,
  )
  loaded = np.load(tmp_path / 'p.npz')
  for i, leaf in enumerate(jax.tree_util.tree_leaves(result.state.params)):
    np.testing.assert_array_equal(loaded[f'arr_{i}'], leaf)
  # And the command line prints the top-5 class names for image files.
  out = subprocess.run(
    [sys.executable, '-m', 'isojax.predict', f'--workdir={workdir}', '--step=best', str(tmp_path / 'digit.png')],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  line = out.stdout.strip().splitlines()[-1]
  assert line.startswith(str(tmp_path / 'digit.png') + ': ') and line.count('%') == 5
