"""Every published model and recipe is its source: each test re-derives the source's own formula.

Sources are cited next to each test (repository, file, line); see also the README's tables.
"""

import json
import os
import subprocess
import sys

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isojax import models
from isojax.core import config as config_schema
from isojax.core import loading
from isojax.data import randaugment
from isojax.training import optim, plan, train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'configs')


def init_params(name, image_size, num_classes=1000, **kw):
  model = models.create(name, num_classes, **kw)
  images = jnp.zeros((1, image_size, image_size, 3))
  variables = jax.jit(
    lambda: model.init(jax.random.PRNGKey(0), images, train=False)
  )()  # compiled: seconds, not minutes
  return jax.tree_util.tree_map(np.asarray, variables['params'])


def xavier_bound(fan_in, fan_out):
  """flax/jax `xavier_uniform`: U(-b, b), b = sqrt(6 / (fan_in + fan_out))."""
  return np.sqrt(6.0 / (fan_in + fan_out))


def assert_uniform(x, bound):
  """Drawn from U(-bound, bound): inside it, reaching near it, with its standard deviation."""
  x = np.asarray(x).ravel()
  assert np.abs(x).max() <= bound * (1 + 1e-6)
  assert np.abs(x).max() > 0.95 * bound
  np.testing.assert_allclose(x.std(), bound / np.sqrt(3), rtol=0.05)


# --- models: initialisers of the codebase each name refers to ----------------------------------


@pytest.mark.slow
def test_vit_s16_starts_like_vision_transformer():
  # vit_jax/models_vit.py: q/k/v/out xavier_uniform on [C, C] each (l.139-146), MLP xavier + N(0, 1e-6)
  # biases (l.74-77), posemb N(0, 0.02) (l.192), zero cls (l.281), zero head (l.303-307),
  # nn.Conv's lecun_normal patch embedding (l.264).
  params = init_params('ViT-S/16', 224)
  width, mlp = 384, 1536
  block = params['block_0']
  qkv = block['token_mixing']['attention']['qkv']['kernel']
  for part in np.split(qkv, 3, axis=1):  # each as its own [C, C] Dense, not xavier over [C, 3C]
    assert_uniform(part, xavier_bound(width, width))
  assert np.abs(qkv).max() > xavier_bound(width, 3 * width) * 1.3
  assert_uniform(block['token_mixing']['attention']['out']['kernel'], xavier_bound(width, width))
  assert_uniform(block['channel_mixing']['Dense_0']['kernel'], xavier_bound(width, mlp))
  assert_uniform(block['channel_mixing']['Dense_1']['kernel'], xavier_bound(mlp, width))
  np.testing.assert_allclose(block['channel_mixing']['Dense_0']['bias'].std(), 1e-6, rtol=0.1)
  assert not block['token_mixing']['attention']['qkv']['bias'].any()
  np.testing.assert_allclose(params['stem']['pos_embedding'].std(), 0.02, rtol=0.02)
  assert not params['stem']['cls'].any() and not params['head']['kernel'].any()
  patch = params['stem']['patch_embed']['embedding']['kernel']
  np.testing.assert_allclose(patch.std(), np.sqrt(1.0 / (16 * 16 * 3)), rtol=0.02)  # lecun_normal
  assert (block['norm1']['scale'] == 1).all() and not block['norm1']['bias'].any()


@pytest.mark.slow
def test_mixer_starts_like_vision_transformer_models_mixer():
  # vit_jax/models_mixer.py l.27-29: nn.Dense defaults (lecun_normal kernel, zero bias); zero head l.69.
  params = init_params('Mixer-S/16', 224)
  block = params['block_0']
  tokens = block['token_mixing']['mlp']['Dense_0']
  np.testing.assert_allclose(tokens['kernel'].std(), np.sqrt(1.0 / 196), rtol=0.05)
  channels = block['channel_mixing']['Dense_0']
  np.testing.assert_allclose(channels['kernel'].std(), np.sqrt(1.0 / 512), rtol=0.02)
  assert not tokens['bias'].any() and not channels['bias'].any()
  assert not params['head']['kernel'].any()


def torch_default_bound(fan_in):
  """torch nn.Linear / nn.Conv2d reset_parameters: kaiming_uniform_(a=sqrt(5)) -> gain sqrt(2 / (1 + a^2)),
  bound = gain * sqrt(3 / fan_in); the bias is U(+-1/sqrt(fan_in))."""
  a = np.sqrt(5.0)
  return np.sqrt(2.0 / (1 + a**2)) * np.sqrt(3.0 / fan_in), 1.0 / np.sqrt(fan_in)


@pytest.mark.slow
def test_convmixer_starts_like_pytorch_as_locuslab_and_timm_leave_it():
  params = init_params('ConvMixer-256/8', 32, num_classes=10)
  block = params['block_0']
  for tensor, fan_in in (
    (params['stem']['patch_embed']['embedding'], 2 * 2 * 3),
    (block['token_mixing']['depthwise'], 5 * 5),  # groups=dim: in/groups = 1
    (block['channel_mixing']['pointwise'], 256),
    (params['head'], 256),
  ):  # nn.Linear, not zero
    weight_bound, bias_bound = torch_default_bound(fan_in)
    assert_uniform(tensor['kernel'], weight_bound)
    assert np.abs(tensor['bias']).max() <= bias_bound and tensor['bias'].std() > bias_bound / 3
  assert (block['token_mixing']['norm']['scale'] == 1).all()


@pytest.mark.slow
def test_convmixer_768_32_uses_relu_like_its_published_weights():
  # locuslab/convmixer README.md l.32-35; timm convmixer.py l.143: act_layer=nn.ReLU.
  entry, fields = models.resolve('ConvMixer-768/32')
  assert fields['activation'] == 'relu'
  assert models.resolve('ConvMixer-1536/20')[1]['activation'] == 'gelu'
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 28, 28, 3))
  model = models.create('ConvMixer-768/32', 10)
  variables = model.init(jax.random.PRNGKey(0), images)
  relu = models.create('ConvMixer-768/32', 10, activation='relu').apply(variables, images)
  gelu = models.create('ConvMixer-768/32', 10, activation='gelu').apply(variables, images)
  np.testing.assert_array_equal(model.apply(variables, images), relu)
  assert np.abs(np.asarray(relu) - np.asarray(gelu)).max() > 1e-3


