"""The jit path's placement: meshes from axis sizes, big_vision-style rules over parameter paths, per-device bytes,
and the jitted step computing what the pmapped step computes on every mesh (8 forced CPU devices)."""

import functools
import os
import subprocess
import sys
import warnings

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

from isojax import models
from isojax.core import checkpoint, devices, sharding
from isojax.core.config import base
from isojax.training import benchmark, optim, placement, train_step

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
  return model, tx, dict(model=model, tx=tx, learning_rate=lr)


def _options(**options):
  """The tests' step: 8 classes and an EMA (a state to place like the parameters)."""
  return train_step.StepOptions(num_classes=8, ema_decay=0.9, **options)


def _batches(steps=10, n=32):
  rng = np.random.RandomState(0)
  return [
    {'image': rng.normal(size=(n, 16, 16, 3)).astype(np.float32), 'label': rng.randint(0, 8, n).astype(np.int32)}
    for _ in range(steps)
  ]


def _pmap_run(family, n=8, **options):
  """pmap on the first n devices (the isojax step is pmapped_train_step; n < 8 lets it match a mesh with fewer
  batch shards)."""
  model, tx, static = _setup(family, train_step.AXIS)
  state = train_step.init_state(model, tx, jax.random.PRNGKey(0), (16, 16, 3), ema=True)
  if n == jax.local_device_count():
    step = train_step.pmapped_train_step(**static, options=_options(**options))
  else:
    one = functools.partial(train_step.train_step, **static, options=_options(**options))
    step = jax.pmap(one, axis_name=train_step.AXIS, in_axes=(0, 0, None), devices=jax.devices()[:n])
  replicated = jax.tree_util.tree_map(lambda x: jnp.stack([x] * n), state)
  losses = []
  for batch in _batches():
    split = jax.tree_util.tree_map(lambda x: x.reshape(n, -1, *x.shape[1:]), batch)
    replicated, metrics = step(replicated, split, jax.random.PRNGKey(1))
    losses.append(float(metrics['loss'][0]))
  return jax.tree_util.tree_map(lambda x: np.asarray(x[0]), replicated), losses


def _jit_run(family, mesh_spec, **options):
  mesh = sharding.make_mesh(mesh_spec)
  model, tx, static = _setup(family, None)
  shapes_, placements = train_step.state_placements(model, tx, (16, 16, 3), True, mesh, STRATEGY[mesh_spec])
  init = functools.partial(train_step.init_state, model, tx, image_shape=(16, 16, 3), ema=True)
  state = placement.Placement(mesh, placements).fresh(init, jax.random.PRNGKey(0))  # created in its shardings
  if 'fsdp' in mesh_spec or (family != 'ConvMixer' and 'model' in mesh_spec):  # the rules did split the state
    _, per_device = sharding.state_bytes(shapes_, placements)
    assert per_device < sharding.state_bytes(shapes_, placements)[0]
  step = train_step.jitted_train_step(mesh, placements, **static, options=_options(**options))
  losses = []
  for batch in _batches():
    state, metrics = step(state, batch, jax.random.PRNGKey(1))
    losses.append(float(metrics['loss']))
  return state, losses


