"""A family is one file plus one registry line: a toy family defined entirely here (its block, its name grammar,
its weight reader) is built by name, configured, and loaded from a weight file through `pretrained.create`,
with nothing else in isojax changed."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from isojax import models
from isojax.models import convert
from isojax.models.convert import TIMM, KeyTracker, Reader, Weights
from isojax.models.isotropic import Isotropic, PoolingHead
from isojax.models.mixer import MixerStem
from isojax.models.naming import SizedNames
from isojax.weights import pretrained


class ShiftBlock(nn.Module):
  """x + mix(x rolled by one token): the whole block contract is (x, train) -> x's shape."""

  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train=False):
    return x + nn.Dense(x.shape[-1], name='mix')(jnp.roll(x, 1, axis=1))


def shift(num_classes, *, hidden_size, depth, patch_size, drop_path_rate=0.0):
  return Isotropic(
    MixerStem(hidden_size, patch_size),
    functools.partial(ShiftBlock),
    PoolingHead(num_classes),
    depth,
    drop_path_rate=drop_path_rate,
  )


NAMES = SizedNames('Shift', {'S': dict(hidden_size=32, depth=2)})


def from_timm(state):
  """A torch-layout file: `stem.weight/bias`, `blocks.{i}.mix.weight/bias`, `head.weight/bias`."""
  tracked = KeyTracker(state)
  params = {'stem': {'patch_embed': convert.patch_embedding(tracked, 'stem')}, 'head': convert.linear(tracked, 'head')}
  depth = convert.block_count(state, r'blocks\.(\d+)\.')
  params.update({f'block_{i}': {'mix': convert.linear(tracked, f'blocks.{i}.mix')} for i in range(depth)})
  convert.refuse_unread(tracked, 'tensor(s) of this shift file', 'Not a shift model.')
  stem = state['stem.weight']
  fields = dict(hidden_size=int(stem.shape[0]), depth=depth, patch_size=int(stem.shape[-1]))
  return Weights({'params': params}, 'shift', fields, convert.classes(state), None, {}, int(stem.shape[1]))


FAMILY = models.Family(
  name='shift',
  factory=shift,
  parse_name=NAMES.parse,
  format_name=NAMES.format,
  variants={'Shift-S/4': dict(hidden_size=32, depth=2, patch_size=4)},
  source='this test',
  readers={TIMM: Reader(lambda state: 'blocks.0.mix.weight' in state, from_timm)},
)


@pytest.fixture
def registered():
  models.register(FAMILY)  # the one registry line
  yield FAMILY
  models.unregister(FAMILY.name)


def test_a_family_defined_outside_isojax_is_built_by_name_and_configured(registered):
  assert 'Shift-S/4' in models.names() and models.lookup('shift_s4').name == 'Shift-S/4'
  assert models.describe('Shift-48x3/4') == 'Shift-48x3/4' and models.describe('Shift-32x2/4') == 'Shift-S/4'
  config = models.model_config('Shift-S/4', drop_path_rate=0.1)
  assert config.to_dict() == {'name': 'Shift-S/4', 'drop_path_rate': 0.1}
  model = models.create('Shift-S/4', 3)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
  assert sorted(variables['params']) == ['block_0', 'block_1', 'head', 'stem']


def test_its_weight_file_loads_through_pretrained_create_with_the_files_logits(registered, tmp_path):
  rng = np.random.default_rng(0)
  width, classes = 16, 3
  state = {
    'stem.weight': rng.normal(size=(width, 3, 4, 4)),
    'stem.bias': rng.normal(size=width),
    'head.weight': rng.normal(size=(classes, width)),
    'head.bias': rng.normal(size=classes),
    **{
      f'blocks.{i}.mix.{k}': rng.normal(size=(width, width) if k == 'weight' else width)
      for i in range(3)
      for k in ('weight', 'bias')
    },
  }
  state = {k: v.astype(np.float32) for k, v in state.items()}
  save_file(state, str(tmp_path / 'shift.safetensors'))
  model, variables = pretrained.create(str(tmp_path / 'shift.safetensors'), image_size=8)
  assert models.describe('Shift-16x3/4') == 'Shift-16x3/4' and model.depth == 3
  images = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  # the same network written out from the file's tensors, in numpy
  x = (
    np.einsum(
      'bhwc,oc->bhwo',
      images.reshape(2, 2, 4, 2, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 2, 2, 48),
      state['stem.weight'].transpose(0, 2, 3, 1).reshape(width, 48),
    )
    + state['stem.bias']
  )
  x = x.reshape(2, 4, width)
  for i in range(3):
    x = x + np.roll(x, 1, axis=1) @ state[f'blocks.{i}.mix.weight'].T + state[f'blocks.{i}.mix.bias']
  expected = x.mean(axis=1) @ state['head.weight'].T + state['head.bias']
  np.testing.assert_allclose(model.apply(variables, images), expected, rtol=1e-4, atol=1e-4)


def test_a_family_name_is_registered_once():
  with pytest.raises(ValueError, match=r"A model family named 'vit' is registered already"):
    models.register(models.family('vit'))