def timm_registered_models(source: str, prefix: str) -> dict:
  """{timm name: its `model_args` dict(...) keywords} for `@register_model def {prefix}*` in `source`."""
  import ast

  found = {}
  for node in ast.parse(source).body:
    if isinstance(node, ast.FunctionDef) and node.name.startswith(prefix):
      call = next(n.value for n in node.body if isinstance(n, ast.Assign) and n.targets[0].id == 'model_args')
      found[node.name] = {k.arg: k.value for k in call.keywords if k.arg}
  return found


def test_resmlp_and_gmlp_variants_are_timms_registered_models():
  # timm mlp_mixer.py (vendored verbatim, parsed: it needs torch): resmlp_*_224 and gmlp_*16_224's
  # model_args, and ResBlock's default init_values where a model passes none.
  import ast

  from tests.reference import sources

  source = sources.text('timm_mlp_mixer.py')
  resblock = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == 'ResBlock')
  init = next(n for n in resblock.body if isinstance(n, ast.FunctionDef) and n.name == '__init__')
  defaults = dict(zip([a.arg for a in init.args.args][-len(init.args.defaults) :], init.args.defaults))
  ours = {
    'resmlp_12_224': 'ResMLP-S12',
    'resmlp_24_224': 'ResMLP-S24',
    'resmlp_36_224': 'ResMLP-S36',
    'resmlp_big_24_224': 'ResMLP-B24',
    'gmlp_ti16_224': 'gMLP-Ti/16',
    'gmlp_s16_224': 'gMLP-S/16',
    'gmlp_b16_224': 'gMLP-B/16',
  }
  registered = {**timm_registered_models(source, 'resmlp_'), **timm_registered_models(source, 'gmlp_')}
  assert sorted(registered) == sorted(ours)
  for timm_name, args in registered.items():
    _, fields = models.resolve(ours[timm_name])
    value = lambda key, args=args: ast.literal_eval(args[key])
    assert (fields['hidden_size'], fields['depth'], fields['patch_size'], fields['mlp_ratio']) == (
      value('embed_dim'),
      value('num_blocks'),
      value('patch_size'),
      value('mlp_ratio'),
    ), timm_name
    block = args['block_layer']
    if timm_name.startswith('resmlp'):
      scale = (
        ast.literal_eval(defaults['init_values'])
        if isinstance(block, ast.Name)
        else ast.literal_eval(next(k.value for k in block.keywords if k.arg == 'init_values'))
      )
      assert fields['layer_scale_init'] == scale, timm_name
      assert ast.unparse(args['norm_layer']) == 'Affine'
    else:
      assert ast.unparse(block) == 'SpatialGatingBlock' and ast.unparse(args['mlp_layer']) == 'GatedMlp'


@pytest.mark.slow
def test_resmlp_and_gmlp_start_like_timms_init_weights():
  # timm mlp_mixer.py _init_weights (l.519-556): xavier-uniform Linear, bias N(0, 1e-6) when 'mlp' is in
  # the module's name else 0; lecun-normal conv; zero head. gMLP's gate: N(0, 1e-6) weights, bias 1 (l.198-202).
  resmlp, gmlp = init_params('ResMLP-384x2/16', 224), init_params('gMLP-128x2/16', 224)  # S12's, Ti's widths
  tokens = 196
  block = resmlp['block_0']
  assert_uniform(block['token_mixing']['linear_tokens']['kernel'], xavier_bound(tokens, tokens))
  assert np.all(block['token_mixing']['linear_tokens']['bias'] == 0)  # 'blocks.0.linear_tokens'
  assert_uniform(block['channel_mixing']['Dense_0']['kernel'], xavier_bound(384, 1536))
  np.testing.assert_allclose(block['channel_mixing']['Dense_0']['bias'].std(), 1e-6, rtol=0.2)  # 'mlp_channels'
  np.testing.assert_allclose(block['ls1']['scale'], 1e-4)  # 2 blocks: as 12
  assert np.all(block['norm1']['alpha'] == 1) and np.all(block['norm1']['beta'] == 0)
  assert np.all(resmlp['head']['kernel'] == 0)
  g = gmlp['block_0']
  assert_uniform(g['fc1']['kernel'], xavier_bound(128, 768))
  np.testing.assert_allclose(g['fc1']['bias'].std(), 1e-6, rtol=0.2)
  np.testing.assert_allclose(g['gate']['proj']['kernel'].std(), 1e-6, rtol=0.05)
  assert np.all(g['gate']['proj']['bias'] == 1)
  stem = np.asarray(gmlp['stem']['patch_embed']['embedding']['kernel'])
  np.testing.assert_allclose(stem.std(), np.sqrt(1 / (16 * 16 * 3)), rtol=0.05)  # lecun-normal (truncated)


@pytest.mark.slow  # 12 s
def test_cait_variants_are_timms_registered_models_and_start_like_its_init():
  # timm cait.py (vendored verbatim, parsed): cait_{xxs24,s24}_224's model_args; init l.329-340.
  import ast

  from tests.reference import sources

  registered = timm_registered_models(sources.text('timm_cait.py'), 'cait_')
  for timm_name, ours in {'cait_xxs24_224': 'CaiT-XXS24', 'cait_s24_224': 'CaiT-S24'}.items():
    args = {k: ast.literal_eval(v) for k, v in registered[timm_name].items()}
    _, fields = models.resolve(ours)
    assert (
      fields['hidden_size'],
      fields['depth'],
      fields['num_heads'],
      fields['patch_size'],
      fields['layer_scale_init'],
    ) == (args['embed_dim'], args['depth'], args['num_heads'], args['patch_size'], args['init_values']), timm_name
  params = init_params('CaiT-192x2/16-h4', 224)  # CaiT-XXS24's width and heads, 2 blocks
  for kernel in (
    params['block_0']['token_mixing']['qkv']['kernel'],
    params['block_0']['token_mixing']['proj_l']['kernel'],
    params['class_block_0']['attention']['q']['kernel'],
    params['head']['kernel'],
    params['stem']['pos_embedding'],
    params['cls'],
  ):
    np.testing.assert_allclose(np.asarray(kernel).std(), 0.02, rtol=0.25)  # trunc_normal_(std=.02)
  assert_uniform(params['stem']['patch_embed']['embedding']['kernel'], 1 / np.sqrt(16 * 16 * 3))  # Conv2d default
  np.testing.assert_allclose(params['class_block_1']['ls2']['scale'], 1e-5)


