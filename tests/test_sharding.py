"""The jit path's placement: meshes from axis sizes, big_vision-style rules over parameter paths, per-device bytes,
and the jitted step computing what the pmapped step computes on every mesh (8 forced CPU devices)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from isojax import models
from isojax.core import sharding
from isojax.core.config import base
from isojax.training import optim, placement, train_step

MESHES = ['data:8', 'data:2,fsdp:4', 'fsdp:8', 'data:4,model:2']


def test_a_mesh_is_axis_sizes_and_minus_one_takes_the_devices_left():
  assert sharding.mesh_shape('data:-1', 8) == {'data': 8}
  assert sharding.mesh_shape('data:2,fsdp:-1', 8) == {'data': 2, 'fsdp': 4}
  assert sharding.mesh_shape('fsdp:8', 8) == {'fsdp': 8}
  mesh = sharding.make_mesh('model:2,data:4')
  assert mesh.axis_names == ('data', 'model') and dict(mesh.shape) == {'data': 4, 'model': 2}


@pytest.mark.parametrize(
  'spec,message',
  [
    ('fsdp:4', r"mesh='fsdp:4' does not fit the 8 devices: its fixed sizes multiply to 4"),
    ('data:3,fsdp:-1', r'does not fit the 8 devices'),
    ('data:-1,fsdp:-1', r'does not fit'),
    ('pipeline:8', r"'pipeline:8' is not an axis size; write axis:size pairs over \('data', 'fsdp', 'model'\)"),
    ('data:0', r"'data:0' is not an axis size"),
    ('data:4,data:2', r"'data:2' is not an axis size.*each axis once"),
  ],
)
def test_a_mesh_that_does_not_fit_the_devices_is_refused_saying_what_would(spec, message):
  with pytest.raises(sharding.ShardingError, match=message):
    sharding.mesh_shape(spec, 8)


def shapes(**arrays):
  return {name: jax.ShapeDtypeStruct(shape, jnp.float32) for name, shape in arrays.items()}


def test_fsdp_splits_the_largest_dimension_it_divides_of_arrays_above_the_minimum_size():
  mesh = sharding.make_mesh('data:2,fsdp:4')
  tree = {'params': shapes(big=(1024, 2048), odd=(1025, 2047), small=(64, 64), lopsided=(4096, 257))}
  got = sharding.specs(tree, [('.*', 'fsdp(axis=fsdp, min_size_mb=1)')], mesh)['params']
  assert got == {'big': P(None, 'fsdp'), 'odd': P(), 'small': P(), 'lopsided': P('fsdp')}
  placed = sharding.shardings(tree, [('.*', 'fsdp(axis=fsdp, min_size_mb=1)')], mesh)
  assert sharding.whole_above_minimum(tree, placed, 1) == ['params/odd (1025, 2047)']
  total, per_device = sharding.state_bytes(tree, placed)
  assert total == 4 * (1024 * 2048 + 1025 * 2047 + 64 * 64 + 4096 * 257)
  assert per_device == 4 * (1024 * 2048 // 4 + 1025 * 2047 + 64 * 64 + 4096 * 257 // 4)


def test_the_first_matching_rule_places_an_array_and_unmatched_arrays_are_replicated():
  mesh = sharding.make_mesh('fsdp:4,model:2')
  tree = {'params': {'qkv': shapes(kernel=(64, 192)), 'norm': shapes(scale=(64,))}}
  strategy = [(r'.*/qkv/kernel', 'shard_dim(axis=model, dim=-1)|fsdp(min_size_mb=0)'), (r'.*/norm/.*', 'replicate')]
  got = sharding.specs(tree, strategy, mesh)['params']
  assert got == {'qkv': {'kernel': P('fsdp', 'model')}, 'norm': {'scale': P()}}
  assert sharding.specs({'bias': jnp.zeros(4)}, [], mesh) == {'bias': P()}


@pytest.mark.parametrize(
  'tactic,message',
  [
    (
      'shard_dim(axis=model, dim=0)',
      r'cannot shard params/w \(5, 6\): dimension 0 \(size 5\) is not divisible by model:2',
    ),
    ('shard_dim(axis=model, dim=2)', r'cannot shard params/w \(5, 6\): it has 2 dimension'),
    ('shard_dim(axis=data, dim=1)', r"the mesh \{'fsdp': 4, 'model': 2\} has no axis 'data'"),
    ('tile(axis=model)', r"unknown tactic 'tile'; tactics: \['fsdp', 'replicate', 'shard_dim'\]"),
    ('fsdp(min_size_mb=0)|replicate', r'replicate cannot apply to params/w: an earlier tactic sharded it'),
  ],
)
def test_a_rule_that_cannot_place_an_array_names_the_array_its_dimension_and_the_axis(tactic, message):
  mesh = sharding.make_mesh('fsdp:4,model:2')
  tree = {'params': {'w': jax.ShapeDtypeStruct((5, 6) if 'fsdp' not in tactic else (8, 6), jnp.float32)}}
  if 'fsdp' in tactic:
    message = message.replace(r'params/w \(5, 6\)', r'params/w \(8, 6\)')
  with pytest.raises(sharding.ShardingError, match=message):
    sharding.specs(tree, [('.*', tactic)], mesh)


def test_a_pattern_that_is_not_a_regex_is_refused_naming_it():
  with pytest.raises(sharding.ShardingError, match=r"pattern '\[block' is not a regex"):
    sharding.specs({'w': jnp.zeros(4)}, [('[block', 'replicate')], sharding.make_mesh('data:8'))


def test_the_default_strategy_is_tensor_parallel_on_model_then_fsdp_on_fsdp():
  assert sharding.default_strategy(sharding.make_mesh('data:8')) == ()
  assert sharding.default_strategy(sharding.make_mesh('fsdp:8')) == ((r'.*', 'fsdp(axis=fsdp, min_size_mb=1)'),)
  both = sharding.default_strategy(sharding.make_mesh('data:2,fsdp:2,model:2'))
  assert both[: len(sharding.TENSOR_PARALLEL)] == sharding.TENSOR_PARALLEL and both[-1][0] == '.*'


# --- the jitted step computes the pmapped step ----------------------------------------------------------------

TINY = {
  'ViT': ('ViT-32x2/4-h2-m64', {}),
  'Mixer': ('Mixer-32x2/4', {}),
  'ConvMixer': ('ConvMixer-32/2', dict(kernel_size=3, patch_size=4)),  # BatchNorm: synced over the batch
}
STRATEGY = {  # every array split where it can be: the tiny models are far below the default 4 MiB minimum
  'data:8': (),
  'data:2,fsdp:4': (('.*', 'fsdp(min_size_mb=0)'),),
  'fsdp:8': (('.*', 'fsdp(min_size_mb=0)'),),
  'data:4,model:2': sharding.TENSOR_PARALLEL,
}


def _setup(family, axis_name):
  name, fields = TINY[family]
  model = models.create(name, num_classes=8, axis_name=axis_name, **fields) if family == 'ConvMixer' else None
  model = model or models.create(name, num_classes=8, **fields)
  # SGD with momentum (a state to shard like the parameters): Adam would turn the float noise of gradients that
  # are exactly zero in exact arithmetic (attention key biases) into lr-sized steps, different on each path.
  config = base().optimizer
  config.update(dict(name='sgd', lr=0.1, momentum=0.9, warmup_steps=0, weight_decay=1e-2))
  tx, lr = optim.create(config, total_steps=10)
  return model, tx, dict(model=model, tx=tx, learning_rate=lr, num_classes=8)


def _batches(steps=10, n=32):
  rng = np.random.RandomState(0)
  return [
    {'image': rng.normal(size=(n, 16, 16, 3)).astype(np.float32), 'label': rng.randint(0, 8, n).astype(np.int32)}
    for _ in range(steps)
  ]


def _pmap_run(family):
  model, tx, static = _setup(family, train_step.AXIS)
  state = train_step.init_state(model, tx, jax.random.PRNGKey(0), (16, 16, 3), ema=True)
  step = train_step.pmapped_train_step(**static, ema_decay=0.9)
  n = jax.local_device_count()
  replicated = jax.tree_util.tree_map(lambda x: jnp.stack([x] * n), state)
  losses = []
  for batch in _batches():
    split = jax.tree_util.tree_map(lambda x: x.reshape(n, -1, *x.shape[1:]), batch)
    replicated, metrics = step(replicated, split, jax.random.PRNGKey(1))
    losses.append(float(metrics['loss'][0]))
  return jax.tree_util.tree_map(lambda x: np.asarray(x[0]), replicated), losses


PMAP_RUNS: dict = {}


CASES = [
  pytest.param(family, mesh, marks=[] if (family, mesh) == ('ConvMixer', 'data:2,fsdp:4') else [pytest.mark.slow])
  for family in TINY
  for mesh in MESHES
]


@pytest.mark.parametrize('family,mesh_spec', CASES)
def test_ten_jitted_steps_on_any_mesh_equal_ten_pmapped_steps(family, mesh_spec):
  if family not in PMAP_RUNS:
    PMAP_RUNS[family] = _pmap_run(family)
  expected, expected_losses = PMAP_RUNS[family]
  mesh = sharding.make_mesh(mesh_spec)
  model, tx, static = _setup(family, None)
  shapes_, placements = train_step.state_placements(model, tx, (16, 16, 3), True, mesh, STRATEGY[mesh_spec])
  init = functools.partial(train_step.init_state, model, tx, image_shape=(16, 16, 3), ema=True)
  state = placement.Placement(mesh, placements).fresh(init, jax.random.PRNGKey(0))  # created in its shardings
  if 'fsdp' in mesh_spec or (family != 'ConvMixer' and 'model' in mesh_spec):  # the rules did split the state
    _, per_device = sharding.state_bytes(shapes_, placements)
    assert per_device < sharding.state_bytes(shapes_, placements)[0]
  step = train_step.jitted_train_step(mesh, placements, **static, ema_decay=0.9)
  losses = []
  for batch in _batches():
    state, metrics = step(state, batch, jax.random.PRNGKey(1))
    losses.append(float(metrics['loss']))
  np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
  for got, want in zip(jax.tree_util.tree_leaves(jax.device_get(state)), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(expected)
