"""Optimizer construction: decay and freezing by regex over parameter paths, schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from isojax import models
from isojax.core.config import base
from isojax.training import optim

pytestmark = pytest.mark.xdist_group('vit_params')  # one worker initialises the module's models once


@pytest.fixture(scope='module')
def vit_params():
  model = models.create('ViT-32x1/4-h2-m64', 5, classifier='map', representation_size=16)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))['params']
  cls_model = models.create('ViT-32x1/4-h2-m64', 5)
  return {'map': params, 'token': cls_model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))['params']}


def flat(tree):
  return dict(zip(jax.tree_util.tree_leaves(optim.param_paths(tree)), jax.tree_util.tree_leaves(tree)))


@pytest.mark.slow
def test_weight_decay_applies_to_kernels_only(vit_params):
  for params in vit_params.values():
    decayed = flat(optim.regex_mask(optim.DEFAULT_DECAY_PARAMS)(params))
    assert decayed['block_0/token_mixing/attention/qkv/kernel']
    assert decayed['stem/patch_embed/embedding/kernel'] and decayed['head/kernel']
    for path, is_decayed in decayed.items():
      if any(s in path for s in ('bias', 'scale', 'pos_embedding', 'cls', 'probe')):
        assert not is_decayed, path


def test_frozen_parameters_do_not_move(vit_params):
  params = vit_params['token']
  config = base().optimizer
  config.update(dict(lr=0.1, warmup_steps=0, freeze=r'(stem|block_0)/.*'))
  tx, _ = optim.create(config, total_steps=10)
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  moved = flat(jax.tree_util.tree_map(lambda u: float(jnp.abs(u).max()) > 0, updates))
  assert not any(v for p, v in moved.items() if p.startswith(('stem/', 'block_0/')))
  assert moved['head/kernel'] and moved['final_norm/scale']


@pytest.mark.parametrize('kind,end', [('cosine', 0.0), ('linear', 0.0), ('constant', 1.0)])
def test_schedule_warms_up_linearly_then_decays(kind, end):
  config = base().optimizer
  config.update(dict(lr=1.0, warmup_steps=10, schedule=kind))
  lr = optim.schedule(config, total_steps=110)
  np.testing.assert_allclose([lr(0), lr(5), lr(10)], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(lr(110), end, atol=1e-6)


@pytest.mark.parametrize('name', ['adamw', 'sgd', 'lamb'])
def test_every_optimizer_reduces_a_quadratic(name):
  config = base().optimizer
  config.update(dict(name=name, lr=0.1, warmup_steps=0, schedule='constant', weight_decay=0.0))
  tx, _ = optim.create(config, total_steps=100)
  params = {'w': {'kernel': jnp.ones((3, 3))}}
  state = tx.init(params)
  for _ in range(20):
    grads = jax.grad(lambda p: jnp.sum(p['w']['kernel'] ** 2))(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert float(jnp.sum(params['w']['kernel'] ** 2)) < 9.0


def test_unknown_optimizer_and_schedule_names_are_clear_errors():
  config = base().optimizer
  config.name = 'adam_w'
  with pytest.raises(ValueError, match="Unknown optimizer.name 'adam_w'"):
    optim.create(config, 10)
  config = base().optimizer
  config.schedule = 'cosine_restarts'
  with pytest.raises(ValueError, match="Unknown optimizer.schedule 'cosine_restarts'"):
    optim.create(config, 10)


def test_parameter_patterns_match_whole_paths_as_big_vision_does():
  # big_vision utils.py make_mask_trees l.1202: bool(pattern.fullmatch(name)); `head/.*` is not `map_head/...`.
  import re

  params = {'head': {'kernel': 0.0}, 'map_head': {'probe': 0.0, 'mlp': {'kernel': 0.0}}, 'block_0': {'bias': 0.0}}
  for pattern in ('head/.*', '.*/kernel$', '(.*/)?kernel', 'block_0/.*', '.*'):
    mask = flat(optim.regex_mask(pattern)(params))
    assert mask == {path: re.fullmatch(pattern, path) is not None for path in mask}, pattern
  assert not flat(optim.regex_mask('head/.*')(params))['map_head/mlp/kernel']


def test_a_pattern_that_matches_no_parameter_is_refused_with_the_whole_path_rule():
  with pytest.raises(ValueError, match=r"optimizer.freeze='\^block_0/' matches no parameter path.*re.fullmatch"):
    optim.regex_mask('^block_0/', 'optimizer.freeze')({'block_0': {'kernel': 0.0}})


@pytest.mark.parametrize('name', ['sgd', 'lamb', 'adamw'])
def test_every_optimizer_keeps_its_first_moment_in_mu_dtype(name):
  # vision_transformer train.py l.140-143 optax.sgd(accumulator_dtype='bfloat16'); big_vision's Adam mu_dtype.
  config = base().optimizer
  config.update(dict(name=name, mu_dtype='bfloat16', warmup_steps=0))
  tx, _ = optim.create(config, total_steps=10)
  state = tx.init({'w': {'kernel': jnp.ones((3,))}})
  dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(state) if getattr(leaf, 'shape', ()) == (3,)}
  assert jnp.dtype('bfloat16') in dtypes


def test_sgd_refuses_a_decay_mode_it_does_not_have():
  config = base().optimizer
  config.update(dict(name='sgd', weight_decay=1e-4, weight_decay_mode='lr_independent', warmup_steps=0))
  with pytest.raises(ValueError, match="weight_decay_mode='lr_independent' is not implemented for sgd"):
    optim.create(config, total_steps=10)