def test_convnext_iso_variants_are_facebookresearch_convnexts_registered_models():
  # models/convnext_isotropic.py (vendored verbatim): convnext_isotropic_{small,base,large} build
  # ConvNeXtIsotropic(depth=, dim=), whose layer_scale_init_value defaults to 0 (no gamma) and whose
  # Block uses a 7x7 depthwise convolution (models/convnext.py l.28).
  import ast

  from tests.reference import sources

  tree = ast.parse(sources.text('convnext_models_convnext_isotropic.py'))
  built = {}
  for node in tree.body:
    if isinstance(node, ast.FunctionDef) and node.name.startswith('convnext_isotropic_'):
      call = next(n.value for n in node.body if isinstance(n, ast.Assign) and n.targets[0].id == 'model')
      built[node.name] = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
  ours = {
    'convnext_isotropic_small': 'ConvNeXt-iso-S',
    'convnext_isotropic_base': 'ConvNeXt-iso-B',
    'convnext_isotropic_large': 'ConvNeXt-iso-L',
  }
  assert sorted(built) == sorted(ours)
  for name, args in built.items():
    _, fields = models.resolve(ours[name])
    assert (fields['hidden_size'], fields['depth']) == (args['dim'], args['depth']) and fields['patch_size'] == 16
    assert fields.get('layer_scale_init') is None and fields['kernel_size'] == 7
  init = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == '__init__')
  defaults = dict(zip([a.arg for a in init.args.args][-len(init.args.defaults) :], init.args.defaults))
  assert ast.literal_eval(defaults['layer_scale_init_value']) == 0
  assert 'kernel_size=7, padding=3, groups=dim' in sources.text('convnext_models_convnext.py')


def test_convnext_iso_starts_like_its_trunc_normal_init():
  # convnext_isotropic.py l.51-54: trunc_normal_(std=.02) (bounds +-2: effectively N(0, 0.02)), zero biases.
  params = init_params('ConvNeXt-iso-384x2', 224)  # ConvNeXt-iso-S's width, 2 blocks
  block = params['block_0']
  for kernel in (
    block['dwconv']['kernel'],
    block['pwconv1']['kernel'],
    block['pwconv2']['kernel'],
    params['stem']['patch_embed']['embedding']['kernel'],
    params['head']['kernel'],
  ):
    np.testing.assert_allclose(np.asarray(kernel).std(), 0.02, rtol=0.1)
  assert all(np.all(block[k]['bias'] == 0) for k in ('dwconv', 'pwconv1', 'pwconv2'))
  assert 'ls' not in block and np.all(params['head']['bias'] == 0)


@pytest.mark.slow
def test_bit_resnetv2_standardises_its_filters_and_starts_like_timms_init_weights():
  # timm resnetv2.py _init_weights (l.797-817): kaiming-normal fan_out convolutions, head N(0, 0.01), zero bias;
  # std_conv.py StdConv2d: each filter standardised over (in, kh, kw), biased variance, eps 1e-8 (BiT).
  from isojax.models import resnetv2

  params = init_params('BiT-R50-w32', 64)  # half BiT-R50x1's width (suite time): the same initialisers
  stem = np.asarray(params['stem']['kernel'])
  np.testing.assert_allclose(stem.std(), np.sqrt(2 / (32 * 7 * 7)), rtol=0.05)
  np.testing.assert_allclose(np.asarray(params['head']['kernel']).std(), 0.01, rtol=0.05)
  assert (
    np.all(params['head']['bias'] == 0)
    and 'downsample' in params['stage2_0']
    and 'downsample' not in params['stage2_1']
  )
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 9, 9, 5))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 5, 4)) * 3 + 1
  out = resnetv2.StdConv(4, 3).apply({'params': {'kernel': kernel}}, x)
  flat = np.asarray(kernel).reshape(-1, 4)
  standard = ((flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-8)).reshape(kernel.shape)
  expected = jax.lax.conv_general_dilated(
    x, standard, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_bit_depths_stack_the_blocks_per_stage_of_big_visions_get_block_desc():
  # big_vision/models/bit.py l.131-141, run from the vendored copy: BiT-R26 (the export tests' small member) is
  # its 26, (2, 2, 2, 2) bottleneck blocks, and each other depth isojax names has big_vision's stages too.
  from isojax.models import resnetv2
  from tests.reference import sources

  bit = sources.big_vision_bit()
  assert {depth: tuple(bit.get_block_desc(depth)) for depth in resnetv2.STAGES} == resnetv2.STAGES
  model = models.create('BiT-R26-w16-g8', 10)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
  blocks = [name for name in shapes['params'] if name.startswith('stage')]
  assert sorted(blocks) == [f'stage{s}_{b}' for s in range(1, 5) for b in range(2)]


@pytest.mark.parametrize('size', ['Ti', 'S', 'M', 'B', 'L', 'So400m', 'H', 'g', 'G'])
def test_vit_sizes_are_big_visions_decode_variant_and_count_its_models_parameters(size):
  # big_vision/models/vit.py decode_variant (l.297-300), run from the vendored copy, and its own Model at /14 with
  # 'tok' pooling (the position embedding before the class token, l.219-225), counted abstractly: ViT-G/14's
  # 1.8B parameters are never allocated. 'g' (1.0B) and 'G' (1.8B) are two sizes, told apart by case.
  from isojax.models import vit
  from tests.reference import sources

  source = sources.big_vision_vit()
  decoded = source.decode_variant(size)
  assert vit.SIZES[size] == dict(
    hidden_size=decoded['width'], depth=decoded['depth'], num_heads=decoded['num_heads'], mlp_dim=decoded['mlp_dim']
  )
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)

  def count(model):
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images)
    return sum(x.size for x in jax.tree_util.tree_leaves(shapes['params']))

  ours = models.create(f'ViT-{size}/14', 1000, posemb_class_token=False)
  assert count(ours) == count(source.Model(1000, variant=f'{size}/14', pool_type='tok'))


def test_vit_g_and_vit_G_are_two_models_whatever_the_spelling_of_the_rest():
  assert models.lookup('vit_g14').name == models.lookup('ViT-g/14').name == 'ViT-g/14'
  assert models.lookup('VIT-G-14').name == models.lookup('vit_G_14').name == 'ViT-G/14'
  assert models.lookup('vit_so400m_14').name == 'ViT-So400m/14' and models.lookup('vit-s-16').name == 'ViT-S/16'


