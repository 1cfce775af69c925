"""Published `.npz` weights (google-research/vision_transformer, big_vision) load into isojax and give
the source's own logits: the references here are the sources' model files, vendored verbatim
(tests/reference/sources), initialised at random with every parameter perturbed (their heads and
class tokens start at zero, which would hide a wrong head or pooling), and exported as their
checkpoints are. `pretrained.create(path)` must rebuild each model from the file alone."""

import re

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from isojax import models
from isojax.weights import pretrained
from tests.reference import sources

VIT = dict(hidden_size=32, num_heads=2, mlp_dim=64, depth=2)
VIT_NAME = 'ViT-32x2/4-h2-m64'  # those shapes, named
IMAGES = jax.random.normal(jax.random.PRNGKey(3), (4, 16, 16, 3))


def randomised(params, seed=11):
  """Every parameter moved off its initial value, so zero heads and class tokens cannot hide a mistake."""
  rng = np.random.default_rng(seed)  # numpy: one draw per leaf without compiling one per shape
  return jax.tree_util.tree_map(lambda p: p + 0.2 * rng.standard_normal(p.shape).astype(p.dtype), params)


def export_npz(params, path, prefix='', one_counter=False):
  """Writes `params` flat, as the published files are; `one_counter` renumbers each block's modules with one
  counter across types (LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3), as in the
  pre-Linen vision_transformer files (ViT-B_16.npz)."""
  flat = {'/'.join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params).items()}
  if one_counter:
    renumber = {
      'LayerNorm_0': 'LayerNorm_0',
      'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1',
      'LayerNorm_1': 'LayerNorm_2',
      'MlpBlock_0': 'MlpBlock_3',
    }
    flat = {
      re.sub(r'(encoderblock_\d+/)(\w+)', lambda m: m.group(1) + renumber[m.group(2)], k): v for k, v in flat.items()
    }
  np.savez(path, **{prefix + k: v for k, v in flat.items()})


def vision_transformer_vit(classifier='token', representation_size=None, num_classes=10):
  models_vit, _ = sources.vision_transformer()
  return models_vit.VisionTransformer(
    num_classes=num_classes,
    patches=ml_collections.ConfigDict({'size': (4, 4)}),
    hidden_size=VIT['hidden_size'],
    transformer=dict(
      num_layers=VIT['depth'],
      mlp_dim=VIT['mlp_dim'],
      num_heads=VIT['num_heads'],
      dropout_rate=0.0,
      attention_dropout_rate=0.0,
    ),
    classifier=classifier,
    representation_size=representation_size,
  )


def big_vision_vit(**kw):
  return sources.big_vision_vit().Model(
    10,
    width=VIT['hidden_size'],
    depth=VIT['depth'],
    mlp_dim=VIT['mlp_dim'],
    num_heads=VIT['num_heads'],
    patch_size=(4, 4),
    **kw,
  )


def source_logits(reference, tmp_path, images=IMAGES, **export):
  """(path of the exported .npz, the source's logits on `images`)."""
  init = jax.jit(lambda rng, x: reference.init(rng, x, train=False))  # compiled: eager init of a ResNet takes 10 s
  params = randomised(init(jax.random.PRNGKey(7), images[:1])['params'])
  export_npz(params, tmp_path / 'weights.npz', **export)
  out = jax.jit(lambda p, x: reference.apply({'params': p}, x, train=False))(params, images)
  return str(tmp_path / 'weights.npz'), np.asarray(out[0] if isinstance(out, tuple) else out)


def created_logits(path, images=IMAGES, **kw):
  model, variables = pretrained.create(path, **kw)
  return model, np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))


def max_difference(a, b):
  return float(np.abs(a - b).max())


