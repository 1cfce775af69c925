"""isojax.explain: what a model learned and how its shape evolves, as arrays ready to plot."""

import jax
import numpy as np
import pytest

from isojax import models
from isojax.evaluation import explain


def init(name, image_size=16, **kw):
  model = models.create(name, 5, **kw)
  images = jax.random.normal(jax.random.PRNGKey(1), (2, image_size, image_size, 3))
  return model, model.init(jax.random.PRNGKey(0), images, train=False), images


@pytest.mark.slow  # 15 s
def test_attention_maps_are_row_stochastic_per_block_and_rollout_is_a_patch_grid():
  model, variables, images = init('ViT-32x2/4-h2-m64')
  maps = explain.attention_maps(model, variables, images)
  assert len(maps) == 2 and maps[0].shape == (2, 17, 17)  # 16 patches + the class token
  np.testing.assert_allclose(maps[1].sum(-1), 1.0, rtol=1e-5)
  rollout = explain.attention_rollout(model, variables, images)
  assert rollout.shape == (2, 4, 4) and np.all(rollout >= 0)


@pytest.mark.slow
def test_mixer_and_convmixer_weights_come_out_as_images():
  _, mixer, _ = init('Mixer-32x2/4-t16-c64')
  assert explain.token_mixing_weights(mixer).shape == (16, 4, 4)  # 16 hidden units over a 4 x 4 patch grid
  _, convmixer, _ = init('ConvMixer-32/2', kernel_size=3, patch_size=4)
  assert explain.depthwise_kernels(convmixer, block=1).shape == (32, 3, 3)


def test_the_shape_profile_is_flat_for_isotropic_models_and_shrinks_for_pyramids():
  for name in ('ViT-S/16', 'ConvNeXt-iso-S', 'gMLP-S/16'):
    profile = explain.shape_profile(models.create(name, 10), 224)
    assert len(profile) == models.resolve(name)[1]['depth'] and len({p[1:] for p in profile}) == 1, name
  assert explain.shape_profile(models.create('ViT-S/16', 10), 224)[0] == ('block00', 197, 384)
  resnet = explain.shape_profile(models.create('ResNet-18', 10), 224)
  assert resnet == [('stage1', 56 * 56, 64), ('stage2', 28 * 28, 128), ('stage3', 14 * 14, 256), ('stage4', 49, 512)]
