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
  config.update(dict(lr=0.1, warmup_steps=0, freeze=r'^(stem|block_0)/'))
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