@pytest.mark.parametrize(
  'classifier,representation_size,one_counter',
  [
    ('token', None, True),  # ViT-B_16.npz: class token, pre-Linen numbering
    ('token', 24, False),  # ImageNet-21k files: tanh pre-logits layer
    ('gap', None, False),
  ],
)
@pytest.mark.slow
def test_vision_transformer_npz_rebuilds_and_reproduces_models_vit(
  tmp_path, classifier, representation_size, one_counter
):
  path, expected = source_logits(
    vision_transformer_vit(classifier, representation_size), tmp_path, one_counter=one_counter
  )
  model, logits = created_logits(path)
  difference = max_difference(logits, expected)
  print(f'models_vit {classifier} pre_logits={representation_size}: max |logit difference| {difference:.2e}')
  assert difference < 1e-5 and np.abs(expected).max() > 0.1
  # The same file into a hand-built model of the same name gives the same logits.
  hand_built = models.create(VIT_NAME, 10, classifier=classifier, representation_size=representation_size)
  assert max_difference(np.asarray(hand_built.apply(pretrained.load(path, hand_built, 16), IMAGES)), expected) < 1e-5


@pytest.mark.parametrize(
  'pool_type,kw,prefix',
  [
    ('tok', {}, 'params/'),  # position embedding added before the class token
    ('map', {}, ''),  # attention pooling (MAPHead)
    ('gap', dict(rep_size=True), 'params/'),  # pre-logits as wide as the model
    ('tok', dict(posemb='sincos2d'), ''),  # no position embedding in the file
    ('map', dict(scan=True), ''),  # scanned blocks, stacked along a depth axis
  ],
)
@pytest.mark.slow
def test_big_vision_npz_rebuilds_and_reproduces_big_vision_vit(tmp_path, pool_type, kw, prefix):
  path, expected = source_logits(big_vision_vit(pool_type=pool_type, **kw), tmp_path, prefix=prefix)
  model, logits = created_logits(path)
  difference = max_difference(logits, expected)
  print(f'big_vision {pool_type} {kw}: max |logit difference| {difference:.2e}')
  assert difference < 1e-5 and np.abs(expected).max() > 0.1
  described = pretrained.describe(path)
  assert described.fields['classifier'] == {'tok': 'token'}.get(pool_type, pool_type)
  assert described.fields['num_heads'] == VIT['num_heads'] and described.assumed == {}


def test_vision_transformer_mixer_npz_rebuilds_and_reproduces_models_mixer(tmp_path):
  _, models_mixer = sources.vision_transformer()
  reference = models_mixer.MlpMixer(
    patches=ml_collections.ConfigDict({'size': (4, 4)}),
    num_classes=10,
    num_blocks=2,
    hidden_dim=32,
    tokens_mlp_dim=8,
    channels_mlp_dim=64,
  )
  path, expected = source_logits(reference, tmp_path)
  model, logits = created_logits(path)
  difference = max_difference(logits, expected)
  print(f'models_mixer: max |logit difference| {difference:.2e}')
  assert difference < 1e-5 and np.abs(expected).max() > 0.1
  assert models.describe(model_name := models.name_for('mixer', pretrained.describe(path).fields)) == model_name


# isojax name: vision_transformer configs/models.py function (l.269-332)
HYBRIDS = {
  'R50+ViT-B/16': 'get_r50_b16_config',
  'R26+ViT-S/32': 'get_r26_s32_config',
  'R26+ViT-B/32': 'get_r26_b32_config',
  'R50+ViT-L/32': 'get_r50_l32_config',
}


def count(model, size=224):
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False))
  return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables['params']))


@pytest.mark.parametrize('name', list(HYBRIDS))
def test_each_hybrid_is_vision_transformers_config_with_its_parameter_count(name):
  from tests.test_models import PUBLISHED_PARAMS  # isojax's count, pinned there by abstract evaluation

  models_vit, _ = sources.vision_transformer()
  config = getattr(sources.vision_transformer_configs(), HYBRIDS[name])()
  reference = models_vit.VisionTransformer(num_classes=1000, **{k: config[k] for k in config.keys()})
  entry, fields = models.resolve(name)
  assert PUBLISHED_PARAMS[name] == count(reference)
  assert (
    fields['resnet_stages'] == tuple(config.resnet.num_layers) and fields['width_factor'] == config.resnet.width_factor
  )
  assert fields['dropout_rate'] == config.transformer.dropout_rate and fields['patch_size'] == config.patches.size[0]
  assert entry.name == name and config.model_name == name.replace('/', '_')


