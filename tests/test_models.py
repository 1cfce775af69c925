"""The model zoo's contract: names, shapes, parameter counts, train/eval behaviour, dtypes, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isojax import models

# Published parameter counts at the default image size with a 1000-class head. They
# equal timm's `timm.create_model(..., num_classes=1000)` for the same model and head
# (checked with timm 1.x: see tests/reference/timm_param_counts.py) and the papers' tables.
PUBLISHED_PARAMS = {
  'ViT-Ti/16': 5_717_416,
  'ViT-S/32': 22_878_952,
  'ViT-S/16': 22_050_664,
  'ViT-S/14': 22_004_584,
  'ViT-S/8': 22_055_272,
  'ViT-B/32': 88_224_232,
  'ViT-B/16': 86_567_656,
  'ViT-B/14': 86_475_496,
  'ViT-B/8': 86_576_872,
  'ViT-L/32': 306_535_400,
  'ViT-L/16': 304_326_632,
  'ViT-L/14': 304_203_752,
  'ViT-H/14': 632_045_800,
  # big_vision's So400m, g and G (Zhai et al. 2022: 1,011M and 1,843M), counted by its own model in test_fidelity
  'ViT-So400m/14': 413_597_656,
  'ViT-So400m/16': 413_735_896,
  'ViT-g/14': 1_012_611_432,
  'ViT-G/14': 1_844_440_680,
  'Mixer-S/32': 19_104_624,
  'Mixer-S/16': 18_528_264,
  'Mixer-B/32': 60_293_428,
  'Mixer-B/16': 59_880_472,
  'Mixer-L/32': 206_939_264,
  'Mixer-L/16': 208_196_168,
  'Mixer-H/14': 432_350_952,
  'ConvMixer-1536/20': 51_625_960,
  'ConvMixer-768/32': 21_110_248,
  'ConvMixer-1024/20': 24_383_464,
  'ConvMixer-256/8': 848_616,
  # timm's resmlp_{12,24,36,big_24}_224 and gmlp_{ti,s,b}16_224 (tests/reference/timm_param_counts.py)
  'ResMLP-S12': 15_350_872,
  'ResMLP-S24': 30_020_680,
  'ResMLP-S36': 44_690_488,
  'ResMLP-B24': 129_138_280,
  'gMLP-Ti/16': 5_867_328,
  'gMLP-S/16': 19_422_656,
  'gMLP-B/16': 73_075_392,
  'DeiT3-S/16': 22_059_496,
  'DeiT3-B/16': 86_585_320,  # timm deit3_{small,base}_patch16_224
  'CaiT-XXS24': 11_956_264,
  'CaiT-S24': 46_916_200,  # timm cait_{xxs24,s24}_224
  # facebookresearch/ConvNeXt convnext_isotropic_{small,base,large}, counted by its own code
  'ConvNeXt-iso-S': 22_308_712,
  'ConvNeXt-iso-B': 87_083_752,
  'ConvNeXt-iso-L': 305_905_640,
  # torchvision's resnet18 ... resnet152 at 1000 classes (= timm's; tests/reference/timm_param_counts.py)
  'ResNet-18': 11_689_512,
  'ResNet-34': 21_797_672,
  'ResNet-50': 25_557_032,
  'ResNet-101': 44_549_160,
  'ResNet-152': 60_192_808,
  'BiT-R50x1': 25_549_352,  # timm resnetv2_50x1_bit
  # vision_transformer's hybrids, counted by its own models_vit.py in tests/test_official_weights.py; equal to
  # timm's vit_{base_r50_s16,small_r26_s32,base_r26_s32,large_r50_s32}_224
  'R50+ViT-B/16': 98_659_112,
  'R26+ViT-S/32': 36_431_912,
  'R26+ViT-B/32': 101_383_976,
  'R50+ViT-L/32': 328_994_856,
}


def param_count(model, image_size, **init_kw):
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)), **init_kw)
  )
  return sum(x.size for x in jax.tree_util.tree_leaves(shapes['params']))


def test_every_published_name_is_registered():
  assert sorted(models.names()) == sorted(PUBLISHED_PARAMS)


@pytest.mark.parametrize('name', sorted(PUBLISHED_PARAMS))
def test_every_published_model_has_its_parameter_count_and_maps_images_to_logits(name):
  # Abstract evaluation (jax.eval_shape): full-size shapes for every model in seconds, no 600M-parameter init.
  size = models.default_image_size(name)
  model = models.create(name, num_classes=1000)
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
  assert sum(x.size for x in jax.tree_util.tree_leaves(variables['params'])) == PUBLISHED_PARAMS[name]
  logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32


def test_vit_s16_with_ten_classes_matches_timm_count():
  assert param_count(models.create('ViT-S/16', 10), 224) == 21_669_514


def test_convmixer_256_8_on_cifar_has_paper_size():
  # Paper, Table 2: ConvMixer-256/8 on CIFAR-10 has 0.59M parameters.
  assert param_count(models.create('ConvMixer-256/8', 10), 32) == 594_186


@pytest.mark.parametrize(
  'classifier,posemb,rep,expected_delta',
  [
    ('gap', 'learn', None, -384 - 384),  # no class token, one fewer position
    ('token', 'sincos2d', None, -197 * 384),  # fixed position embedding has no params
    ('token', 'learn', 384, 384 * 384 + 384),  # tanh pre-logits layer
  ],
)
def test_vit_head_options_change_parameters_as_published(classifier, posemb, rep, expected_delta):
  base = param_count(models.create('ViT-S/16', 10), 224)
  varied = models.create('ViT-S/16', 10, classifier=classifier, posemb=posemb, representation_size=rep)
  assert param_count(varied, 224) - base == expected_delta


def test_map_pooling_adds_an_attention_probe_and_mlp():
  width, mlp = 384, 1536
  base = param_count(models.create('ViT-S/16', 10, classifier='gap'), 224)
  map_head = width + 4 * (width * width + width) + 2 * width + (width * mlp + mlp + mlp * width + width)
  assert param_count(models.create('ViT-S/16', 10, classifier='map'), 224) - base == map_head


@pytest.mark.slow
@pytest.mark.parametrize('name', ['ViT-S/16', 'Mixer-S/16', 'ConvMixer-256/8'])
def test_full_size_forward_is_finite(name):
  size = models.default_image_size(name)
  model = models.create(name, num_classes=10)
  x = jax.random.normal(jax.random.PRNGKey(1), (1, size, size, 3))
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert logits.shape == (1, 10) and np.isfinite(np.asarray(logits)).all()


# A published model of each family with its own modules (DeiT III has ViT's), shrunk by `tiny`.
ONE_OF_EACH_FAMILY = ['ViT-S/16', 'Mixer-S/16', 'ConvMixer-256/8', 'ResMLP-S12', 'gMLP-S/16', 'ConvNeXt-iso-S']
ONE_OF_EACH_FAMILY += ['CaiT-S24', 'R50+ViT-B/16']


def tiny(name, **kw):
  """A shrunken member of the family, for behaviour tests that should run in milliseconds."""
  shrink = {
    'ViT': ('ViT-32x2/4-h2-m64', {}),
    'Mixer': ('Mixer-32x2/4-t16-c64', {}),
    'ConvMixer': ('ConvMixer-32/2', dict(kernel_size=3, patch_size=4)),
    'DeiT3': ('DeiT3-32x2/4-h2-m64', {}),
    'ResMLP': ('ResMLP-32x2/4', {}),
    'gMLP': ('gMLP-32x2/4', {}),
    'ConvNeXt': ('ConvNeXt-iso-32x2-p4-k3', {}),
    'CaiT': ('CaiT-32x2/4-h4', {}),
    'R50+ViT': ('Rs1.1-w32+ViT-32x2/1-h2-m64', {}),
  }
  small, fields = shrink[name.split('-')[0]]
  return models.create(small, num_classes=5, **{**fields, **kw})


def with_random_head(variables):
  """Heads start at zero; random weights make the logits depend on the features."""
  return jax.tree_util.tree_map_with_path(
    lambda p, x: jax.random.normal(jax.random.PRNGKey(9), x.shape) if 'head' in jax.tree_util.keystr(p) else x,
    variables,
  )


def init_apply(model, train, images=None, rng=1, **kw):
  images = jnp.ones((4, 16, 16, 3)) if images is None else images
  variables = model.init(jax.random.PRNGKey(0), images, train=False)
  mutable = ['batch_stats'] if 'batch_stats' in variables else False
  out = model.apply(variables, images, train=train, rngs={'dropout': jax.random.PRNGKey(rng)}, mutable=mutable, **kw)
  return variables, out


def assert_random_in_training_only(model, batch=4):
  images = jax.random.normal(jax.random.PRNGKey(2), (batch, 16, 16, 3))
  # Heads are zero-initialised; give them weights so the logits depend on the features.
  variables = with_random_head(model.init(jax.random.PRNGKey(0), images, train=False))
  run = lambda train, rng: model.apply(variables, images, train=train, rngs={'dropout': jax.random.PRNGKey(rng)})
  np.testing.assert_array_equal(run(False, 1), run(False, 2))
  assert not np.allclose(run(True, 1), run(True, 2))
  assert not np.allclose(run(True, 1), run(False, 1))


@pytest.mark.slow
@pytest.mark.parametrize('kw', [dict(dropout_rate=0.5), dict(drop_path_rate=0.5), dict(attention_dropout_rate=0.5)])
def test_vit_regularisers_act_in_training_and_not_in_eval(kw):
  assert_random_in_training_only(tiny('ViT-S/16', **kw))


@pytest.mark.slow
def test_mixer_stochastic_depth_is_random_in_training_only():
  assert_random_in_training_only(tiny('Mixer-S/16', drop_path_rate=0.5), batch=8)


@pytest.mark.slow
def test_convmixer_batchnorm_uses_batch_statistics_in_training_and_updates_running_averages():
  model = tiny('ConvMixer-256/8')
  images = 3.0 + jax.random.normal(jax.random.PRNGKey(2), (4, 16, 16, 3))
  variables, (logits, updates) = init_apply(model, train=True, images=images)
  assert set(variables) == {'params', 'batch_stats'}
  before = jax.tree_util.tree_leaves(variables['batch_stats'])
  after = jax.tree_util.tree_leaves(updates['batch_stats'])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  # Eval mode uses running averages and does not change them.
  eval_logits = model.apply(variables, images, train=False)
  assert eval_logits.shape == logits.shape


@pytest.mark.slow
def test_convmixer_batchnorm_statistics_are_averaged_across_pmap_devices():
  n = jax.local_device_count()
  assert n >= 2, 'conftest forces 8 CPU devices'
  model = tiny('ConvMixer-256/8', axis_name='batch')
  images = jax.random.normal(jax.random.PRNGKey(3), (n, 2, 16, 16, 3)) * jnp.arange(1, n + 1)[:, None, None, None, None]
  variables = model.init(jax.random.PRNGKey(0), images[0], train=False)
  step = jax.pmap(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[1], axis_name='batch', in_axes=(None, 0)
  )
  stats = step(variables, images)['batch_stats']
  # Every device holds the same, cross-device averaged, running statistics.
  for leaf in jax.tree_util.tree_leaves(stats):
    np.testing.assert_allclose(leaf, np.broadcast_to(leaf[0], leaf.shape), rtol=1e-5, atol=1e-6)
  # ...which equal the statistics of the whole global batch on one device.
  single = models.create('ConvMixer-32/2', 5, kernel_size=3, patch_size=4)
  _, updates = single.apply(variables, images.reshape(-1, 16, 16, 3), train=True, mutable=['batch_stats'])
  for a, b in zip(jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(updates['batch_stats'])):
    np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_resnet_batchnorm_statistics_are_synced_across_pmap_devices():
  n = jax.local_device_count()
  model = models.create('ResNet-18', 5, axis_name='batch')
  images = jax.random.normal(jax.random.PRNGKey(3), (n, 2, 32, 32, 3)) * jnp.arange(1, n + 1)[:, None, None, None, None]
  variables = model.init(jax.random.PRNGKey(0), images[0], train=False)
  step = jax.pmap(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[1], axis_name='batch', in_axes=(None, 0)
  )
  stats = step(variables, images)['batch_stats']
  _, updates = models.create('ResNet-18', 5).apply(
    variables, images.reshape(-1, 32, 32, 3), train=True, mutable=['batch_stats']
  )
  for a, b in zip(jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(updates['batch_stats'])):
    np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-5)  # = the global batch's statistics


@pytest.mark.slow
def test_resnet_starts_like_timm_init_weights():
  params = models.create('ResNet-50', 10).init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))['params']
  # kaiming_normal_(mode='fan_out', nonlinearity='relu'): std sqrt(2 / (out * kh * kw)), untruncated.
  kernel = np.asarray(params['layer3_0']['conv2']['kernel'])  # [3, 3, 256, 256]
  expected = np.sqrt(2.0 / (256 * 3 * 3))
  assert abs(kernel.std() / expected - 1) < 0.02 and np.abs(kernel).max() > 3.5 * expected
  # zero_init_last: the last BatchNorm of every residual branch starts at zero, the others at one.
  assert not np.asarray(params['layer1_0']['bn3']['scale']).any()
  assert (np.asarray(params['layer1_0']['bn2']['scale']) == 1).all()
  # The stem and every shortcut convolution: no bias (BatchNorm follows).
  assert set(params['conv1']) == {'kernel'} and set(params['layer2_0']['conv_downsample']) == {'kernel'}
  head = np.asarray(params['head']['kernel'])  # PyTorch nn.Linear: U(+-1/sqrt(2048))
  assert np.abs(head).max() <= 1 / np.sqrt(2048) and np.abs(head).max() > 0.95 / np.sqrt(2048)


@pytest.mark.slow
def test_bit_resnetv2_is_a_batch_independent_pyramid():
  # GroupNorm and weight-standardised convolutions: no batch statistics, and each image's logits
  # do not depend on the rest of the batch, in training too.
  model = models.create('BiT-R50-w32', 10)  # BiT-R50x1 at half width (suite time): the same modules
  images = jax.random.normal(jax.random.PRNGKey(0), (3, 64, 64, 3))
  variables = with_random_head(jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x))(images[:1]))
  assert list(variables) == ['params']
  run = jax.jit(lambda v, x: models.features(model, v, x, train=True))  # compiled: eager ResNet-50 takes 25 s
  (together, found), (alone, _) = run(variables, images), run(variables, images[1:2])
  np.testing.assert_allclose(together[1:2], alone, rtol=1e-4, atol=1e-5)
  assert [found[f'stage{i}'].shape[1:] for i in range(1, 5)] == [(16, 16, 128), (8, 8, 256), (4, 4, 512), (2, 2, 1024)]


@pytest.mark.slow
def test_resnet_is_a_pyramid_its_stages_halve_the_grid():
  model = models.create('ResNet-18', 10)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  _, found = models.features(model, variables, jnp.zeros((2, 64, 64, 3)))
  assert [found[f'stage{i}'].shape[1:] for i in range(1, 5)] == [(16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512)]


@pytest.mark.parametrize('name', ONE_OF_EACH_FAMILY)
@pytest.mark.slow
def test_jit_grad_is_finite_and_nonzero(name):
  model = tiny(name, drop_path_rate=0.1)
  images = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3))
  labels = jnp.arange(4) % 5
  variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(images)
  params, state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}

  @jax.jit
  def loss_grad(params):
    def loss(params):
      out = model.apply(
        {'params': params, **state}, images, train=True, rngs={'dropout': jax.random.PRNGKey(1)}, mutable=list(state)
      )
      logits = out[0]
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    return jax.value_and_grad(loss)(params)

  value, grads = loss_grad(params)
  leaves = jax.tree_util.tree_leaves(grads)
  assert np.isfinite(value) and all(np.isfinite(g).all() for g in leaves)
  assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


@pytest.mark.parametrize('name', ONE_OF_EACH_FAMILY)
@pytest.mark.slow
def test_bfloat16_computes_in_bf16_with_float32_parameters(name):
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  f32, bf16 = tiny(name), tiny(name, dtype=jnp.bfloat16)
  variables = jax.jit(lambda x: f32.init(jax.random.PRNGKey(0), x, train=False))(images)
  variables = with_random_head(variables)
  assert all(
    x.dtype == jnp.float32
    for x in jax.tree_util.tree_leaves(
      jax.eval_shape(lambda x: bf16.init(jax.random.PRNGKey(0), x, train=False), images)
    )
  )
  apply_bf16 = jax.jit(lambda v, x: bf16.apply(v, x, train=False))
  assert 'bf16' in apply_bf16.lower(variables, images).as_text()
  out_bf16 = apply_bf16(variables, images)
  out_f32 = jax.jit(lambda v, x: f32.apply(v, x, train=False))(variables, images)
  assert out_bf16.dtype == jnp.float32
  np.testing.assert_allclose(out_bf16, out_f32, rtol=0.05, atol=0.05)


def test_layer_scale_adds_two_vectors_per_block():
  base = param_count(tiny('ViT-S/16'), 16)
  assert param_count(tiny('ViT-S/16', layer_scale_init=1e-5), 16) - base == 2 * 2 * 32


@pytest.mark.slow
@pytest.mark.parametrize('name', ['ViT-S/16', 'gMLP-S/16'])  # a MixingBlock and a family's own block
def test_remat_gives_identical_outputs_and_gradients(name):
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  plain, remat = tiny(name), tiny(name, remat=True)
  variables = plain.init(jax.random.PRNGKey(0), images, train=False)
  loss = lambda m: (
    lambda p: (
      m.apply({'params': p}, images, train=False).sum() + sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(p)) * 0
    )
  )
  g1 = jax.grad(loss(plain))(variables['params'])
  g2 = jax.grad(loss(remat))(variables['params'])
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_names_are_matched_loosely():
  assert models.lookup('vit_s16').name == 'ViT-S/16'
  assert models.lookup('convmixer-1536-20').name == 'ConvMixer-1536/20'


def test_unknown_name_error_lists_close_names():
  with pytest.raises(ValueError, match=r"Unknown model 'ViT-Q/16'.*ViT-S/16"):
    models.create('ViT-Q/16', 10)


def test_unknown_override_error_lists_allowed_fields():
  with pytest.raises(ValueError, match=r"Unknown override.*'kernel_size'.*allowed.*classifier"):
    models.create('ViT-S/16', 10, kernel_size=3)


@pytest.mark.parametrize('name', ['ViT-S/16', 'Mixer-S/16', 'ConvMixer-256/8'])
def test_image_size_not_divisible_by_patch_size_is_a_clear_error(name):
  model = models.create(name, 10)
  with pytest.raises(ValueError, match=r'Image size 33x33 is not divisible by patch_size=\d+'):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 33, 33, 3)), train=False))


def test_sincos_posemb_is_fixed_and_distinct_per_position():
  model = tiny('ViT-S/16', posemb='sincos2d', classifier='gap')
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False)
  assert 'pos_embedding' not in str(jax.tree_util.tree_structure(variables))
  from isojax.models.layers import posemb_sincos_2d

  pe = posemb_sincos_2d(4, 4, 32)[0]
  assert pe.shape == (16, 32) and len({tuple(np.round(r, 5)) for r in pe}) == 16


# --- the open skeleton -------------------------------------------------------------------------------


class ShiftBlock(nn.Module):
  """A block no family has: x + dense(x rolled by one token). The skeleton's whole block contract."""

  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train=False):
    self.sow('rates', 'rate', self.drop_path_rate)
    return x + nn.Dense(x.shape[-1], name='mix')(jnp.roll(x, 1, axis=1))


