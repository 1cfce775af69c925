"""timm state dicts for `vit_*` (incl. `deit3_*`), `cait_*`, `mixer_*`, `resmlp_*`, `gmlp_*`, `convmixer_*` and `resnet*`
models, and facebookresearch/ConvNeXt's isotropic ConvNeXts (same torch layout), in isojax's layout.

What a timm file shows and what it cannot (`describe`):
- every width, depth, patch, MLP width and kernel size, from the tensors' shapes;
- ViT pooling: a `cls_token` means class-token pooling, none means average pooling;
  `fc_norm` means the final LayerNorm runs on the pooled vector (vision_transformer.py l.800,
  879, 902); a `pos_embed` without a slot for the class token means it is added before the
  class token (`no_embed_class`, DeiT III; l.839, 1062); `ls1.gamma`/`ls2.gamma` are LayerScale;
- not the number of attention heads: the fused qkv weight is [3C, C] whatever the heads. isojax
  takes timm's convention for its `vit_*` definitions, width/64 up to width 1024 and 16 above
  (`vit_huge_patch14_224`: 1280 wide, 16 heads, l.3269), and says so in `Weights.assumed`;
- not the activation: timm's defaults are exact (erf) GELU (`nn.GELU`) everywhere, and its one
  published ReLU model is `convmixer_768_32` (convmixer.py l.143), recognised by its shape.
LayerNorms are timm's `partial(nn.LayerNorm, eps=1e-6)` for ViT and Mixer; ConvMixer's
BatchNorm2d keeps PyTorch's 1e-5, which isojax's ConvMixer uses too.
"""
from __future__ import annotations

import math
import re

import numpy as np

from isojax.weights.formats import KeyTracker, Weights, block_count, grid_side, square_patch


def family(state: dict) -> str:
  """'vit', 'mixer' or 'convmixer', from the state dict's keys."""
  keys = set(state)
  if any(k.startswith('blocks_token_only.') for k in keys):
    return 'cait'
  if any('.attn.qkv.weight' in k for k in keys):
    return 'vit'
  if any('.mlp_tokens.fc1.weight' in k for k in keys):
    return 'mixer'
  if any('.linear_tokens.weight' in k for k in keys):
    return 'resmlp'
  if any('.mlp_channels.gate.proj.weight' in k for k in keys):
    return 'gmlp'
  if 'stem.weight' in keys and any(k.endswith('.dwconv.weight') for k in keys):
    return 'convnext_iso'
  if 'stem.0.weight' in keys and any(k.endswith('.0.fn.0.weight') for k in keys):
    return 'convmixer'
  if 'conv1.weight' in keys and 'layer1.0.conv1.weight' in keys:
    return 'resnet'
  if 'stem.conv.weight' in keys and 'stages.0.blocks.0.conv1.weight' in keys:
    return 'resnetv2'
  raise ValueError(f'Not a timm vit_*/deit3_*/cait_*/mixer_*/resmlp_*/gmlp_*/convmixer_*/resnet*/resnetv2_*_bit or ConvNeXt-iso state dict (first keys: {sorted(keys)[:5]}).')


def _linear(state, name):
  if f'{name}.bias' not in state:   # timm's qkv_bias=False
    return {'kernel': state[f'{name}.weight'].T}
  return {'kernel': state[f'{name}.weight'].T, 'bias': state[f'{name}.bias']}


def _norm(state, name):
  return {'scale': state[f'{name}.weight'], 'bias': state[f'{name}.bias']}


def _conv(weight):
  return np.transpose(weight, (2, 3, 1, 0))   # [out, in, kh, kw] -> [kh, kw, in, out]


def _batchnorm(state, name):
  params = {'scale': state[f'{name}.weight'], 'bias': state[f'{name}.bias']}
  stats = {'mean': state[f'{name}.running_mean'], 'var': state[f'{name}.running_var']}
  return params, stats


def _patch_embedding(state, name):
  return {'embedding': {'kernel': _conv(state[f'{name}.weight']), 'bias': state[f'{name}.bias']}}


