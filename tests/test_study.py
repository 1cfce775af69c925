"""The isotropic-vs-pyramid study (experiments/isotropic_vs_pyramid.py): every family, one parameter budget,
one recipe, and shape profiles that tell an isotropic model from a pyramid. The study's training itself is
the sweep machinery's (tests/test_sweeps.py runs it end to end); here, what makes it a fair comparison."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from isojax import models, sweeps
from isojax.core import loading
from isojax.evaluation import explain
from isojax.sweeps import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = os.path.join(ROOT, 'experiments', 'isotropic_vs_pyramid.py')
BUDGET = (0.69e6, 0.85e6)  # parameters, for 10 classes on 32x32 single-channel digits
PYRAMIDS = {'resnet', 'resnetv2'}


def study_models() -> dict[str, str]:
  spec = importlib.util.spec_from_file_location('isotropic_vs_pyramid', STUDY)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.MODELS


def test_the_study_trains_one_model_of_every_registered_family_with_one_recipe():
  trials = sweeps.load(STUDY).trials()
  assert {t.config for t in trials} == {'configs/digits32.py:' + name for name in study_models().values()}
  assert all(set(t.overrides) == set() for t in trials)  # the recipe is the config's, the same for all
  families = {models.lookup(name).family for name in study_models().values()}
  assert families == set(models.family_names())
  assert {family for family, name in study_models().items() if models.lookup(name).family != family} == set()


@pytest.mark.parametrize('family', sorted(study_models()))
def test_every_study_model_fits_the_parameter_budget_and_has_the_expected_shape(family):
  name = study_models()[family]
  config = loading.load(os.path.join(ROOT, 'configs', f'digits32.py:{name}'))
  assert config.data.image_size == 32 and config.data.name == 'isojax_digits'
  model = models.from_config(config, num_classes=10)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)), train=False))
  count = sum(x.size for x in jax.tree_util.tree_leaves(variables['params']))
  assert BUDGET[0] <= count <= BUDGET[1], f'{name}: {count:,} parameters'
  profile = explain.shape_profile(model, 32, 1)
  kind = results.shape_kind(profile)
  assert kind == ('pyramid' if family in PYRAMIDS else 'hybrid' if family == 'hybrid' else 'isotropic')
  if kind == 'pyramid':  # the grid shrinks 4-fold per stage, 32x32 -> 8x8 after the stem -> 1x1
    assert [tokens for _, tokens, _ in profile] == [64, 16, 4, 1]
  else:
    assert len({tokens for n, tokens, _ in profile if n.startswith('block')}) == 1


def test_shape_kind_tells_blocks_from_stages():
  assert results.shape_kind([('block00', 64, 128), ('block01', 64, 128)]) == 'isotropic'
  assert results.shape_kind([('stage1', 64, 16), ('stage2', 16, 32)]) == 'pyramid'
  assert results.shape_kind([('stem/backbone/stage1', 64, 128), ('block00', 17, 128)]) == 'hybrid'
  with pytest.raises(ValueError, match='not an isotropic body'):
    results.shape_kind([('block00', 64, 128), ('block01', 16, 128)])
