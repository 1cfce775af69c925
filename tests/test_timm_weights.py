"""timm state dicts (.safetensors, .pth, .bin) load without torch and reproduce timm's own logits.

The fixtures in tests/data/timm were written by tests/reference/make_timm_fixtures.py with
timm 1.0.31 / torch 2.14.1: random weights, fixed inputs, and timm's eval-mode logits.
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from isojax import models
from isojax.weights import pretrained
from tests.reference.seeded import seeded_state, write_safetensors

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'timm')
EXACT_GELU = dict(approximate_gelu=False)
CASES = {
  'vit_token.safetensors': lambda: models.create('ViT-32x2/4-h4-m64', 10, **EXACT_GELU),
  'vit_gap_layerscale.pth': lambda: models.create(
    'ViT-32x2/4-h4-m64', 10, classifier='gap', layer_scale_init=0.1, norm_after_pool=True, **EXACT_GELU
  ),
  'mixer.bin': lambda: models.create('Mixer-32x2/4-t16-c64', 10, **EXACT_GELU),
  'convmixer.pth': lambda: models.create('ConvMixer-32/2', 10, kernel_size=3, patch_size=4),
}


@pytest.mark.parametrize('filename', sorted(CASES))
def test_timm_weights_reproduce_timms_logits(filename):
  expected = np.load(os.path.join(DATA, 'expected_logits.npz'))
  model = CASES[filename]()
  variables = pretrained.load(os.path.join(DATA, filename), model, image_size=16)
  logits = model.apply(variables, jnp.asarray(expected['images']), train=False)
  difference = float(np.abs(np.asarray(logits) - expected[filename.split('.')[0]]).max())
  print(f'{filename}: max |logit difference| vs timm {difference:.2e}')
  assert difference < 1e-5


def test_a_truncated_torch_file_is_a_clear_error(tmp_path):
  data = open(os.path.join(DATA, 'convmixer.pth'), 'rb').read()
  (tmp_path / 'cut.pth').write_bytes(data[: len(data) // 2])
  (tmp_path / 'cut.safetensors').write_bytes(open(os.path.join(DATA, 'vit_token.safetensors'), 'rb').read()[:5000])
  model = CASES['convmixer.pth']()
  with pytest.raises(ValueError, match=r'cut.pth.*is the file complete'):
    pretrained.load(str(tmp_path / 'cut.pth'), model, 16)
  with pytest.raises(ValueError, match=r'cut.safetensors.* as safetensors .*not fully covered.*is the file complete'):
    pretrained.load(str(tmp_path / 'cut.safetensors'), CASES['vit_token.safetensors'](), 16)


def test_timm_weights_for_another_family_are_refused():
  with pytest.raises(ValueError, match=r'another architecture'):
    pretrained.load(os.path.join(DATA, 'mixer.bin'), CASES['convmixer.pth'](), 16)


# --- pretrained.create: the architecture comes from the file --------------------------------------

with open(os.path.join(DATA, 'seeded.json')) as f:
  SEEDED = json.load(f)


def timm_file(tmp_path, name):
  """timm's registered `name` (tests/reference/make_timm_fixtures.py SEEDED) as a .safetensors file."""
  spec = SEEDED['models'][name]
  path = str(tmp_path / f'{name}.safetensors')
  write_safetensors(path, seeded_state(spec['shapes'], spec['seed']))
  return path


def relative_difference(logits, expected):
  return float(np.abs(np.asarray(logits) - expected).max() / np.abs(expected).max())


# BiT's pre-activation residual stream is never normalised, so float32 rounding grows over its 50 layers:
# timm's own float32 logits differ from its float64 ones by 2.2e-5 (relative), isojax's by 1.6e-5.
TOLERANCE = {'resnetv2_50x1_bit': 5e-5}


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(SEEDED['models']))
def test_timm_models_rebuild_from_their_file_alone_with_timms_logits(tmp_path, name):
  expected = np.load(os.path.join(DATA, 'seeded_logits.npz'))
  model, variables = pretrained.create(timm_file(tmp_path, name))
  logits = model.apply(variables, jnp.asarray(expected[f'{name}/images']), train=False)
  difference = relative_difference(logits, expected[name])
  print(f'{name} (timm {SEEDED["timm"]}): max |logit difference| / max |logit| {difference:.2e}')
  assert difference < TOLERANCE.get(name, 1e-5)