def vit(state: dict) -> dict:
  params = {'stem': {'patch_embed': _patch_embedding(state, 'patch_embed.proj')}}
  if 'cls_token' in state:
    params['stem']['cls'] = state['cls_token']
  if 'pos_embed' in state:
    params['stem']['pos_embedding'] = state['pos_embed']
  for i in range(block_count(state, r'blocks\.(\d+)\.')):
    b = f'blocks.{i}'
    block = {'norm1': _norm(state, f'{b}.norm1'), 'norm2': _norm(state, f'{b}.norm2'),
             'token_mixing': {'attention': {'qkv': _linear(state, f'{b}.attn.qkv'),
                                            'out': _linear(state, f'{b}.attn.proj')}},
             'channel_mixing': {'Dense_0': _linear(state, f'{b}.mlp.fc1'), 'Dense_1': _linear(state, f'{b}.mlp.fc2')}}
    if f'{b}.ls1.gamma' in state:
      block['ls1'], block['ls2'] = {'scale': state[f'{b}.ls1.gamma']}, {'scale': state[f'{b}.ls2.gamma']}
    params[f'block_{i}'] = block
  norm = 'fc_norm' if 'fc_norm.weight' in state else 'norm'
  params['final_norm'] = _norm(state, norm)
  if 'head.weight' in state:
    params['head'] = _linear(state, 'head')
  return {'params': params}


def _layer_scale_block(state, b: str, attention: str, attention_layers: tuple, mlp: str) -> dict:
  """A CaiT block (blocks.i or blocks_token_only.i): norm1, attn, gamma_1, norm2, mlp, gamma_2."""
  return {'norm1': _norm(state, f'{b}.norm1'), 'norm2': _norm(state, f'{b}.norm2'),
          attention: {name: _linear(state, f'{b}.attn.{name}') for name in attention_layers},
          mlp: {'Dense_0': _linear(state, f'{b}.mlp.fc1'), 'Dense_1': _linear(state, f'{b}.mlp.fc2')},
          'ls1': {'scale': state[f'{b}.gamma_1']}, 'ls2': {'scale': state[f'{b}.gamma_2']}}


def cait(state: dict) -> dict:
  params = {'stem': {'patch_embed': _patch_embedding(state, 'patch_embed.proj'), 'pos_embedding': state['pos_embed']},
            'cls': state['cls_token']}
  for i in range(block_count(state, r'blocks\.(\d+)\.')):
    params[f'block_{i}'] = _layer_scale_block(state, f'blocks.{i}', 'token_mixing', ('qkv', 'proj_l', 'proj_w', 'proj'),
                                              'channel_mixing')
  for i in range(block_count(state, r'blocks_token_only\.(\d+)\.')):
    params[f'class_block_{i}'] = _layer_scale_block(state, f'blocks_token_only.{i}', 'attention', ('q', 'k', 'v', 'proj'),
                                                    'mlp')
  params['final_norm'] = _norm(state, 'norm')
  if 'head.weight' in state:
    params['head'] = _linear(state, 'head')
  return {'params': params}


def mixer(state: dict) -> dict:
  params = {'stem': {'patch_embed': _patch_embedding(state, 'stem.proj')}}
  for i in range(block_count(state, r'blocks\.(\d+)\.')):
    b = f'blocks.{i}'
    params[f'block_{i}'] = {
        'norm1': _norm(state, f'{b}.norm1'), 'norm2': _norm(state, f'{b}.norm2'),
        'token_mixing': {'mlp': {'Dense_0': _linear(state, f'{b}.mlp_tokens.fc1'),
                                 'Dense_1': _linear(state, f'{b}.mlp_tokens.fc2')}},
        'channel_mixing': {'Dense_0': _linear(state, f'{b}.mlp_channels.fc1'),
                           'Dense_1': _linear(state, f'{b}.mlp_channels.fc2')}}
  params['final_norm'] = _norm(state, 'norm')
  if 'head.weight' in state:
    params['head'] = _linear(state, 'head')
  return {'params': params}


def _affine(state, name):
  return {'alpha': state[f'{name}.alpha'].reshape(-1), 'beta': state[f'{name}.beta'].reshape(-1)}   # [1, 1, C]


