"""The pure train/eval steps under pmap: N devices == 1 device, accumulation, mixing, EMA, bf16.

Runs without TensorFlow (benchmarks/accelerator_check.sh on a GPU machine that lacks it): the
two tests that need it say so and skip there."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isojax import models
from isojax.core.config import base
from isojax.training import optim, train_step


def tiny(name, **kw):
  shrink = {'ViT': ('ViT-32x2/4-h2-m64', {}), 'ConvMixer': ('ConvMixer-32/2', dict(kernel_size=3, patch_size=4))}
  small, fields = shrink[name.split('-')[0]]
  return models.create(small, num_classes=5, **{**fields, **kw})


def setup(model, optimizer='adamw', ema=False, **opt):
  config = base().optimizer
  config.update(dict(name=optimizer, lr=1e-2, warmup_steps=0, **opt))
  tx, lr = optim.create(config, total_steps=10)
  state = train_step.init_state(model, tx, jax.random.PRNGKey(0), (16, 16, 3), ema=ema)
  return state, tx, lr


def global_batch(n=16, seed=0):
  rng = np.random.RandomState(seed)
  return {'image': rng.normal(size=(n, 16, 16, 3)).astype(np.float32), 'label': rng.randint(0, 5, n).astype(np.int32)}


def run_pmapped(state, batch, devices, steps=1, num_classes=5, **static):
  """`static`: the step's model, tx and learning_rate, and any StepOptions field."""
  fields = {f.name for f in dataclasses.fields(train_step.StepOptions)}
  options = train_step.StepOptions(num_classes, **{k: v for k, v in static.items() if k in fields})
  static = {k: v for k, v in static.items() if k not in fields}
  one = functools.partial(train_step.train_step, **static, options=options)
  step = jax.pmap(one, axis_name=train_step.AXIS, in_axes=(0, 0, None), devices=devices)
  n = len(devices)
  replicated = jax.tree_util.tree_map(lambda x: jnp.stack([x] * n), state)
  split = jax.tree_util.tree_map(lambda x: x.reshape(n, -1, *x.shape[1:]), batch)
  for _ in range(steps):
    replicated, metrics = step(replicated, split, jax.random.PRNGKey(1))
  return jax.tree_util.tree_map(lambda x: np.asarray(x[0]), replicated), jax.tree_util.tree_map(np.asarray, metrics)