@pytest.mark.slow
def test_hybrid_npz_rebuilds_and_reproduces_models_vit_with_a_resnet(tmp_path, one_counter=True):
  # R50+ViT-B_16.npz numbers its blocks' modules with one counter (pre-Linen); the ViT test covers both layouts
  models_vit, _ = sources.vision_transformer()
  reference = models_vit.VisionTransformer(
    num_classes=10,
    patches=ml_collections.ConfigDict({'size': (1, 1)}),
    hidden_size=VIT['hidden_size'],
    resnet=ml_collections.ConfigDict({'num_layers': (1, 2), 'width_factor': 0.5}),
    transformer=dict(
      num_layers=VIT['depth'],
      mlp_dim=VIT['mlp_dim'],
      num_heads=VIT['num_heads'],
      dropout_rate=0.0,
      attention_dropout_rate=0.0,
    ),
  )
  path, expected = source_logits(reference, tmp_path, one_counter=one_counter)
  assert 'block2/unit2/gn3/scale' in np.load(path) and 'block2/unit1/conv_proj/kernel' in np.load(path)
  model, logits = created_logits(path)
  difference = max_difference(logits, expected)
  print(f'models_vit hybrid: max |logit difference| {difference:.2e}')
  assert difference < 1e-5 and np.abs(expected).max() > 0.1
  assert models.describe(models.name_for('hybrid', pretrained.describe(path).fields)) == 'Rs1.2-w32+ViT-32x2/1-h2-m64'
  assert pretrained.describe(path).image_size == 16  # 2 x 2 tokens, each 8 x 8 pixels of the ResNet's grid


def test_the_hybrid_resnet_standardises_filters_as_models_resnet_does():
  """(w - mean) / (std + 1e-5), not timm's rsqrt(var + eps): models_resnet.weight_standardize, run."""
  models_resnet = sources.load('vit_jax_models_resnet.py', 'vit_jax.models_resnet')
  from isojax.models import hybrid

  kernel = 0.01 * jax.random.normal(jax.random.PRNGKey(0), (3, 3, 4, 8))
  expected = models_resnet.weight_standardize(kernel, axis=[0, 1, 2], eps=1e-5)
  np.testing.assert_allclose(hybrid.weight_standardize(kernel), expected, rtol=1e-6, atol=1e-6)
  timm_style = (kernel - kernel.mean((0, 1, 2))) * jax.lax.rsqrt(kernel.var((0, 1, 2)) + 1e-5)
  assert float(jnp.abs(timm_style - expected).max()) > 1e-2  # the formulas differ at this scale


@pytest.mark.slow
def test_create_fine_tunes_at_another_size_and_class_count(tmp_path):
  path, _ = source_logits(vision_transformer_vit(num_classes=1000), tmp_path)
  model, variables = pretrained.create(path, num_classes=10, image_size=32)
  assert variables['params']['stem']['pos_embedding'].shape == (1, 1 + 8 * 8, 32)
  assert variables['params']['head']['kernel'].shape == (32, 10) and not variables['params']['head']['kernel'].any()
  assert model.apply(variables, jnp.zeros((2, 32, 32, 3))).shape == (2, 10)


def test_an_override_that_contradicts_the_file_is_an_error(tmp_path):
  path, _ = source_logits(vision_transformer_vit(), tmp_path)
  with pytest.raises(ValueError, match=r'holds a model with num_heads=2; the override num_heads=4 contradicts'):
    pretrained.create(path, num_heads=4)


