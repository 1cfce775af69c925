"""Scanned blocks (`config.model.scan=True`): the blocks under `nn.scan`, their parameters stacked under `blocks`
with a leading depth axis (big_vision's `scan=True` layout), computing what the unrolled blocks compute, and
loading each other's weights both ways."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import isojax
from isojax import models
from isojax.core import sharding
from isojax.core.config import REMAT_POLICIES, base
from isojax.core.validation import ConfigError, validate
from isojax.evaluation import explain
from isojax.models.isotropic import Isotropic, MixingBlock, PoolingHead, remat_policy
from isojax.training import optim, placement, train_step
from isojax.weights import export, pretrained
from tests.test_runs_and_pretrained import short_default_run

# One model of every isotropic family, tiny: (name, fields, image side).
FAMILIES = {
  'ViT': ('ViT-32x3/4-h2-m64', dict(drop_path_rate=0.2), 16),
  'DeiT III': ('DeiT3-32x3/4-h2', {}, 16),
  'CaiT': ('CaiT-32x3/4-h2', {}, 16),
  'Mixer': ('Mixer-32x3/4', {}, 16),
  'ResMLP': ('ResMLP-32x3/4', {}, 16),
  'gMLP': ('gMLP-32x3/4', {}, 16),
  'ConvNeXt': ('ConvNeXt-iso-32x3-p4', {}, 16),
  'ConvMixer': ('ConvMixer-32/3', dict(kernel_size=3, patch_size=4), 16),  # BatchNorm: stacked statistics
}


def _images(side, n=4, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (n, side, side, 3))


def _randomised(variables):
  """Every parameter drawn at random (published inits start heads at zero, which would hide a wrong block)."""
  leaves, tree = jax.tree_util.tree_flatten(variables)
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  return jax.tree_util.tree_unflatten(
    tree, [np.asarray(leaf + 0.1 * jax.random.normal(k, leaf.shape)) for leaf, k in zip(leaves, keys)]
  )


def _pair(family, **extra):
  name, fields, side = FAMILIES[family]
  unrolled = models.create(name, 10, **fields, **extra)
  scanned = models.create(name, 10, **fields, **extra, scan=True)
  variables = _randomised(jax.device_get(unrolled.init(jax.random.PRNGKey(0), _images(side), train=False)))
  return unrolled, scanned, variables, side


def _allclose(got, want, **tolerances):
  jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, **tolerances), got, want)


def _shapes(tree):
  return jax.tree_util.tree_map(np.shape, tree)


@pytest.mark.parametrize('family', FAMILIES)
def test_scanned_blocks_hold_the_unrolled_parameters_stacked_and_compute_the_same_logits(family):
  unrolled, scanned, variables, side = _pair(family)
  stacked = models.stack_blocks(variables)
  fresh = jax.eval_shape(lambda: scanned.init(jax.random.PRNGKey(0), _images(side), train=False))
  assert _shapes(stacked) == _shapes(fresh)  # the scanned model's own layout, depth first
  assert 'block_0' not in stacked['params']
  assert {np.shape(leaf)[0] for leaf in jax.tree_util.tree_leaves(stacked['params']['blocks'])} == {3}
  x = _images(side, seed=1)
  np.testing.assert_allclose(scanned.apply(stacked, x), unrolled.apply(variables, x), rtol=1e-5, atol=1e-5)
  back = models.unstack_blocks(stacked)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(variables)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, variables)


def test_a_scanned_convmixer_updates_its_stacked_batch_statistics_as_the_unrolled_one_does():
  unrolled, scanned, variables, side = _pair('ConvMixer')
  x = _images(side, seed=2)
  logits, state = unrolled.apply(variables, x, train=True, mutable=['batch_stats'])
  scanned_logits, scanned_state = scanned.apply(models.stack_blocks(variables), x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(scanned_logits, logits, rtol=1e-5, atol=1e-5)
  expected = models.stack_blocks({'batch_stats': jax.device_get(state['batch_stats'])})['batch_stats']
  _allclose(jax.device_get(scanned_state['batch_stats']), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  'family,policy', [('ViT', 'nothing_saveable'), ('ConvMixer', 'dots_with_no_batch_dims_saveable')]
)
def test_scanned_and_rematerialised_blocks_give_the_unrolled_gradients(family, policy):
  unrolled, _, variables, side = _pair(family)
  name, fields, _ = FAMILIES[family]
  scanned = models.create(name, 10, **fields, scan=True, remat=True, remat_policy=policy)
  x = _images(side, seed=3)
  labels = jax.nn.one_hot(jnp.arange(4) % 10, 10)

  def loss(model, params, others):
    logits, _ = model.apply({'params': params, **others}, x, train=True, mutable=['batch_stats'])
    return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), -1))

  stacked = models.stack_blocks(variables)
  others = lambda v: {k: t for k, t in v.items() if k != 'params'}
  # train=True with drop-path on draws other masks under scan; compare with it off
  want = jax.grad(functools.partial(loss, unrolled.clone(drop_path_rate=0.0)))(variables['params'], others(variables))
  got = jax.grad(functools.partial(loss, scanned.clone(drop_path_rate=0.0)))(stacked['params'], others(stacked))
  _allclose(got, models.stack_blocks({'params': want})['params'], rtol=1e-4, atol=1e-6)


class _Zeros(nn.Module):
  """A stem whose tokens are all zero: [batch, 1 token, width 1]."""

  @nn.compact
  def __call__(self, images, train=False):
    return jnp.zeros((images.shape[0], 1, 1))


class _AddsOne(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return jnp.ones_like(x)


class _AddsZero(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return jnp.zeros_like(x)


def test_under_scan_each_block_drops_its_branch_at_its_own_scheduled_rate():
  """Blocks whose token branch adds 1: a block's increment is 0 (dropped) or 1 / (1 - rate) (kept, rescaled), and
  the fraction dropped follows the linear schedule 0, 0.3, 0.6, which scan hands each layer as its slice."""
  block = functools.partial(MixingBlock, token_mixer=_AddsOne, channel_mixer=_AddsZero)
  model = Isotropic(_Zeros(), block, PoolingHead(1), depth=3, drop_path_rate=0.6, scan=True)
  images = jnp.zeros((4000, 1, 1, 1))
  variables = model.init(jax.random.PRNGKey(0), images)
  _, kept = models.features(model, variables, images, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
  previous = np.zeros((4000,))
  for i, rate in enumerate([0.0, 0.3, 0.6]):
    output = np.asarray(kept[f'block{i:02d}']).reshape(-1)
    increment, previous = output - previous, output
    dropped = np.isclose(increment, 0.0)
    assert np.all(dropped | np.isclose(increment, 1 / (1 - rate), rtol=1e-5))
    assert abs(dropped.mean() - rate) < 0.05, (i, rate, dropped.mean())


def test_features_of_a_scanned_model_are_the_unrolled_ones_block_by_block():
  unrolled, scanned, variables, side = _pair('ViT')
  x = _images(side, seed=4)
  _, want = models.features(unrolled, variables, x)
  _, got = models.features(scanned, models.stack_blocks(variables), x)
  assert sorted(got) == sorted(want) == sorted(['block00', 'block01', 'block02', 'pre_logits'])
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5)


def test_attention_maps_of_a_scanned_vit_read_it_unrolled():
  unrolled, scanned, variables, side = _pair('ViT')
  x = _images(side, seed=5)
  want = explain.attention_maps(unrolled, variables, x)
  got = explain.attention_maps(scanned, models.stack_blocks(variables), x)
  assert len(got) == len(want) == 3
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('direction', ['unrolled weights into a scanned model', 'scanned weights into an unrolled one'])
def test_pretrained_weights_load_across_the_two_layouts_with_equal_logits(direction):
  unrolled, scanned, variables, side = _pair('ViT')
  if direction.startswith('unrolled'):
    source, model, reference = variables, scanned, unrolled
  else:
    source, model, reference = models.stack_blocks(variables), unrolled, scanned
  init = lambda: model.init(jax.random.PRNGKey(0), _images(side), train=False)
  loaded = pretrained.adapt(source, jax.eval_shape(init), initialise=lambda: jax.device_get(init()))
  assert models.is_scanned(loaded) == (model is scanned)
  x = _images(side, seed=6)
  np.testing.assert_allclose(model.apply(loaded, x), reference.apply(source, x), rtol=1e-5, atol=1e-5)


def test_a_remat_policy_outside_jax_checkpoint_policies_is_refused_naming_the_choices():
  assert all(callable(remat_policy(name)) for name in REMAT_POLICIES)
  with pytest.raises(ValueError, match=r"Unknown remat_policy 'save_everything'.*nothing_saveable"):
    remat_policy('save_everything')
  config = base()
  config.remat_policy = 'save_everything'
  with pytest.raises(ConfigError, match=r'remat_policy.*nothing_saveable'):
    validate(config)


def test_scan_is_a_model_field_of_every_isotropic_family_and_remat_policy_a_run_level_option():
  for name, _, _ in FAMILIES.values():
    fields = models.model_config(name)
    assert fields.scan is False and 'remat_policy' not in fields
  with pytest.raises(ValueError, match=r"Unknown override\(s\) \['scan'\]"):
    models.create('ResNet-50', 10, scan=True)  # a pyramid has no stack of equal blocks


def test_tensor_parallel_rules_split_the_stacked_blocks_heads_and_hidden_units_never_their_depth():
  _, scanned, _, side = _pair('ViT')
  shapes = jax.eval_shape(lambda: scanned.init(jax.random.PRNGKey(0), _images(side), train=False))
  mesh = sharding.make_mesh('data:4,model:2')
  specs = sharding.specs({'params': shapes['params']}, sharding.TENSOR_PARALLEL, mesh)
  blocks = specs['params']['blocks']
  assert blocks['token_mixing']['attention']['qkv']['kernel'] == jax.sharding.PartitionSpec(None, None, 'model')
  assert blocks['token_mixing']['attention']['out']['kernel'] == jax.sharding.PartitionSpec(None, 'model')
  assert blocks['channel_mixing']['Dense_1']['kernel'] == jax.sharding.PartitionSpec(None, 'model')


def _sgd():
  config = base().optimizer
  config.update(dict(name='sgd', lr=0.1, momentum=0.9, warmup_steps=0, weight_decay=1e-2))
  return optim.create(config, total_steps=10)


def _ten_jitted_steps(model, mesh_spec, params, strategy):
  """Ten steps of the jit path on `mesh_spec`, starting from `params` (momentum zero, EMA = params)."""
  mesh = sharding.make_mesh(mesh_spec)
  tx, lr = _sgd()
  _, placements = train_step.state_placements(model, tx, (16, 16, 3), True, mesh, strategy)
  host = train_step.init_state(model, tx, jax.random.PRNGKey(0), (16, 16, 3), ema=True)
  state = placement.Placement(mesh, placements).place(host.replace(params=params, ema_params=params))
  options = train_step.StepOptions(num_classes=10, ema_decay=0.9)
  step = train_step.jitted_train_step(mesh, placements, model=model, tx=tx, learning_rate=lr, options=options)
  rng, losses = np.random.RandomState(0), []
  for _ in range(10):
    images, labels = rng.normal(size=(32, 16, 16, 3)).astype(np.float32), rng.randint(0, 10, 32).astype(np.int32)
    batch = {'image': images, 'label': labels}
    state, metrics = step(state, batch, jax.random.PRNGKey(1))
    losses.append(float(metrics['loss']))
  return jax.device_get(state), losses


@pytest.mark.slow
@pytest.mark.parametrize(
  'mesh_spec,strategy', [('fsdp:8', (('.*', 'fsdp(min_size_mb=0)'),)), ('data:4,model:2', sharding.TENSOR_PARALLEL)]
)
def test_ten_scanned_steps_on_a_mesh_equal_ten_unrolled_steps(mesh_spec, strategy):
  unrolled, scanned, variables, _ = _pair('ViT')
  unrolled, scanned = unrolled.clone(drop_path_rate=0.0), scanned.clone(drop_path_rate=0.0)
  want, want_losses = _ten_jitted_steps(unrolled, mesh_spec, variables['params'], strategy)
  got, got_losses = _ten_jitted_steps(scanned, mesh_spec, models.stack_blocks(variables)['params'], strategy)
  np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
  for tree in ('params', 'ema_params'):
    expected = models.stack_blocks({'params': getattr(want, tree)})['params']
    _allclose(getattr(got, tree), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_scanned_run_trains_on_the_jit_path_and_its_weights_open_in_an_unrolled_model(tmp_path):
  """`config.model.scan=True` from the config down: a run with scanned, rematerialised blocks on fsdp:8, opened by
  `isojax.load` in its own layout, and loaded by `pretrained.load` into the unrolled model with equal logits."""
  scanned = {'model.name': 'ConvMixer-16/2', 'model.scan': True, 'remat': True, 'remat_policy': 'dots_saveable'}
  on_fsdp8 = {'parallelism': 'jit', 'mesh': 'fsdp:8'}
  config, result = short_default_run(tmp_path / 'run', tmp_path / 'tfds', **scanned, **on_fsdp8)
  assert result.summary['steps'] == 4 and np.isfinite(result.summary['final_loss'])
  model, variables, _ = isojax.load(str(tmp_path / 'run'))
  assert model.scan and models.is_scanned(variables)
  fields = dict(kernel_size=config.model.kernel_size, patch_size=config.model.patch_size)
  unrolled = models.create('ConvMixer-16/2', 10, **fields)
  loaded = pretrained.load(str(tmp_path / 'run'), unrolled, image_size=8, channels=1)
  assert 'block_1' in loaded['params'] and 'blocks' not in loaded['params']
  images = jnp.asarray(np.random.RandomState(0).normal(size=(2, 8, 8, 1)), jnp.float32)
  np.testing.assert_allclose(unrolled.apply(loaded, images), model.apply(variables, images), rtol=1e-5, atol=1e-5)
  exported = export.from_run(str(tmp_path / 'run'))  # what a converter lowers: the plain stack, no loop
  assert not exported.module.scan and not models.is_scanned(exported.variables)
  np.testing.assert_allclose(
    exported.module.apply(exported.variables, images), model.apply(variables, images), atol=1e-5
  )


def test_a_freeze_rule_naming_unrolled_blocks_is_refused_on_scanned_parameters_saying_why():
  scanned = models.stack_blocks({'params': {'block_0': {'kernel': 0.0}, 'block_1': {'kernel': 0.0}, 'head': {}}})
  assert optim.regex_mask('blocks/.*')(scanned['params'])['blocks']['kernel']
  with pytest.raises(ValueError, match=r"'block_0/\.\*' matches no parameter path.*scanned.*blocks/"):
    optim.regex_mask('block_0/.*', 'optimizer.freeze')(scanned['params'])