@pytest.mark.slow
def test_uint8_batches_normalised_in_the_step_train_exactly_like_batches_normalised_on_the_host():
  tf = pytest.importorskip('tensorflow', reason='the host-side normalize is a tf op')
  from isojax.data import preprocess

  model = tiny('ViT-S/16')
  state, tx, lr = setup(model)
  batch = global_batch()
  pixels = np.random.RandomState(1).randint(0, 256, batch['image'].shape).astype(np.uint8)
  host = preprocess.normalize(tf.constant(pixels, tf.float32), None, 'imagenet').numpy()
  one_device = functools.partial(train_step.train_step, model=model, tx=tx, learning_rate=lr, axis_name=None)
  normalization = preprocess.device_normalization('flip|normalize(imagenet)')
  step = jax.jit(
    functools.partial(one_device, options=train_step.StepOptions(num_classes=5, image_normalization=normalization))
  )
  plain = jax.jit(functools.partial(one_device, options=train_step.StepOptions(num_classes=5)))
  on_device, m1 = step(state, {**batch, 'image': pixels}, jax.random.PRNGKey(1))
  on_host, m2 = plain(state, {**batch, 'image': host}, jax.random.PRNGKey(1))
  np.testing.assert_allclose(m1['loss'], m2['loss'], rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(on_device.params), jax.tree_util.tree_leaves(on_host.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  with pytest.raises(TypeError, match='expects the uint8 batches of data.uint8_batches; got float32 images'):
    step(state, {**batch, 'image': host}, jax.random.PRNGKey(1))


# 36 s for the two: slow (the fast tier's tests/test_sharding.py runs ConvMixer's pmapped step on 8 devices)
@pytest.mark.slow
@pytest.mark.parametrize('name', ['ViT-S/16', 'ConvMixer-256/8'])
def test_one_step_on_eight_devices_equals_one_step_on_one_device(name):
  assert jax.local_device_count() == 8, 'conftest forces 8 CPU devices'
  model = tiny(name, axis_name=train_step.AXIS) if name.startswith('Conv') else tiny(name)
  # SGD is linear in the gradient; Adam would amplify float noise in gradients that are
  # exactly zero in exact arithmetic (attention key biases) into lr-sized steps.
  state, tx, lr = setup(model, optimizer='sgd')
  static = dict(model=model, tx=tx, learning_rate=lr)
  one, m1 = run_pmapped(state, global_batch(), jax.local_devices()[:1], steps=2, **static)
  eight, m8 = run_pmapped(state, global_batch(), jax.local_devices(), steps=2, **static)
  for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(eight)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  np.testing.assert_allclose(m1['loss'][0], m8['loss'], rtol=1e-5)  # every device reports the mean
  if name.startswith('Conv'):
    assert jax.tree_util.tree_leaves(eight.batch_stats)  # BatchNorm statistics were synced, too


@pytest.mark.slow
def test_gradient_accumulation_equals_the_full_batch_step():
  model = tiny('ViT-S/16')
  state, tx, lr = setup(model, optimizer='sgd')
  static = dict(model=model, tx=tx, learning_rate=lr)
  full, _ = run_pmapped(state, global_batch(), jax.local_devices()[:2], **static)
  accumulated, _ = run_pmapped(state, global_batch(), jax.local_devices()[:2], accum_steps=4, **static)
  for a, b in zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(accumulated.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_dropout_keys_differ_per_device_and_per_step():
  model = tiny('ViT-S/16', dropout_rate=0.5)
  state, tx, lr = setup(model)
  # A zero head gives loss log(5) whatever the dropout mask; a random one lets the mask show.
  head = {'kernel': jax.random.normal(jax.random.PRNGKey(2), (32, 5)), 'bias': jnp.zeros(5)}
  state = state.replace(params={**state.params, 'head': head})
  static = dict(model=model, tx=tx, learning_rate=lr)
  # The same examples on every device: equal per-device losses would mean equal dropout masks.
  same = {'image': np.tile(global_batch(2)['image'], (4, 1, 1, 1)), 'label': np.tile(global_batch(2)['label'], 4)}
  _, metrics = run_pmapped(state, same, jax.local_devices()[:4], **static)
  step = jax.pmap(
    functools.partial(train_step.train_step, axis_name=None, options=train_step.StepOptions(5), **static),
    in_axes=(0, 0, None),
    devices=jax.local_devices()[:1],
  )
  rep = jax.tree_util.tree_map(lambda x: x[None], state)
  losses = []
  for _ in range(2):
    rep, m = step(rep, jax.tree_util.tree_map(lambda x: x[None], same), jax.random.PRNGKey(1))
    losses.append(float(m['loss'][0]))
  assert losses[0] != losses[1]
  # And the pmean'd loss of 4 devices differs from any single-device draw.
  assert float(metrics['loss'][0]) not in losses


@pytest.mark.slow
def test_mixup_and_cutmix_keep_targets_normalised_and_mix_images():
  images = jnp.stack([jnp.full((8, 8, 3), float(i)) for i in range(4)])
  targets = jax.nn.one_hot(jnp.arange(4), 4)
  for mix_kw in (dict(mixup_alpha=1.0, cutmix_alpha=0.0), dict(mixup_alpha=0.0, cutmix_alpha=1.0)):
    mixed, soft = train_step.mix(images, targets, jax.random.PRNGKey(3), **mix_kw)
    np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)
    assert not np.allclose(mixed, images)
    # Each mixed image's pixels average to the label weights' average of the two sources.
    np.testing.assert_allclose(mixed.mean(axis=(1, 2, 3)), soft @ jnp.arange(4.0), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_ema_follows_the_parameters_slowly():
  model = tiny('ViT-S/16')
  state, tx, lr = setup(model, ema=True)
  after, _ = run_pmapped(
    state,
    global_batch(),
    jax.local_devices()[:1],
    steps=3,
    model=model,
    tx=tx,
    learning_rate=lr,
    num_classes=5,
    ema_decay=0.9,
  )
  kernel = lambda p: p['block_0']['channel_mixing']['Dense_0']['kernel']
  start, params, ema = kernel(state.params), kernel(after.params), kernel(after.ema_params)
  assert np.abs(ema - start).max() < np.abs(params - start).max()
  assert np.abs(ema - start).max() > 0


@pytest.mark.slow
def test_bfloat16_training_keeps_float32_parameters_and_optimizer_state():
  model = tiny('ViT-S/16', dtype=jnp.bfloat16)
  state, tx, lr = setup(model)
  after, metrics = run_pmapped(
    state, global_batch(), jax.local_devices()[:2], model=model, tx=tx, learning_rate=lr, num_classes=5
  )
  assert all(
    x.dtype == np.float32
    for x in jax.tree_util.tree_leaves((after.params, after.opt_state))
    if np.issubdtype(x.dtype, np.floating)
  )
  assert np.isfinite(metrics['loss']).all()


@pytest.mark.slow  # 13 s: an evaluator compiled over 8 devices
def test_evaluation_counts_only_real_examples():
  pytest.importorskip('tensorflow', reason='isojax.evaluation reads data through tf.data')
  from isojax.evaluation import classification

  model = tiny('ViT-S/16')
  state, _, _ = setup(model)
  batch = {**global_batch(8), 'mask': np.array([1, 1, 1, 0, 0, 0, 0, 0], np.float32)}
  sums = classification.eval_sums(state.variables(), batch, model=model, num_classes=5, axis_name=None)
  assert float(sums['count']) == 3 and 0 <= float(sums['correct']) <= 3
  assert float(sums['correct_top5']) == 3  # 5 classes: the top-5 always contains the label