@pytest.mark.slow
@pytest.mark.parametrize('schedule,rates', [('linear', [0.0, 0.1, 0.2]), ('constant', [0.2, 0.2, 0.2])])
def test_the_skeleton_takes_any_shape_keeping_block_and_keeps_head_names_at_the_top(schedule, rates):
  from isojax.models.mixer import MixerStem

  model = models.Isotropic(
    MixerStem(8, 4),
    ShiftBlock,
    models.PoolingHead(3, norm=nn.LayerNorm),
    depth=3,
    drop_path_rate=0.2,
    drop_path_schedule=schedule,
  )
  images = jnp.ones((2, 16, 16, 3))
  variables = model.init(jax.random.PRNGKey(0), images)
  assert sorted(variables['params']) == ['block_0', 'block_1', 'block_2', 'final_norm', 'head', 'stem']
  logits, found = models.features(model, variables, images)
  assert logits.shape == (2, 3) and found['block02'].shape == (2, 16, 8) and found['pre_logits'].shape == (2, 8)
  _, state = model.apply(variables, images, mutable=['rates'])
  np.testing.assert_allclose([state['rates'][f'block_{i}']['rate'][0] for i in range(3)], rates)


def test_an_unknown_drop_path_schedule_is_refused_naming_the_choices():
  from isojax.models.mixer import MixerStem

  model = models.Isotropic(MixerStem(8, 4), ShiftBlock, models.PoolingHead(3), depth=1, drop_path_schedule='cosine')
  with pytest.raises(ValueError, match=r"'cosine'.*\('linear', 'constant'\)"):
    model.init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 3)))


@pytest.mark.parametrize(
  'name,blocks',
  [
    ('ResMLP-S12', ['channel_mixing', 'ls1', 'ls2', 'norm1', 'norm2', 'token_mixing']),
    ('gMLP-S/16', ['fc1', 'fc2', 'gate', 'norm']),
  ],
)
@pytest.mark.slow
def test_resmlp_and_gmlp_blocks_have_timms_parts_and_a_constant_drop_path(name, blocks):
  model = tiny(name, drop_path_rate=0.3)
  assert model.drop_path_schedule == 'constant' and model.drop_path_rate == 0.3
  variables = model.init(jax.random.PRNGKey(0), jnp.ones((1, 16, 16, 3)))
  assert sorted(variables['params']['block_0']) == blocks
  assert_random_in_training_only(model)


def test_gmlp_gate_starts_as_an_identity_gate():
  variables = tiny('gMLP-S/16').init(jax.random.PRNGKey(0), jnp.ones((1, 16, 16, 3)))
  proj = variables['params']['block_0']['gate']['proj']
  assert float(jnp.abs(proj['kernel']).std()) < 1e-5 and np.all(proj['bias'] == 1.0)  # timm SGU init_weights