def _assert_same_run(state, losses, expected, expected_losses):
  np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
  for got, want in zip(jax.tree_util.tree_leaves(jax.device_get(state)), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(expected)


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
  _assert_same_run(*_jit_run(family, mesh_spec), *PMAP_RUNS[family])


# Per-device randomness that the jit path draws per batch shard: mixup and CutMix partners and boxes, random
# erasing, and which examples make each accumulated micro-batch (BatchNorm's statistics see them).
PER_DEVICE = dict(mixup_alpha=0.8, cutmix_alpha=1.0, accum_steps=2, erasing={'prob': 0.5, 'fill': 'noise'})


@pytest.mark.slow
@pytest.mark.parametrize('mesh_spec,shards', [('data:2,fsdp:4', 8), ('data:4,model:2', 4)])
def test_mixup_cutmix_erasing_and_accumulation_draw_on_the_jit_path_what_pmap_draws(mesh_spec, shards):
  """Each batch shard is one pmap device: 8 on data:2,fsdp:4; 4 on data:4,model:2 (model replicas share one)."""
  expected = _pmap_run('ConvMixer', shards, **PER_DEVICE)
  _assert_same_run(*_jit_run('ConvMixer', mesh_spec, **PER_DEVICE), *expected)


def test_micro_batches_take_the_kth_part_of_every_shard():
  x = np.arange(16)  # 4 shards of 4
  np.testing.assert_array_equal(
    train_step.micro_batches(x, 2, shards=4), [[0, 1, 4, 5, 8, 9, 12, 13], [2, 3, 6, 7, 10, 11, 14, 15]]
  )
  np.testing.assert_array_equal(train_step.micro_batches(x, 2), [np.arange(8), np.arange(8, 16)])


# --- the step's guards: compiled once, donation used, no implicit host transfer -------------------------------


def _compile_events(events: list) -> list:
  return [name for name in events if name.endswith('backend_compile_duration')]


@pytest.mark.parametrize('mesh_spec', [None, 'fsdp:8'])
def test_the_step_compiles_once_uses_its_donated_state_and_transfers_nothing_implicitly(mesh_spec):
  """As the loop runs it: compiled ahead of the first step, then four steps under devices.no_host_transfers."""
  events: list = []
  jax.monitoring.register_event_duration_secs_listener(lambda name, secs, **kw: events.append(name))
  mesh = None if mesh_spec is None else sharding.make_mesh(mesh_spec)
  model, tx, static = _setup('ViT', None if mesh else train_step.AXIS)
  init = functools.partial(train_step.init_state, model, tx, image_shape=(16, 16, 3), ema=True)
  if mesh is None:
    where = placement.Placement()
  else:
    where = placement.Placement(mesh, train_step.state_placements(model, tx, (16, 16, 3), True, mesh, ())[1])
  state = where.place(where.fresh(init, jax.random.PRNGKey(0)))
  step, rng = where.step_function(**static, options=_options()), jax.random.PRNGKey(1)
  batches = [where.batch(jax.tree_util.tree_map(lambda x: x.reshape(8, -1, *x.shape[1:]), b)) for b in _batches(4)]
  events.clear()
  step.lower(state, batches[0], rng).compile()
  assert len(_compile_events(events)) == 1
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    for batch in batches:
      with devices.no_host_transfers():
        state, metrics = step(state, batch, rng)
  assert len(_compile_events(events)) == 1, 'the step recompiled after its first call'
  assert not [w for w in caught if 'donated' in str(w.message)], [str(w.message) for w in caught]
  assert int(jax.device_get(metrics['loss']).size) >= 1


def test_a_host_batch_handed_to_the_step_under_the_guard_is_refused():
  model, tx, static = _setup('ViT', train_step.AXIS)
  where = placement.Placement()
  init = functools.partial(train_step.init_state, model, tx, image_shape=(16, 16, 3), ema=False)
  state = where.place(where.fresh(init, jax.random.PRNGKey(0)))
  host_batch = jax.tree_util.tree_map(lambda x: x.reshape(8, -1, *x.shape[1:]), _batches(1)[0])
  with pytest.raises(Exception, match='[Dd]isallowed host-to-device transfer'):
    with devices.no_host_transfers():
      where.step_function(**static, options=train_step.StepOptions(8))(state, host_batch, jax.random.PRNGKey(1))


# --- memory, measured ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fsdp_on_8_devices_holds_an_eighth_of_vit_l_state_each_and_its_compiled_step_takes_an_eighth():
  """ViT-L/16 and the base AdamW: the bytes each device holds once the state is created in its shardings (the
  arrays' addressable shards) are what the shardings promise and at most 1.05x an eighth of the whole; XLA's
  memory analysis of the compiled step gives each device about an eighth of data:8's arguments."""
  model = models.build('ViT-L/16', 10, axis_name=None)
  tx, _ = optim.create(base().optimizer, total_steps=10)
  where = placement.on_mesh(sharding.make_mesh('fsdp:8'), model, tx, (32, 32, 3))
  init = functools.partial(train_step.init_state, model, tx, image_shape=(32, 32, 3), ema=False)
  held = sharding.bytes_on_devices(where.fresh(init, jax.random.PRNGKey(0)))
  total, promised = sharding.state_bytes(where.shapes, where.states)
  assert len(held) == 8 and max(held.values()) == promised
  assert max(held.values()) <= 1.05 * total / 8, max(held.values()) / (total / 8)
  # The compiled steps are the scanned model's: its stacked arguments take the bytes the unrolled one's do
  # (3,637,395,592 on data:8, 458,244,232 on fsdp:8, either way), and it compiles in 6 s instead of 26.
  arguments = {
    mesh: benchmark.train_step_memory('ViT-L/16', 1, 32, num_classes=10, mesh=mesh, scan=True)['argument_bytes']
    for mesh in ('data:8', 'fsdp:8')
  }
  assert arguments['data:8'] > total and 7.5 < arguments['data:8'] / arguments['fsdp:8'] <= 8.0, arguments


# --- checkpoints move between meshes ---------------------------------------------------------------------------

ONE_DEVICE_READER = """
import sys, numpy as np, jax
from isojax.core import checkpoint
assert jax.device_count() == 1, jax.devices()
step, saved = checkpoint.Checkpointer(sys.argv[1], read_only=True).restore_raw()
leaves = jax.tree_util.tree_leaves(saved)
np.savez(sys.argv[2], step=step, *[np.asarray(x) for x in leaves])
"""


def _sharded_state(mesh_spec, devices_=None):
  model, tx, _ = _setup('ViT', None)
  mesh = sharding.make_mesh(mesh_spec, devices_)
  where = placement.on_mesh(mesh, model, tx, (16, 16, 3), True, (('.*', 'fsdp(min_size_mb=0)'),))
  init = functools.partial(train_step.init_state, model, tx, image_shape=(16, 16, 3), ema=True)
  return where, init


def test_a_state_saved_on_fsdp8_restores_bitwise_on_4_devices_on_the_host_and_in_a_one_device_process(tmp_path):
  where, init = _sharded_state('fsdp:8')
  state = where.fresh(init, jax.random.PRNGKey(0))
  saver = checkpoint.Checkpointer(str(tmp_path / 'ckpt'))
  saver.save(1, where.checkpointed(state))  # the sharded arrays themselves: nothing gathered
  saver.wait()
  with ocp.StandardCheckpointer() as reader:  # each array written as its shards, its sharding recorded
    kernel = reader.metadata(str(tmp_path / 'ckpt' / '1' / 'default')).item_metadata.tree['params']['head']['kernel']
  assert 'fsdp' in str(kernel.sharding) and kernel.storage.chunk_shape != kernel.shape, kernel
  saved = jax.tree_util.tree_leaves(jax.device_get(state))
  on_four, _ = _sharded_state('fsdp:4', jax.devices()[:4])
  _, restored = saver.restore(on_four.restore_target(lambda: None))
  for got, want in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(on_four.states)):
    assert got.sharding == want and got.sharding.mesh.devices.size == 4
  for got, want in zip(jax.tree_util.tree_leaves(jax.device_get(restored)), saved):
    np.testing.assert_array_equal(got, want)
  _, on_host = saver.restore(
    placement.Placement().restore_target(lambda: placement.on_host(init, jax.random.PRNGKey(5)))
  )
  for got, want in zip(jax.tree_util.tree_leaves(jax.device_get(on_host)), saved):
    np.testing.assert_array_equal(got, want)
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1', 'JAX_PLATFORMS': 'cpu'}
  out = tmp_path / 'read.npz'
  subprocess.run([sys.executable, '-c', ONE_DEVICE_READER, str(tmp_path / 'ckpt'), str(out)], env=env, check=True)
  read = np.load(out)
  as_dicts = jax.tree_util.tree_leaves(flax.serialization.to_state_dict(jax.device_get(state)))  # keys sorted
  assert int(read['step']) == 1 and len(read.files) == len(as_dicts) + 1
  for i, want in enumerate(as_dicts):
    np.testing.assert_array_equal(read[f'arr_{i}'], want)


def test_a_host_checkpoint_of_the_pmap_path_restores_onto_fsdp8_in_its_shardings(tmp_path):
  where, init = _sharded_state('fsdp:8')
  host = placement.on_host(init, jax.random.PRNGKey(0))
  saver = checkpoint.Checkpointer(str(tmp_path / 'ckpt'))
  saver.save(1, placement.Placement().checkpointed(placement.Placement().place(host)))
  saver.wait()
  _, restored = saver.restore(where.restore_target(lambda: None))
  assert jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x: x.sharding, restored)) == jax.tree_util.tree_leaves(
    where.states
  )
  for got, want in zip(jax.tree_util.tree_leaves(jax.device_get(restored)), jax.tree_util.tree_leaves(host)):
    np.testing.assert_array_equal(got, want)