def resmlp(state: dict) -> dict:
  params = {'stem': {'patch_embed': _patch_embedding(state, 'stem.proj')}}
  for i in range(block_count(state, r'blocks\.(\d+)\.')):
    b = f'blocks.{i}'
    params[f'block_{i}'] = {
        'norm1': _affine(state, f'{b}.norm1'), 'norm2': _affine(state, f'{b}.norm2'),
        'token_mixing': {'linear_tokens': _linear(state, f'{b}.linear_tokens')},
        'channel_mixing': {'Dense_0': _linear(state, f'{b}.mlp_channels.fc1'),
                           'Dense_1': _linear(state, f'{b}.mlp_channels.fc2')},
        'ls1': {'scale': state[f'{b}.ls1']}, 'ls2': {'scale': state[f'{b}.ls2']}}
  params['final_norm'] = _affine(state, 'norm')
  if 'head.weight' in state:
    params['head'] = _linear(state, 'head')
  return {'params': params}


def gmlp(state: dict) -> dict:
  params = {'stem': {'patch_embed': _patch_embedding(state, 'stem.proj')}}
  for i in range(block_count(state, r'blocks\.(\d+)\.')):
    b = f'blocks.{i}.mlp_channels'
    params[f'block_{i}'] = {
        'norm': _norm(state, f'blocks.{i}.norm'), 'fc1': _linear(state, f'{b}.fc1'), 'fc2': _linear(state, f'{b}.fc2'),
        'gate': {'norm': _norm(state, f'{b}.gate.norm'), 'proj': _linear(state, f'{b}.gate.proj')}}
  params['final_norm'] = _norm(state, 'norm')
  if 'head.weight' in state:
    params['head'] = _linear(state, 'head')
  return {'params': params}


def convnext_iso(state: dict) -> dict:
  """facebookresearch/ConvNeXt's ConvNeXtIsotropic files (timm has no isotropic ConvNeXt)."""
  params = {'stem': {'patch_embed': _patch_embedding(state, 'stem')}}
  for i in range(block_count(state, r'blocks\.(\d+)\.')):
    b = f'blocks.{i}'
    params[f'block_{i}'] = {
        'dwconv': {'kernel': _conv(state[f'{b}.dwconv.weight']), 'bias': state[f'{b}.dwconv.bias']},
        'norm': _norm(state, f'{b}.norm'), 'pwconv1': _linear(state, f'{b}.pwconv1'),
        'pwconv2': _linear(state, f'{b}.pwconv2')}
    if f'{b}.gamma' in state:
      params[f'block_{i}']['ls'] = {'scale': state[f'{b}.gamma']}
  params['final_norm'] = _norm(state, 'norm')
  if 'head.weight' in state:
    params['head'] = _linear(state, 'head')
  return {'params': params}


def convmixer(state: dict) -> dict:
  stem_norm, stem_stats = _batchnorm(state, 'stem.2')
  params = {'stem': {'patch_embed': _patch_embedding(state, 'stem.0'), 'norm': stem_norm}}
  stats = {'stem': {'norm': stem_stats}}
  for i in range(block_count(state, r'blocks\.(\d+)\.')):
    b = f'blocks.{i}'
    token_norm, token_stats = _batchnorm(state, f'{b}.0.fn.2')
    channel_norm, channel_stats = _batchnorm(state, f'{b}.3')
    params[f'block_{i}'] = {
        'token_mixing': {'depthwise': {'kernel': _conv(state[f'{b}.0.fn.0.weight']),
                                       'bias': state[f'{b}.0.fn.0.bias']}, 'norm': token_norm},
        'channel_mixing': {'pointwise': {'kernel': state[f'{b}.1.weight'][:, :, 0, 0].T,
                                         'bias': state[f'{b}.1.bias']}, 'norm': channel_norm}}
    stats[f'block_{i}'] = {'token_mixing': {'norm': token_stats}, 'channel_mixing': {'norm': channel_stats}}
  if 'head.weight' in state:
    params['head'] = _linear(state, 'head')
  return {'params': params, 'batch_stats': stats}


def _stage_blocks(state, stage: str, first: int) -> list[int]:
  """Blocks in each of a ResNet's 4 stages, whose keys start `stage.format(s)`.<block>. for s = first..first+3."""
  return [1 + max((int(m.group(1)) for k in state if (m := re.match(re.escape(stage.format(s)) + r'\.(\d+)\.', k))),
                  default=-1) for s in range(first, first + 4)]


def _resnet_blocks(state) -> list[int]:
  return _stage_blocks(state, 'layer{}', 1)