def test_convmixer_768_32_is_read_as_relu_and_gelu_would_be_wrong(tmp_path):
  expected = np.load(os.path.join(DATA, 'seeded_logits.npz'))
  path = timm_file(tmp_path, 'convmixer_768_32')
  described = pretrained.describe(path)
  assert described.fields['activation'] == 'relu' and 'convmixer_768_32' in described.assumed['activation']
  model, variables = pretrained.create(path, activation='gelu')  # what isojax did before it read the shape
  images = jnp.asarray(expected['convmixer_768_32/images'])
  assert relative_difference(model.apply(variables, images, train=False), expected['convmixer_768_32']) > 0.05


@pytest.mark.parametrize(
  'filename,overrides',
  [
    ('vit_token.safetensors', dict(num_heads=4)),  # 32 wide with 4 heads: not timm's width/64
    ('vit_gap_layerscale.pth', dict(num_heads=4)),
    ('mixer.bin', {}),
    ('convmixer.pth', {}),
  ],
)
def test_every_file_format_rebuilds_with_timms_logits(filename, overrides):
  expected = np.load(os.path.join(DATA, 'expected_logits.npz'))
  model, variables = pretrained.create(os.path.join(DATA, filename), **overrides)
  logits = model.apply(variables, jnp.asarray(expected['images']), train=False)
  assert relative_difference(logits, expected[filename.split('.')[0]]) < 1e-5


def test_the_head_count_a_timm_file_cannot_show_is_reported_as_assumed():
  described = pretrained.describe(os.path.join(DATA, 'vit_token.safetensors'))
  assert described.fields['num_heads'] == 1 and 'width/64' in described.assumed['num_heads']


def test_a_timm_tensor_isojax_has_no_place_for_is_refused_by_name(tmp_path):
  spec = SEEDED['models']['vit_small_patch16_224']
  state = seeded_state(spec['shapes'], spec['seed'])
  state['reg_token'] = np.zeros((1, 4, 384), np.float32)  # a register-token ViT
  write_safetensors(str(tmp_path / 'reg.safetensors'), state)
  with pytest.raises(ValueError, match=r"1 tensor\(s\) of this timm vit file have no place in isojax: \['reg_token'\]"):
    pretrained.create(str(tmp_path / 'reg.safetensors'))


def test_deit3_by_name_is_timms_deit3_with_its_logits(tmp_path):
  # tests/reference/make_timm_fixtures.py: timm's deit3_small_patch16_224, 2 blocks, 32x32 images.
  expected = np.load(os.path.join(DATA, 'seeded_logits.npz'))
  model = models.create('DeiT3-384x2/16', 1000)
  variables = pretrained.load(timm_file(tmp_path, 'deit3_small_patch16_224'), model, image_size=32)
  logits = model.apply(variables, jnp.asarray(expected['deit3_small_patch16_224/images']), train=False)
  assert relative_difference(logits, expected['deit3_small_patch16_224']) < 1e-5
  assert models.describe('DeiT3-S/16') == 'DeiT3-S/16' and models.lookup('deit3_s16').name == 'DeiT3-S/16'


def test_a_resmlp_file_in_the_authors_names_loads_with_timms_logits(tmp_path):
  # facebookresearch/deit's resmlp_models.py names: timm's checkpoint_filter_fn (mlp_mixer.py l.559-573)
  # maps patch_embed. -> stem., attn. -> linear_tokens., mlp. -> mlp_channels., gamma_ -> ls.
  spec = SEEDED['models']['resmlp_24_224_d2']
  state = seeded_state(spec['shapes'], spec['seed'])
  authors = {}
  for key, value in state.items():
    for timm_name, deit_name in (
      ('stem.', 'patch_embed.'),
      ('linear_tokens.', 'attn.'),
      ('mlp_channels.', 'mlp.'),
      ('.ls1', '.gamma_1'),
      ('.ls2', '.gamma_2'),
    ):
      key = key.replace(timm_name, deit_name)
    authors[key] = value
  assert 'blocks.0.attn.weight' in authors and 'blocks.0.gamma_1' in authors
  path = str(tmp_path / 'resmlp_24_no_dist.safetensors')
  write_safetensors(path, authors)
  expected = np.load(os.path.join(DATA, 'seeded_logits.npz'))
  model, variables = pretrained.create(path)
  described = pretrained.describe(path)
  assert models.name_for(described.family, described.fields) == 'ResMLP-384x2/16' and described.image_size == 32
  logits = model.apply(variables, jnp.asarray(expected['resmlp_24_224_d2/images']), train=False)
  assert relative_difference(logits, expected['resmlp_24_224_d2']) < 1e-5