# --- the name is the architecture -----------------------------------------------------------------


@pytest.mark.parametrize(
  'name,fields',
  [
    ('ViT-384x6/4', dict(hidden_size=384, depth=6, num_heads=6, mlp_dim=1536, patch_size=4)),
    ('ViT-32x2/4-h4-m64', dict(hidden_size=32, depth=2, num_heads=4, mlp_dim=64, patch_size=4)),
    ('Mixer-B/16', dict(hidden_size=768, depth=12, tokens_mlp_dim=384, channels_mlp_dim=3072, patch_size=16)),
    ('ConvMixer-128/6-k3-p2', dict(hidden_size=128, depth=6, kernel_size=3, patch_size=2)),
    ('convmixer_1024_20_ks9_p14', dict(hidden_size=1024, depth=20, kernel_size=9, patch_size=14)),
  ],
)
def test_parametric_names_fix_the_architecture(name, fields):
  entry, resolved = models.resolve(name)
  assert {k: resolved[k] for k in fields} == fields
  canonical = models.resolve(entry.name)[1]  # the canonical name builds the same model
  assert {k: canonical[k] for k in fields} == fields


def test_an_override_that_contradicts_the_name_is_an_error_naming_both():
  with pytest.raises(ValueError, match=r"'ViT-S/16' fixes depth=12, but depth=6.*'ViT-384x6/16'"):
    models.create('ViT-S/16', 10, depth=6)


def test_changing_the_name_alone_changes_the_whole_architecture():
  config = loading.load(os.path.join(CONFIGS, 'imagenet_vit_s16.py'), {'model.name': 'ViT-B/16'})
  model = models.create(config.model.name, 1000, **{k: v for k, v in config.model.to_dict().items() if k != 'name'})
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))
  assert shapes['params']['block_11']['channel_mixing']['Dense_0']['kernel'].shape == (768, 3072)


def test_default_config_is_named_for_what_it_builds():
  config = loading.load(os.path.join(CONFIGS, 'default.py'))
  assert models.config_name(config) == 'ConvMixer-128/6-k3-p2'


# --- recipes: the update each source's formula gives ----------------------------------------------


def tiny_params():
  return init_params('ViT-16x1/4-h2-m32', 8, num_classes=3)


def zero_gradient_step_at(config, step, total_steps, steps_per_epoch):
  tx, _ = optim.create(config.optimizer, total_steps, steps_per_epoch)
  params = tiny_params()
  state = optim._with_count(tx.init(params), step)
  updates, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), state, params)
  return params, jax.tree_util.tree_map(lambda p, u: np.asarray(p + u), params, updates)


def load_config(name, **overrides):
  return loading.load(os.path.join(CONFIGS, name), overrides)


@pytest.mark.slow
def test_imagenet_vit_s16_decays_every_kernel_by_big_visions_wd_at_peak_and_leaves_biases():
  # big_vision/optax.py make(): chain(clip, scale_by_adam, scale(lr), add_decayed_weights(wd, kernels),
  # scale_by_schedule(sched), scale(-1)) with sched = 1 at the end of warmup: p <- p - 1 * (lr * 0 + wd * p).
  config = load_config('imagenet_vit_s16.py')
  total = plan.durations(config, 1_268_355).total_steps
  before, after = zero_gradient_step_at(config, config.optimizer.warmup_steps, total, 1_268_355 / 1024)
  flat_before = jax.tree_util.tree_leaves_with_path(before)
  flat_after = jax.tree_util.tree_leaves(after)
  for (path, b), a in zip(flat_before, flat_after):
    if jax.tree_util.keystr(path).endswith("['kernel']"):
      np.testing.assert_allclose(a, b * (1 - 1e-4), rtol=1e-6, atol=1e-12)
    else:
      np.testing.assert_array_equal(a, b)


def test_imagenet_vit_s16_keeps_adams_first_moment_in_bfloat16():
  config = load_config('imagenet_vit_s16.py')  # optax=dict(mu_dtype='bfloat16'), vit_s16_i1k.py l.76
  tx, _ = optim.create(config.optimizer, 100_000, 1000.0)
  state = tx.init(tiny_params())
  mus = [s.mu for s in jax.tree_util.tree_leaves(state, is_leaf=lambda s: hasattr(s, 'mu')) if hasattr(s, 'mu')]
  assert mus and all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(mus))


def test_imagenet_vit_s16_has_big_visions_pre_logits():
  config = load_config('imagenet_vit_s16.py')  # rep_size=True: Dense(width) + tanh (vit.py l.259-265)
  assert config.model.representation_size == 384 and config.model.classifier == 'gap'


@pytest.mark.slow
def test_imagenet_convmixer_decays_like_torch_adamw():
  # torch.optim.AdamW: p <- p * (1 - lr * weight_decay); lr at the onecycle peak (40% of training) is 0.01.
  config = load_config('imagenet_convmixer_1536_20.py')
  total = plan.durations(config, 1_281_167).total_steps
  peak = round(0.4 * total) - 1  # the source evaluates the schedule at the end of the step
  before, after = zero_gradient_step_at(config, peak, total, 1_281_167 / 640)
  np.testing.assert_allclose(
    after['head']['kernel']
    if before['head']['kernel'].any()
    else after['block_0']['channel_mixing']['Dense_0']['kernel'],
    (
      before['head']['kernel']
      if before['head']['kernel'].any()
      else before['block_0']['channel_mixing']['Dense_0']['kernel']
    )
    * (1 - 0.01 * 2e-5),
    rtol=1e-6,
  )