def resnet(state: dict) -> dict:
  """torchvision-layout ResNet (timm `resnet18` ... `resnet152`): conv{k}/bn{k}, downsample.{0,1}, fc."""
  params, stats = {}, {}

  def conv_bn(prefix, conv, bn, target, suffix):
    target_params = params if target is None else params.setdefault(target, {})
    target_stats = stats if target is None else stats.setdefault(target, {})
    target_params[f'conv{suffix}'] = {'kernel': _conv(state[f'{prefix}{conv}.weight'])}
    target_params[f'bn{suffix}'], target_stats[f'bn{suffix}'] = _batchnorm(state, f'{prefix}{bn}')

  conv_bn('', 'conv1', 'bn1', None, '1')
  for stage, count in enumerate(_resnet_blocks(state), start=1):
    for i in range(count):
      prefix, name = f'layer{stage}.{i}.', f'layer{stage}_{i}'
      for k in (1, 2, 3):
        if f'{prefix}conv{k}.weight' in state:
          conv_bn(prefix, f'conv{k}', f'bn{k}', name, str(k))
      if f'{prefix}downsample.0.weight' in state:
        conv_bn(prefix, 'downsample.0', 'downsample.1', name, '_downsample')
  if 'fc.weight' in state:
    params['head'] = _linear(state, 'fc')
  return {'params': params, 'batch_stats': stats}


def _resnetv2_blocks(state) -> list[int]:
  return _stage_blocks(state, 'stages.{}.blocks', 0)


def resnetv2(state: dict) -> dict:
  """timm `resnetv2_*_bit`: stem.conv, stages.S.blocks.B.{norm1-3, conv1-3, downsample.conv}, norm, head.fc."""
  params = {'stem': {'kernel': _conv(state['stem.conv.weight'])}}
  for stage, count in enumerate(_resnetv2_blocks(state)):
    for i in range(count):
      p = f'stages.{stage}.blocks.{i}'
      block = {f'norm{k}': _norm(state, f'{p}.norm{k}') for k in (1, 2, 3)}
      block.update({f'conv{k}': {'kernel': _conv(state[f'{p}.conv{k}.weight'])} for k in (1, 2, 3)})
      if f'{p}.downsample.conv.weight' in state:
        block['downsample'] = {'kernel': _conv(state[f'{p}.downsample.conv.weight'])}
      params[f'stage{stage + 1}_{i}'] = block
  params['final_norm'] = _norm(state, 'norm')
  if 'head.fc.weight' in state:   # a 1x1 convolution on the pooled map: a dense layer
    params['head'] = {'kernel': state['head.fc.weight'][:, :, 0, 0].T, 'bias': state['head.fc.bias']}
  return {'params': params}


CONVERTERS = {'vit': vit, 'cait': cait, 'mixer': mixer, 'resmlp': resmlp, 'gmlp': gmlp, 'convnext_iso': convnext_iso,
              'convmixer': convmixer, 'resnet': resnet, 'resnetv2': resnetv2}


def from_facebook_resmlp(state: dict) -> dict:
  """facebookresearch/deit's ResMLP names -> timm's, as timm's mlp_mixer.py checkpoint_filter_fn (l.559-573)."""
  if not ('blocks.0.attn.weight' in state and 'blocks.0.gamma_1' in state):   # its token mixer: one Linear
    return state
  renamed = {}
  for key, value in state.items():
    for old, new in (('patch_embed.', 'stem.'), ('attn.', 'linear_tokens.'), ('mlp.', 'mlp_channels.'),
                     ('gamma_', 'ls')):
      key = key.replace(old, new)
    renamed[key] = value
  return renamed


def convert(state: dict) -> dict:
  """A timm state dict -> isojax variables ({'params', ['batch_stats']}); every tensor must find a place."""
  state = from_facebook_resmlp(state)
  kind = family(state)
  tracked = KeyTracker(state)
  variables = CONVERTERS[kind](tracked)
  unread = tracked.unread(ignore=lambda k: k.endswith('num_batches_tracked'))   # BatchNorm's step counter
  if unread:
    raise ValueError(f'{len(unread)} tensor(s) of this timm {kind} file have no place in isojax: {unread[:8]}'
                     f'{" ..." if len(unread) > 8 else ""}. It is a timm variant isojax does not implement '
                     f'(register tokens, attention pooling, pre-norm, q/k norm, ...).')
  return variables