def test_a_truncated_npz_is_a_clear_error(tmp_path):
  path, _ = source_logits(vision_transformer_vit(), tmp_path)
  data = open(path, 'rb').read()
  (tmp_path / 'cut.npz').write_bytes(data[: len(data) // 2])
  model = models.create(VIT_NAME, 10)
  with pytest.raises(ValueError, match=r'Cannot read .*cut.npz.* is the file complete'):
    pretrained.load(str(tmp_path / 'cut.npz'), model, 16)
  with pytest.raises(FileNotFoundError, match='No pretrained weights'):
    pretrained.create(str(tmp_path / 'missing.npz'))


def test_weights_of_another_architecture_are_refused(tmp_path):
  _, models_mixer = sources.vision_transformer()
  reference = models_mixer.MlpMixer(
    patches=ml_collections.ConfigDict({'size': (4, 4)}),
    num_classes=10,
    num_blocks=2,
    hidden_dim=32,
    tokens_mlp_dim=8,
    channels_mlp_dim=64,
  )
  path, _ = source_logits(reference, tmp_path)
  with pytest.raises(ValueError, match=r"have no 'params/stem/cls'|another architecture"):
    pretrained.load(path, models.create(VIT_NAME, 10), 16)
  deeper = models.create('Mixer-48x2/4-t8-c64', 10)
  with pytest.raises(
    ValueError,
    match=r"Pretrained 'params/[\w/]+' has shape \([\d, ]*32[\d, ]*\), "
    r'but the model expects \([\d, ]*48[\d, ]*\)',
  ):
    pretrained.load(path, deeper, 16)


@pytest.mark.slow
def test_tensors_the_model_does_not_use_fail_the_load_listing_them(tmp_path):
  # A file with a tanh pre-logits layer, loaded into a model without one: "loads" only with strict=False.
  path, _ = source_logits(vision_transformer_vit('token', representation_size=24), tmp_path)
  model = models.create(VIT_NAME, 10, classifier='token')
  with pytest.raises(
    ValueError,
    match=r'2 tensor\(s\) in the weights are not used by the model: '
    r"\['params/pre_logits/bias', 'params/pre_logits/kernel'\]",
  ):
    pretrained.load(path, model, 16)
  with pytest.warns(UserWarning, match='not used by the model'):
    pretrained.load(path, model, 16, strict=False)


@pytest.mark.slow
def test_an_array_no_isojax_module_reads_is_refused_by_name(tmp_path):
  path, _ = source_logits(vision_transformer_vit(), tmp_path)
  arrays = dict(np.load(path))
  arrays['Transformer/encoderblock_0/LayerScale_0/scale'] = np.ones(32, np.float32)
  np.savez(tmp_path / 'extra.npz', **arrays)
  with pytest.raises(
    ValueError,
    match=r'1 array\(s\) of this ViT checkpoint have no place in isojax: '
    r"\['Transformer/encoderblock_0/LayerScale_0/scale'\]",
  ):
    pretrained.create(str(tmp_path / 'extra.npz'))


def test_vendored_sources_are_verbatim_copies():
  for filename, (repository, _, path, blob) in sources.SOURCES.items():
    assert sources.git_blob_hash(f'{sources.HERE}/{filename}') == blob, f'{filename} differs from {repository}:{path}'


@pytest.mark.slow
def test_a_big_vision_scan_true_file_fills_isojax_scanned_blocks_with_its_stacked_arrays_as_they_are(tmp_path):
  """big_vision's `scan=True` stacks every block's parameter along a leading depth axis (vit.py l.137-148);
  isojax's scanned blocks hold the same arrays, bit for bit, and give the source's logits."""
  path, expected = source_logits(big_vision_vit(pool_type='map', scan=True), tmp_path)
  model, logits = created_logits(path, scan=True)
  assert model.scan and max_difference(logits, expected) < 1e-5
  _, variables = pretrained.create(path, scan=True)
  source = np.load(path)
  mlp = source['Transformer/encoderblock/MlpBlock_0/Dense_0/kernel']
  assert mlp.shape[0] == VIT['depth']
  np.testing.assert_array_equal(variables['params']['blocks']['channel_mixing']['Dense_0']['kernel'], mlp)
  np.testing.assert_array_equal(
    variables['params']['blocks']['norm1']['scale'], source['Transformer/encoderblock/LayerNorm_0/scale']
  )
