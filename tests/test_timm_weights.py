"""timm state dicts (.safetensors, .pth, .bin) load without torch and reproduce timm's own logits.

The fixtures in tests/data/timm were written by tests/reference/make_timm_fixtures.py with
timm 1.0.31 / torch 2.14.1: random weights, fixed inputs, and timm's eval-mode logits.
"""
import os

import jax.numpy as jnp
import numpy as np
import pytest

from isojax import models, pretrained

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'timm')
EXACT_GELU = dict(approximate_gelu=False)
CASES = {
    'vit_token.safetensors': lambda: models.create(
        'ViT-32x2/4-h4-m64', 10, **EXACT_GELU),
    'vit_gap_layerscale.pth': lambda: models.create(
        'ViT-32x2/4-h4-m64', 10, classifier='gap',
        layer_scale_init=0.1, norm_after_pool=True, **EXACT_GELU),
    'mixer.bin': lambda: models.create(
        'Mixer-32x2/4-t16-c64', 10,
        **EXACT_GELU),
    'convmixer.pth': lambda: models.create(
        'ConvMixer-32/2', 10, kernel_size=3, patch_size=4),
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
  with pytest.raises(ValueError, match=r'cut.safetensors.* truncated'):
    pretrained.load(str(tmp_path / 'cut.safetensors'), CASES['vit_token.safetensors'](), 16)


def test_timm_weights_for_another_family_are_refused():
  with pytest.raises(ValueError, match=r'another architecture'):
    pretrained.load(os.path.join(DATA, 'mixer.bin'), CASES['convmixer.pth'](), 16)