def heads_for_width(width: int) -> int:
  """timm's attention heads for a `vit_*` of this width (width/64 up to 1024, then 16)."""
  return 16 if width > 1024 else max(width // 64, 1)


def _classes(state: dict):
  return int(state['head.weight'].shape[0]) if 'head.weight' in state else None


def describe_vit(state: dict) -> Weights:
  embed = state['patch_embed.proj.weight']
  width, patch = int(embed.shape[0]), square_patch(*embed.shape[2:])
  class_token, fc_norm = 'cls_token' in state, 'fc_norm.weight' in state
  if class_token and fc_norm:
    raise ValueError('This timm ViT has a class token but pools by averaging the patch tokens (fc_norm, as MAE '
                     'models do); isojax ViTs pool the class token or average every token, not this mix.')
  image_size, posemb_class_token = None, True
  if 'pos_embed' in state:
    tokens = state['pos_embed'].shape[1]
    with_class = class_token and math.isqrt(tokens) ** 2 != tokens
    image_size = patch * grid_side(tokens - with_class, 'The position embedding')
    posemb_class_token = with_class if class_token else True
  layer_scale = 'blocks.0.ls1.gamma' in state
  heads = heads_for_width(width)
  fields = dict(hidden_size=width, depth=block_count(state, r'blocks\.(\d+)\.'), num_heads=heads,
                mlp_dim=int(state['blocks.0.mlp.fc1.weight'].shape[0]), patch_size=patch,
                classifier='token' if class_token else 'gap', posemb='learn',
                posemb_class_token=posemb_class_token, norm_after_pool=fc_norm,
                qkv_bias='blocks.0.attn.qkv.bias' in state,
                layer_scale_init=1e-6 if layer_scale else None,   # the loaded gammas replace it; 1e-6 is DeiT III's
                approximate_gelu=False, layernorm_epsilon=1e-6)
  assumed = {'num_heads': f'{heads}: a timm file does not store heads; timm vit_* use width/64 up to 1024 '
                          f'wide, 16 above. Pass num_heads= if this model was built otherwise.'}
  return Weights(convert(state), 'vit', fields, _classes(state), image_size, assumed)


def describe_cait(state: dict) -> Weights:
  embed = state['patch_embed.proj.weight']
  width, patch = int(embed.shape[0]), square_patch(*embed.shape[2:])
  fields = dict(hidden_size=width, depth=block_count(state, r'blocks\.(\d+)\.'),
                num_heads=int(state['blocks.0.attn.proj_l.weight'].shape[0]),   # talking heads show the heads
                patch_size=patch, mlp_ratio=int(state['blocks.0.mlp.fc1.weight'].shape[0]) // width,
                class_depth=block_count(state, r'blocks_token_only\.(\d+)\.'),
                layer_scale_init=1e-5)   # the loaded gammas replace it
  image_size = patch * grid_side(int(state['pos_embed'].shape[1]), 'The position embedding')
  return Weights(convert(state), 'cait', fields, _classes(state), image_size, {})


def describe_mixer(state: dict) -> Weights:
  stem = state['stem.proj.weight']
  patch = square_patch(*stem.shape[2:])
  tokens = int(state['blocks.0.mlp_tokens.fc1.weight'].shape[1])
  fields = dict(hidden_size=int(stem.shape[0]), depth=block_count(state, r'blocks\.(\d+)\.'),
                tokens_mlp_dim=int(state['blocks.0.mlp_tokens.fc1.weight'].shape[0]),
                channels_mlp_dim=int(state['blocks.0.mlp_channels.fc1.weight'].shape[0]), patch_size=patch,
                approximate_gelu=False, layernorm_epsilon=1e-6)
  return Weights(convert(state), 'mixer', fields, _classes(state), patch * grid_side(tokens, 'The token-mixing MLP'), {})


def _describe_mlp_ratio_family(state: dict, family: str, token_layer: str, what: str) -> Weights:
  """ResMLP and gMLP (timm's MlpMixer with another block): width, depth, patch and MLP ratio from the
  shapes; the image size from `token_layer`, a linear layer across the tokens."""
  stem = state['stem.proj.weight']
  width, patch = int(stem.shape[0]), square_patch(*stem.shape[2:])
  tokens = int(state[f'blocks.0.{token_layer}.weight'].shape[0])
  fields = dict(hidden_size=width, depth=block_count(state, r'blocks\.(\d+)\.'), patch_size=patch,
                mlp_ratio=int(state['blocks.0.mlp_channels.fc1.weight'].shape[0]) // width)
  return Weights(convert(state), family, fields, _classes(state), patch * grid_side(tokens, what), {})


def describe_resmlp(state: dict) -> Weights:
  return _describe_mlp_ratio_family(state, 'resmlp', 'linear_tokens', 'The token-mixing layer')


def describe_gmlp(state: dict) -> Weights:
  return _describe_mlp_ratio_family(state, 'gmlp', 'mlp_channels.gate.proj', 'The spatial gating unit')


def describe_convnext_iso(state: dict) -> Weights:
  stem = state['stem.weight']
  fields = dict(hidden_size=int(stem.shape[0]), depth=block_count(state, r'blocks\.(\d+)\.'),
                patch_size=square_patch(*stem.shape[2:]), kernel_size=int(state['blocks.0.dwconv.weight'].shape[-1]),
                layer_scale_init=1e-6 if 'blocks.0.gamma' in state else None)   # the loaded gammas replace 1e-6
  return Weights(convert(state), 'convnext_iso', fields, _classes(state), None, {})


# timm's published ConvMixers whose activation is not its default GELU (convmixer.py l.142-144).
RELU_CONVMIXERS = {(768, 32): 'convmixer_768_32'}


def describe_convmixer(state: dict) -> Weights:
  stem = state['stem.0.weight']
  width, depth = int(stem.shape[0]), block_count(state, r'blocks\.(\d+)\.')
  relu = (width, depth) in RELU_CONVMIXERS
  fields = dict(hidden_size=width, depth=depth, kernel_size=int(state['blocks.0.0.fn.0.weight'].shape[-1]),
                patch_size=square_patch(*stem.shape[2:]), activation='relu' if relu else 'gelu', approximate_gelu=False)
  assumed = {'activation': (f'relu: a {width}-wide, {depth}-deep timm ConvMixer is {RELU_CONVMIXERS[(width, depth)]}, '
                            f'built with nn.ReLU' if relu else 'exact GELU, timm ConvMixer\'s default (nn.GELU)')
                           + '; the file does not store it. Pass activation= if this model was built otherwise.'}
  return Weights(convert(state), 'convmixer', fields, _classes(state), None, assumed)


def describe_resnet(state: dict) -> Weights:
  from isojax.models.resnet import STAGES
  blocks = tuple(_resnet_blocks(state))
  kind = 'bottleneck' if 'layer1.0.conv3.weight' in state else 'basic'
  depth = next((d for d, shape in STAGES.items() if shape == (kind, blocks)), None)
  if depth is None:
    raise ValueError(f'A timm ResNet with {kind} blocks {blocks} is none of ResNet-{sorted(STAGES)}.')
  classes = int(state['fc.weight'].shape[0]) if 'fc.weight' in state else None
  return Weights(convert(state), 'resnet', dict(depth=depth), classes, None, {})


def describe_resnetv2(state: dict) -> Weights:
  from isojax.models.resnetv2 import STAGES
  blocks = tuple(_resnetv2_blocks(state))
  depth = next((d for d, shape in STAGES.items() if shape == blocks), None)
  if depth is None:
    raise ValueError(f'A timm ResNet-V2 with blocks {blocks} is none of BiT-R{sorted(STAGES)}.')
  classes = int(state['head.fc.weight'].shape[0]) if 'head.fc.weight' in state else None
  fields = dict(depth=depth, width_factor=int(state['stem.conv.weight'].shape[0]) // 64)
  return Weights(convert(state), 'resnetv2', fields, classes, None, {})


DESCRIBERS = {'vit': describe_vit, 'cait': describe_cait, 'mixer': describe_mixer, 'resmlp': describe_resmlp, 'gmlp': describe_gmlp,
              'convnext_iso': describe_convnext_iso, 'convmixer': describe_convmixer,
              'resnet': describe_resnet, 'resnetv2': describe_resnetv2}


def describe(state: dict) -> Weights:
  """A timm state dict -> `Weights` (variables and the architecture its tensors show)."""
  state = from_facebook_resmlp(state)
  return DESCRIBERS[family(state)](state)
