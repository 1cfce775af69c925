"""Published `.npz` weights (google-research/vision_transformer, big_vision) load into isojax models
and give the reference implementation's logits to float32 precision."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isojax import models, pretrained
from tests.reference.official_models import OfficialMixer, OfficialViT

VIT = dict(patch_size=4, hidden_size=32, depth=2, mlp_dim=64, num_heads=4)
MIXER = dict(patch_size=4, hidden_size=32, depth=2, tokens_mlp_dim=8, channels_mlp_dim=64)
VIT_NAME, MIXER_NAME = 'ViT-32x2/4-h4-m64', 'Mixer-32x2/4-t8-c64'   # the same shapes, named


def export_npz(reference, path, image_size=16, prefix=''):
  """Initialises the reference at random and writes its parameters as a published .npz would be."""
  params = reference.init(jax.random.PRNGKey(7), jnp.zeros((1, image_size, image_size, 3)))['params']
  flat = {prefix + '/'.join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params).items()}
  np.savez(path, **flat)
  return params


def max_logit_difference(reference, ref_params, model, path, image_size=16):
  images = jax.random.normal(jax.random.PRNGKey(3), (4, image_size, image_size, 3))
  expected = reference.apply({'params': ref_params}, images)
  variables = pretrained.load(str(path), model, image_size)
  return float(jnp.abs(model.apply(variables, images, train=False) - expected).max())


@pytest.mark.parametrize('classifier,representation_size,per_type_names,prefix', [
    ('token', None, False, ''),            # ViT-B/16.npz style: class token, one counter
    ('token', 24, False, ''),              # with the tanh pre-logits layer (ImageNet-21k files)
    ('gap', None, True, 'params/'),        # big_vision: per-type numbering, 'params/' prefix
])
def test_official_vit_npz_reproduces_the_reference_logits(tmp_path, classifier, representation_size,
                                                         per_type_names, prefix):
  reference = OfficialViT(num_classes=10, classifier=classifier, representation_size=representation_size,
                          per_type_names=per_type_names, **VIT)
  params = export_npz(reference, tmp_path / 'vit.npz', prefix=prefix)
  model = models.create(VIT_NAME, 10, classifier=classifier, representation_size=representation_size)
  difference = max_logit_difference(reference, params, model, tmp_path / 'vit.npz')
  print(f'ViT ({classifier}, pre_logits={representation_size}): max |logit difference| {difference:.2e}')
  assert difference < 1e-5


def test_official_mixer_npz_reproduces_the_reference_logits(tmp_path):
  reference = OfficialMixer(num_classes=10, **MIXER)
  params = export_npz(reference, tmp_path / 'mixer.npz')
  model = models.create(MIXER_NAME, 10)
  difference = max_logit_difference(reference, params, model, tmp_path / 'mixer.npz')
  print(f'Mixer: max |logit difference| {difference:.2e}')
  assert difference < 1e-5


def test_fine_tuning_an_npz_at_another_size_and_class_count(tmp_path):
  reference = OfficialViT(num_classes=1000, **VIT)
  export_npz(reference, tmp_path / 'vit.npz')
  model = models.create(VIT_NAME, 10)
  variables = pretrained.load(str(tmp_path / 'vit.npz'), model, image_size=32)
  assert variables['params']['stem']['pos_embedding'].shape == (1, 1 + 8 * 8, 32)
  assert variables['params']['head']['kernel'].shape == (32, 10) and not variables['params']['head']['kernel'].any()


def test_a_truncated_npz_is_a_clear_error(tmp_path):
  export_npz(OfficialViT(num_classes=10, **VIT), tmp_path / 'vit.npz')
  data = (tmp_path / 'vit.npz').read_bytes()
  (tmp_path / 'cut.npz').write_bytes(data[:len(data) // 2])
  model = models.create(VIT_NAME, 10)
  with pytest.raises(ValueError, match=r"Cannot read .*cut.npz.* is the file complete"):
    pretrained.load(str(tmp_path / 'cut.npz'), model, 16)
  with pytest.raises(FileNotFoundError, match='No pretrained weights'):
    pretrained.load(str(tmp_path / 'missing.npz'), model, 16)


def test_weights_of_another_architecture_are_refused(tmp_path):
  export_npz(OfficialMixer(num_classes=10, **MIXER), tmp_path / 'mixer.npz')
  with pytest.raises(ValueError, match=r"have no 'params/stem/cls'|another architecture"):
    pretrained.load(str(tmp_path / 'mixer.npz'), models.create(VIT_NAME, 10), 16)
  deeper = models.create('Mixer-48x2/4-t8-c64', 10)
  with pytest.raises(ValueError, match=r"Pretrained 'params/[\w/]+' has shape \([\d, ]*32[\d, ]*\), "
                                       r"but the model expects \([\d, ]*48[\d, ]*\)"):
    pretrained.load(str(tmp_path / 'mixer.npz'), deeper, 16)


def test_tensors_the_model_does_not_use_fail_the_load_listing_them(tmp_path):
  # A file with a tanh pre-logits layer, loaded into a model without one: "loads" only with strict=False.
  reference = OfficialViT(num_classes=10, classifier='token', representation_size=24, **VIT)
  export_npz(reference, tmp_path / 'vit.npz')
  model = models.create(VIT_NAME, 10, classifier='token')
  with pytest.raises(ValueError, match=r"2 tensor\(s\) in the weights are not used by the model: "
                                       r"\['params/pre_logits/bias', 'params/pre_logits/kernel'\]"):
    pretrained.load(str(tmp_path / 'vit.npz'), model, 16)
  with pytest.warns(UserWarning, match='not used by the model'):
    pretrained.load(str(tmp_path / 'vit.npz'), model, 16, strict=False)