def test_cifar10_convmixer_learning_rate_is_locuslabs_interp_at_every_tenth():
  # locuslab/convmixer-cifar10 train.py l.99-100 and l.114: lr = interp(epoch + (i + 1) / len(loader),
  # [0, E*2//5, E*4//5, E], [0, lr_max, lr_max/20, 0]).
  for epochs in (100, 25, 12, 7):
    config = load_config('cifar10_convmixer.py', num_epochs=epochs)
    steps = plan.durations(config, 50_000)
    lr = optim.schedule(config.optimizer, steps.total_steps, steps.steps_per_epoch)
    for tenth in range(11):
      step = max(round(tenth / 10 * steps.total_steps) - 1, 0)
      t = (step + 1) / steps.total_steps * epochs
      # E*2//5, E*4//5: the source's whole epochs (12 epochs: 4 and 9, not 4.8 and 9.6).
      expected = np.interp(t, [0, epochs * 2 // 5, epochs * 4 // 5, epochs], [0, 0.05, 0.05 / 20, 0])
      np.testing.assert_allclose(float(lr(step)), expected, rtol=1e-5, atol=1e-9)


@pytest.mark.slow
def test_cifar10_convmixer_decays_every_parameter_times_lr_and_does_not_clip():
  # optim.AdamW(model.parameters(), lr, weight_decay=0.005): every tensor, p *= 1 - lr * wd; no --clip-norm.
  config = load_config('cifar10_convmixer.py')
  total = plan.durations(config, 50_000).total_steps
  peak = round(0.4 * total) - 1
  before, after = zero_gradient_step_at(config, peak, total, 50_000 / 512)
  factor = 1 - 0.05 * 0.005
  for b, a in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
    np.testing.assert_allclose(a, b * factor, rtol=1e-6, atol=1e-12)
  assert not config.optimizer.clip_norm


def test_cifar10_convmixer_augments_with_torchvisions_randaugment_and_colour_jitter():
  config = load_config('cifar10_convmixer.py')
  assert 'randaugment(num_ops=2, magnitude=12, flavour=torchvision)' in config.data.train_pp
  assert 'color_jitter(brightness=0.2, contrast=0.2, saturation=0.2)' in config.data.train_pp
  assert 'random_erasing(0.2' in config.data.train_pp and 'fill=zero' in config.data.train_pp


def test_imagenet_mixer_follows_big_vision_sigmoid_loss_and_linear_end():
  config = load_config('imagenet_mixer_b16.py')  # big_vision/configs/mlp_mixer_i1k.py
  assert config.loss == 'sigmoid_xent' and config.model.head_bias_init == -6.9
  total = plan.durations(config, 1_268_355).total_steps
  lr = optim.schedule(config.optimizer, total, 1_268_355 / 4096)
  # utils.create_learning_rate_schedule, decay_type='linear': zero + (lr - zero) * (1 - progress), zero = 1e-5.
  for step in (10_000, 20_000, total):
    progress = min(max((step - 10_000) / (total - 10_000), 0), 1)
    expected = 1e-3 * (1e-5 + (1 - 1e-5) * (1 - progress))
    np.testing.assert_allclose(float(lr(step)), expected, rtol=1e-5)


# --- durations resolve at run time ------------------------------------------------------------


def opt_config(**fields):
  config = config_schema.base().optimizer
  config.update(fields)
  return config


def test_warmup_in_epochs_or_fraction_resolves_to_steps():
  assert optim.warmup_steps(opt_config(warmup_epochs=2.0), 1000, 37.5) == 75
  assert optim.warmup_steps(opt_config(warmup_fraction=0.05), 1000, 37.5) == 50
  with pytest.raises(ValueError, match='one way only'):
    optim.warmup_steps(opt_config(warmup_steps=5, warmup_fraction=0.1), 1000, 10.0)


def test_a_warmup_longer_than_training_is_an_error_naming_both_numbers():
  with pytest.raises(ValueError, match=r'10000 steps\) does not fit in the 980 training steps'):
    optim.schedule(opt_config(warmup_steps=10_000), 980, 98.0)


@pytest.mark.parametrize(
  'config_name',
  [
    'default.py',
    'cifar10_convmixer.py',
    'cifar10_vit.py',
    'cifar10_mixer.py',
    'imagenet_vit_s16.py',
    'imagenet_mixer_b16.py',
    'imagenet_convmixer_1536_20.py',
    'cifar10_finetune.py',
  ],
)
@pytest.mark.parametrize('epochs', [3, 25, 300])
def test_every_config_reaches_its_final_learning_rate_at_its_last_step(config_name, epochs):
  sizes = {'isojax_digits': 1437, 'cifar10': 49_000 if 'finetune' in config_name else 50_000, 'imagenet2012': 1_268_355}
  config = load_config(config_name, num_epochs=float(epochs), num_steps=0)
  steps = plan.durations(
    config,
    sizes[config.data.name]
    if config.data.name != 'imagenet2012'
    else (1_281_167 if config.data.train_split == 'train' else 1_268_355),
  )
  opt = config.optimizer
  if opt.warmup_steps and opt.warmup_steps >= steps.total_steps:
    with pytest.raises(ValueError, match=f'{opt.warmup_steps} steps\\) does not fit in the {steps.total_steps}'):
      optim.schedule(opt, steps.total_steps, steps.steps_per_epoch)
    return
  lr = optim.schedule(opt, steps.total_steps, steps.steps_per_epoch)
  final = 0.0 if opt.schedule == 'onecycle' else opt.lr * opt.end_lr_factor
  last = steps.total_steps - 1 if opt.schedule == 'onecycle' else steps.total_steps
  np.testing.assert_allclose(float(lr(last)), final, atol=1e-12)
  values = np.asarray(jax.vmap(lr)(np.arange(steps.total_steps + 1)))
  peak = int(values.argmax())
  assert (np.diff(values[peak:]) <= 1e-12).all()  # never rises again after the peak


# --- EMA covers BatchNorm statistics (timm ModelEmaV2/V3 average the whole state_dict) -------


@pytest.mark.slow
def test_ema_averages_batchnorm_statistics_and_an_ema_evaluation_uses_them():
  model = models.create('ConvMixer-16/1', 3, kernel_size=3, patch_size=2)
  config = opt_config(lr=1e-2)
  tx, lr = optim.create(config, 10)
  state = train_step.init_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3), ema=True)
  batch = {'image': jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3)) * 3 + 1, 'label': jnp.array([0, 1, 2, 0])}
  decay = 0.9
  new, _ = train_step.train_step(
    state,
    batch,
    jax.random.PRNGKey(2),
    model=model,
    tx=tx,
    learning_rate=lr,
    options=train_step.StepOptions(num_classes=3, ema_decay=decay),
    axis_name=None,
  )
  expected = jax.tree_util.tree_map(
    lambda old, now: decay * old + (1 - decay) * now, state.batch_stats, new.batch_stats
  )
  for e, got in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(new.ema_batch_stats)):
    np.testing.assert_allclose(got, e, rtol=1e-6)
  assert not np.allclose(
    jax.tree_util.tree_leaves(new.ema_batch_stats)[0], jax.tree_util.tree_leaves(new.batch_stats)[0]
  )
  assert new.variables(use_ema=True)['batch_stats'] is new.ema_batch_stats


