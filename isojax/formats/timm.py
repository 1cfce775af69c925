"""timm state dicts for `vit_*`, `mixer_*` and `convmixer_*` models, in isojax's layout.

timm uses exact (erf) GELU: create the isojax model with `approximate_gelu=False`. Its
GAP ViTs normalise after pooling (`fc_norm`): create them with `norm_after_pool=True`.
"""
from __future__ import annotations

import re

import numpy as np


def family(state: dict) -> str:
  """'vit', 'mixer' or 'convmixer', from the state dict's keys."""
  keys = set(state)
  if any('.attn.qkv.weight' in k for k in keys):
    return 'vit'
  if any('.mlp_tokens.fc1.weight' in k for k in keys):
    return 'mixer'
  if 'stem.0.weight' in keys and any(k.endswith('.0.fn.0.weight') for k in keys):
    return 'convmixer'
  raise ValueError(f'Not a timm vit_*/mixer_*/convmixer_* state dict (first keys: {sorted(keys)[:5]}).')


def _linear(state, name):
  return {'kernel': state[f'{name}.weight'].T, 'bias': state[f'{name}.bias']}


def _norm(state, name):
  return {'scale': state[f'{name}.weight'], 'bias': state[f'{name}.bias']}


def _conv(weight):
  return np.transpose(weight, (2, 3, 1, 0))   # [out, in, kh, kw] -> [kh, kw, in, out]


def _batchnorm(state, name):
  params = {'scale': state[f'{name}.weight'], 'bias': state[f'{name}.bias']}
  stats = {'mean': state[f'{name}.running_mean'], 'var': state[f'{name}.running_var']}
  return params, stats


def _depth(state, pattern):
  return 1 + max(int(m.group(1)) for k in state if (m := re.match(pattern, k)))


def vit(state: dict) -> dict:
  params = {'stem': {'patch_embed': {'embedding': {'kernel': _conv(state['patch_embed.proj.weight']),
                                                   'bias': state['patch_embed.proj.bias']}}}}
  if 'cls_token' in state:
    params['stem']['cls'] = state['cls_token']
  if 'pos_embed' in state:
    params['stem']['pos_embedding'] = state['pos_embed']
  for i in range(_depth(state, r'blocks\.(\d+)\.')):
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


def mixer(state: dict) -> dict:
  params = {'stem': {'patch_embed': {'embedding': {'kernel': _conv(state['stem.proj.weight']),
                                                   'bias': state['stem.proj.bias']}}}}
  for i in range(_depth(state, r'blocks\.(\d+)\.')):
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


def convmixer(state: dict) -> dict:
  stem_norm, stem_stats = _batchnorm(state, 'stem.2')
  params = {'stem': {'patch_embed': {'embedding': {'kernel': _conv(state['stem.0.weight']),
                                                   'bias': state['stem.0.bias']}}, 'norm': stem_norm}}
  stats = {'stem': {'norm': stem_stats}}
  for i in range(_depth(state, r'blocks\.(\d+)\.')):
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


CONVERTERS = {'vit': vit, 'mixer': mixer, 'convmixer': convmixer}


def convert(state: dict) -> dict:
  """A timm state dict -> isojax variables ({'params', ['batch_stats']})."""
  return CONVERTERS[family(state)](state)