# --- RandAugment on the scale, and with the probabilities, of the cited implementation -------

IMAGE = jnp.asarray(np.random.RandomState(0).randint(30, 200, (32, 40, 3)), jnp.float32)


def arg_of(flavour, op, level, sign=1.0, **kw):
  fn, to_arg = randaugment.ops_of(flavour, **kw)[op]
  return float(to_arg(jnp.float32(level), jnp.float32(sign), IMAGE))


def test_torchvision_flavour_reads_magnitude_as_a_bin_of_31():
  # torchvision/transforms/autoaugment.py RandAugment._augmentation_space(num_bins=31, image_size).
  bins = 31
  assert arg_of('torchvision', 'Rotate', 12) == pytest.approx(np.linspace(0.0, 30.0, bins)[12])
  assert arg_of('torchvision', 'ShearX', 12, -1) == pytest.approx(-np.linspace(0.0, 0.3, bins)[12])
  assert arg_of('torchvision', 'TranslateX', 12) == pytest.approx(
    np.floor(np.linspace(0.0, 150.0 / 331.0 * 40, bins)[12])
  )
  assert arg_of('torchvision', 'Brightness', 12) == pytest.approx(1 + np.linspace(0.0, 0.9, bins)[12])
  posterize_bits = 8 - np.round(np.arange(bins) / ((bins - 1) / 4)).astype(int)
  assert arg_of('torchvision', 'Posterize', 12) == posterize_bits[12]
  assert arg_of('torchvision', 'Solarize', 12) == pytest.approx(np.linspace(255.0, 0.0, bins)[12])
  assert len(randaugment.ops_of('torchvision')) == 14


def test_timm_flavour_reads_magnitude_out_of_ten():
  # timm/data/auto_augment.py: _rotate_level_to_arg (level / 10 * 30), _posterize_increasing (4 - int(level/10*4)),
  # _solarize_increasing (256 - int(level/10*256)), _enhance_increasing (1 + level/10 * 0.9, random sign).
  assert arg_of('timm', 'Rotate', 9) == pytest.approx(27.0)
  assert arg_of('timm', 'Posterize', 9, increasing=True) == 4 - int(9 / 10 * 4)
  assert arg_of('timm', 'Posterize', 9, increasing=False) == int(9 / 10 * 4)
  assert arg_of('timm', 'Solarize', 9, increasing=True) == 256 - int(9 / 10 * 256)
  assert arg_of('timm', 'Color', 9, -1, increasing=True) == pytest.approx(1 - 0.81)
  assert arg_of('timm', 'Color', 9, increasing=False) == pytest.approx(9 / 10 * 1.8 + 0.1)
  assert arg_of('timm', 'SolarizeAdd', 9) == min(128, int(9 / 10 * 110))
  assert len(randaugment.ops_of('timm')) == 15


def test_big_vision_flavour_uses_absolute_translation_and_cutout():
  # big_vision/pp/archive/autoaugment.py: translate_const=100, cutout_const=40, enhance level/10*1.8+0.1.
  assert arg_of('big_vision', 'TranslateX', 10, -1) == pytest.approx(-100.0)
  assert arg_of('big_vision', 'Cutout', 10) == 40.0
  assert arg_of('big_vision', 'Brightness', 10) == pytest.approx(1.9)
  assert len(randaugment.ops_of('big_vision')) == 16


def unchanged_fraction(**kwargs):
  unchanged = 0
  for i in range(200):
    out = randaugment.randaugment(IMAGE, jnp.array([i, 7]), num_ops=1, **kwargs)
    unchanged += bool(np.array_equal(np.asarray(out), np.asarray(IMAGE)))
  return unchanged / 200


def test_timm_applies_each_chosen_op_with_probability_one_half_and_torchvision_always():
  # timm AugmentOp(prob=0.5); torchvision applies every op (one in 14 is Identity).
  assert 0.38 < unchanged_fraction(magnitude=9, flavour='timm') < 0.62
  assert unchanged_fraction(magnitude=12, flavour='torchvision') < 0.2


def test_color_jitter_draws_its_brightness_factor_uniformly_in_its_range():
  # torchvision ColorJitter(brightness=0.2).get_params: factor U[0.8, 1.2]; the adjustment itself is PIL's
  # (tests/test_augmentation_fidelity.py checks it against torchvision's pixels).
  from scipy import stats

  flat = jnp.full((4, 4, 3), 200.0)
  factors = [
    float(randaugment.color_jitter(flat, jnp.array([i, 4]), brightness=0.2)[0, 0, 0]) / 200 for i in range(300)
  ]
  assert 0.8 <= min(factors) and max(factors) < 1.2
  assert stats.kstest(np.asarray(factors) + 0.0025, stats.uniform(0.8, 0.4).cdf).pvalue > 1e-3


# --- --dry_run ---------------------------------------------------------------------------------


def test_dry_run_resolves_the_cifar_recipe_without_the_dataset():
  record = plan.dry_run(load_config('cifar10_convmixer.py'))
  assert record['model'] == 'ConvMixer-256/8' and record['parameters'] == 594_186
  assert record['steps'] == 9766 and record['epochs'] == pytest.approx(100, rel=1e-3)
  assert set(record['lr_at']) == {str(p) for p in range(0, 101, 10)}
  assert record['lr_at']['40'] == pytest.approx(0.05, rel=1e-3) and record['lr_at']['100'] == 0.0
  # the peak of the interp falls between two steps: within 0.1% of lr_max * wd
  assert record['weight_decay_per_step_at_peak'] == pytest.approx(0.05 * 0.005, rel=1e-3)
  assert 'not downloaded' in record['dataset_note']
  # random_erasing follows normalize, so CIFAR's batches stay float32, normalised on the host
  assert not any('uint8' in op for op in record['augmentation'])
  assert "randaugment(num_ops=2, magnitude=12, flavour='torchvision')" in record['augmentation']
  assert record['regularisation'] == ['BatchNorm statistics over the whole global batch']


def test_dry_run_counts_the_state_in_all_and_per_device_under_pmap_and_under_fsdp():
  # ViT-L/16 with imagenet_vit_s16.py's optimizer (AdamW, first moment in bfloat16; no EMA), shapes only
  config = load_config('imagenet_vit_s16.py')
  config.model.name = 'ViT-L/16'
  replicated = plan.dry_run(config)
  assert replicated['state_bytes_per_device'] == replicated['state_bytes_total'] and replicated['mesh'] is None
  params = replicated['parameters']
  # float32 parameters and second moment, a bfloat16 first moment (and a few scalars: counts, the step)
  assert 10 * params <= replicated['state_bytes_total'] < 10 * params + 1024
  config.parallelism, config.mesh = 'jit', 'fsdp:8'
  sharded = plan.dry_run(config)
  assert sharded['mesh'] == {'fsdp': 8} and sharded['state_bytes_total'] == replicated['state_bytes_total']
  assert sharded['state_bytes_per_device'] <= 1.05 * sharded['state_bytes_total'] / 8
  assert sharded['whole_on_every_device'] == []  # nothing above the 1 MiB minimum stays whole
  assert 'GiB per device; jit on mesh' in plan.format_dry_run(sharded)


@pytest.mark.slow
def test_dry_run_names_each_recipes_randaugment_flavour_and_stochastic_depth_convention():
  mixer = plan.dry_run(load_config('imagenet_mixer_b16.py'))
  assert "randaugment(num_ops=2, magnitude=15, flavour='big_vision')" in mixer['augmentation']
  assert mixer['regularisation'] == ['stochastic depth 0.1 (linear over blocks; kept branches unscaled, big_vision)']
  vit = plan.dry_run(load_config('cifar10_vit.py'))
  assert vit['augmentation'][-2].startswith('random_erasing(') and vit['augmentation'][-2].endswith(
    'after mixup (timm)'
  )
  assert vit['regularisation'] == ['stochastic depth 0.1 (linear over blocks; kept branches / (1 - p), timm)']


@pytest.mark.slow
def test_dry_run_command_prints_the_plan_and_one_json_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'isojax.main',
      f'--config={CONFIGS}/imagenet_vit_s16.py',
      f'--workdir={workdir}',
      '--dry_run',
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  record = json.loads(out.stdout.strip().splitlines()[-1])
  assert {
    'model',
    'parameters',
    'gflops_per_image',
    'steps',
    'epochs',
    'lr_at',
    'weight_decay_per_step_at_peak',
  } <= set(record)
  assert record['model'] == 'ViT-S/16' and record['weight_decay_per_step_at_peak'] == pytest.approx(1e-4, rel=1e-5)
  assert 'learning rate at % of training' in out.stdout and not workdir.exists()
  assert "normalize(stats='half') on device (uint8 batches)" in record['augmentation']


@pytest.mark.parametrize('config_file', ['configs/imagenet_vit_s16.py', 'configs/imagenet_mixer_b16.py'])
def test_big_vision_imagenet_configs_crop_and_resize_as_big_vision_does(config_file, monkeypatch):
  """Their train and eval pp against big_vision's own ops (vendored pp/ops_image.py) on one JPEG:
  the same crop distribution (area and aspect-ratio ranges), and for the same window the same
  pixels up to big_vision's rounding to uint8 after each resize."""
  import tensorflow as tf

  from isojax.data import preprocess
  from tests.reference import sources

  ops = sources.big_vision_ops_image()
  config = loading.load(config_file)
  rng = np.random.default_rng(0)
  smooth = tf.image.resize(rng.uniform(0, 255, (30, 40, 3)).astype(np.float32), (375, 500))
  jpeg = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(smooth + rng.normal(0, 8, (375, 500, 3)), 0, 255), tf.uint8))
  sampled = {}

  def fixed_window(name):  # records the sampling ranges, returns one window for both
    def sample(image_size, bounding_boxes, seed=None, area_range=None, aspect_ratio_range=None, **kwargs):
      sampled[name] = (tuple(np.round(area_range, 6)), tuple(np.round(aspect_ratio_range, 6)))
      return tf.constant([40, 60, 0]), tf.constant([250, 300, -1]), tf.zeros([1, 1, 4])

    return sample

  monkeypatch.setattr(tf.image, 'sample_distorted_bounding_box', fixed_window('big_vision'))
  monkeypatch.setattr(tf.image, 'stateless_sample_distorted_bounding_box', fixed_window('isojax'))
  train_crop = config.data.train_pp.split('|')[0]
  theirs = ops.get_decode_jpeg_and_inception_crop(224)({'image': jpeg})['image']
  ours = preprocess.build(train_crop, 224, 3, encoded=True)(jpeg, tf.constant([0, 0], tf.int64))
  assert sampled['isojax'] == sampled['big_vision'] == ((0.05, 1.0), (0.75, 1.33))
  np.testing.assert_array_equal(tf.cast(tf.clip_by_value(ours, 0, 255), tf.uint8), theirs)

  eval_resize = '|'.join(config.data.eval_pp.split('|')[:2])  # resize_small(256)|central_crop(224)
  decoded = ops.get_decode()({'image': jpeg})
  theirs = ops.get_central_crop(224)(ops.get_resize_small(256)(decoded))['image']
  ours = preprocess.build(eval_resize, 224, 3, encoded=True)(jpeg, tf.constant([0, 0], tf.int64))
  np.testing.assert_array_equal(tf.cast(tf.clip_by_value(ours, 0, 255), tf.uint8), theirs)


def test_cifar10_finetune_crops_as_vision_transformers_input_pipeline(monkeypatch):
  """vit_jax/input_pipeline.py's training `_pp` (vendored, parsed): sample_distorted_bounding_box with its
  area_range and TF's default aspect range, then tf.image.resize without antialiasing; the config's crop
  asks TF for the same ranges and gives the same pixels for the same window."""
  import ast

  import tensorflow as tf

  from isojax.data import preprocess
  from tests.reference import sources

  calls = {
    node.func.attr: {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg != 'min_object_covered'}
    for node in ast.walk(ast.parse(sources.text('vit_jax_input_pipeline.py')))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    if node.func.attr in ('sample_distorted_bounding_box', 'resize')
  }
  source_area = calls['sample_distorted_bounding_box'].get('area_range')
  assert source_area == (0.05, 1.0) and 'aspect_ratio_range' not in calls['sample_distorted_bounding_box']
  assert calls['resize'] == {}  # bilinear, antialias=False: tf.image.resize's defaults
  sampled = {}

  def window(image_size, bounding_boxes, seed=None, area_range=None, aspect_ratio_range=None, **kwargs):
    sampled['isojax'] = (tuple(area_range), tuple(np.round(aspect_ratio_range, 6)))
    return tf.constant([2, 3, 0]), tf.constant([20, 24, -1]), tf.zeros([1, 1, 4])

  monkeypatch.setattr(tf.image, 'stateless_sample_distorted_bounding_box', window)
  image = tf.constant(np.random.default_rng(0).uniform(0, 255, (32, 32, 3)), tf.float32)
  crop = loading.load('configs/cifar10_finetune.py').data.train_pp.split('|')[0]
  ours = preprocess.build(crop, 224, 3)(image, tf.constant([0, 0], tf.int64))
  assert sampled['isojax'] == (source_area, (0.75, 1.33))  # TF's default aspect_ratio_range
  np.testing.assert_allclose(ours, tf.image.resize(tf.slice(image, [2, 3, 0], [20, 24, -1]), [224, 224]), atol=1e-4)


@pytest.mark.slow
def test_mixer_stochastic_depth_is_big_visions_unscaled_mask_and_timms_families_rescale(monkeypatch):
  """big_vision models/mlp_mixer.py `_stoch_depth_mask` (vendored, run): a kept branch keeps its value; timm's
  DropPath (and isojax's other families) divide it by 1 - p. imagenet_mixer_b16 cites big_vision."""
  from isojax.models import layers
  from tests.reference import sources

  bv = sources.big_vision_mlp_mixer()
  key = jax.random.PRNGKey(0)
  mask = np.asarray(bv._stoch_depth_mask(jnp.ones((20_000, 1, 1)), 0.3, False, lambda name: key))
  unscaled = np.asarray(
    layers.DropPath(0.3, scale=False).apply({}, jnp.ones((20_000, 1, 1)), True, rngs={'dropout': key})
  )
  scaled = np.asarray(layers.DropPath(0.3).apply({}, jnp.ones((20_000, 1, 1)), True, rngs={'dropout': key}))
  assert set(np.unique(mask)) == set(np.unique(unscaled)) == {0.0, 1.0}
  assert abs(mask.mean() - unscaled.mean()) < 0.02 and set(np.unique(scaled)) == {0.0, np.float32(1 / 0.7)}

  seen = {}
  original = layers.DropPath.__call__

  def record(self, x, train=False):
    seen.setdefault(self.scale, 0)
    seen[self.scale] += 1
    return original(self, x, train)

  monkeypatch.setattr(layers.DropPath, '__call__', record)
  for scale in (False, True, None):  # None: the family's default, big_vision's
    seen.clear()
    fields = {} if scale is None else {'drop_path_scale': scale}
    model = models.create('Mixer-16x2/4-t8-c16', 10, drop_path_rate=0.1, **fields)
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)
    assert list(seen) == [bool(scale)]
  assert load_config('imagenet_mixer_b16.py').model.drop_path_scale is False
  assert load_config('cifar10_mixer.py').model.drop_path_scale is True


# --- BatchNorm statistics over a chosen number of examples (an unsynchronised DDP run's per-GPU batch) ------------


def per_gpu_batch_norm(x, group):
  """torch DDP without --sync-bn: each GPU's BatchNorm2d normalises its own `group` examples (training-mode
  BatchNorm: (x - mean) / sqrt(biased var + eps)); flax's nn.BatchNorm computes that on each chunk."""
  norm = flax.linen.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  variables = norm.init(jax.random.PRNGKey(0), x[:group])
  outs = [norm.apply(variables, chunk, mutable=['batch_stats']) for chunk in jnp.split(x, x.shape[0] // group)]
  return jnp.concatenate([o for o, _ in outs]), [s['batch_stats'] for _, s in outs]


def test_group_batch_norm_normalises_each_group_as_its_own_gpu_would():
  from isojax.models import layers

  x = jax.random.normal(jax.random.PRNGKey(1), (12, 5, 5, 4)) * 3 + 1
  expected, stats = per_gpu_batch_norm(x, 4)
  norm = layers.GroupBatchNorm(4)
  variables = norm.init(jax.random.PRNGKey(0), x)
  got, updated = norm.apply(variables, x, mutable=['batch_stats'])
  np.testing.assert_allclose(got, expected, atol=2e-5)
  for key in ('mean', 'var'):  # the running statistics move towards the groups' mean
    np.testing.assert_allclose(updated['batch_stats'][key], np.mean([s[key] for s in stats], 0), rtol=1e-5)
  whole, _ = per_gpu_batch_norm(x, 12)
  np.testing.assert_allclose(
    layers.GroupBatchNorm(12).apply(variables, x, mutable=['batch_stats'])[0], whole, atol=2e-5
  )


@pytest.mark.slow
def test_group_batch_norm_spans_devices_when_the_group_is_larger_than_a_device_batch():
  from isojax.models import layers

  devices = jax.local_device_count()
  if devices < 4:
    pytest.skip('needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)')
  x = jax.random.normal(jax.random.PRNGKey(2), (devices, 2, 3, 3, 2)) * 2 - 1
  norm = layers.GroupBatchNorm(4, axis_name='d')  # two devices of two examples each
  variables = norm.init(jax.random.PRNGKey(0), x[0])
  apply = jax.pmap(lambda v, xs: norm.apply(v, xs, mutable=['batch_stats'])[0], axis_name='d', in_axes=(None, 0))
  got = apply(variables, x).reshape((devices * 2,) + x.shape[2:])
  expected, _ = per_gpu_batch_norm(x.reshape(got.shape), 4)
  np.testing.assert_allclose(got, expected, atol=2e-5)


def test_imagenet_convmixer_normalises_over_locuslabs_64_images_per_gpu():
  # locuslab/convmixer README l.46-70: 10 GPUs x -b 64, no --sync-bn.
  config = load_config('imagenet_convmixer_1536_20.py')
  assert config.model.batch_norm_group == 64 and config.batch_size == 640
  assert load_config('cifar10_convmixer.py').model.batch_norm_group == 0  # one GPU: the whole batch
