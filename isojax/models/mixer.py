"""MLP-Mixer (Tolstikhin et al. 2021): an MLP across tokens mixes them.

Structure, names and initialisers follow google-research/vision_transformer
vit_jax/models_mixer.py: its MlpBlock is two flax `nn.Dense` with their defaults
(lecun-normal kernels, zero biases; l.27-29) and tanh-approximate GELU (`nn.gelu`, l.28),
LayerNorm(eps=1e-6), lecun-normal `stem` conv (l.61), global average pooling after
`pre_head_layer_norm` (l.66-67), zero head (l.69). Sizes: the paper's Table 1.

Names: `Mixer-{S,B,L,H}/{patch}` or `Mixer-{width}x{depth}/{patch}` with `-t{tokens_mlp_dim}`
and `-c{channels_mlp_dim}` when they differ from width/2 and 4 x width.

Weight files: vision_transformer's `.npz` (`stem`, `MixerBlock_i/{LayerNorm_0,token_mixing,LayerNorm_1,
channel_mixing}`, `pre_head_layer_norm`, `head`) and timm `mixer_*` state dicts (`stem.proj`,
`blocks.i.{norm1,mlp_tokens,norm2,mlp_channels}`, `norm`, `head`; exact GELU, LayerNorm eps 1e-6).
"""

from __future__ import annotations

import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from isojax.kernels import REFERENCE
from isojax.models import convert
from isojax.models.convert import NPZ, TIMM, Reader, Tensors, Weights
from isojax.models.family import Family
from isojax.models.isotropic import Isotropic, MixingBlock, PoolingHead
from isojax.models.layers import LECUN, ZEROS, MlpBlock, PatchEmbed
from isojax.models.naming import SizedNames, Suffix

SIZES = {  # width, depth, token mlp, channel mlp
  'S': dict(hidden_size=512, depth=8, tokens_mlp_dim=256, channels_mlp_dim=2048),
  'B': dict(hidden_size=768, depth=12, tokens_mlp_dim=384, channels_mlp_dim=3072),
  'L': dict(hidden_size=1024, depth=24, tokens_mlp_dim=512, channels_mlp_dim=4096),
  'H': dict(hidden_size=1280, depth=32, tokens_mlp_dim=640, channels_mlp_dim=5120),
}
_PATCHES = {'S': (32, 16), 'B': (32, 16), 'L': (32, 16), 'H': (14,)}
NAMES = SizedNames(
  'Mixer',
  SIZES,
  (
    Suffix('t', 'tokens_mlp_dim', lambda f: f['hidden_size'] // 2),
    Suffix('c', 'channels_mlp_dim', lambda f: 4 * f['hidden_size']),
  ),
)
VARIANTS = {f'Mixer-{size}/{patch}': dict(SIZES[size], patch_size=patch) for size in SIZES for patch in _PATCHES[size]}
SOURCE = 'google-research/vision_transformer vit_jax/models_mixer.py; sizes: MLP-Mixer paper, Table 1'


class MixerStem(nn.Module):
  """Patch embedding flattened to [batch, tokens, width]."""

  hidden_size: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    x = PatchEmbed(self.hidden_size, self.patch_size, dtype=self.dtype, name='patch_embed')(images)
    return x.reshape(x.shape[0], -1, x.shape[-1])


class TokenMlp(nn.Module):
  """Token mixer: the same MLP applied to every channel, across the token axis."""

  mlp_dim: int
  approximate_gelu: bool = True
  dtype: Any = jnp.float32
  kernels: str = REFERENCE

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = MlpBlock(
      self.mlp_dim,
      approximate_gelu=self.approximate_gelu,
      kernel_init=LECUN,
      bias_init=ZEROS,
      dtype=self.dtype,
      kernels=self.kernels,
      name='mlp',
    )(jnp.swapaxes(x, 1, 2), train=train)
    return jnp.swapaxes(y, 1, 2)


def mixer(
  num_classes: int,
  *,
  hidden_size: int,
  depth: int,
  tokens_mlp_dim: int,
  channels_mlp_dim: int,
  patch_size: int,
  drop_path_rate: float = 0.0,
  drop_path_scale: bool = False,
  approximate_gelu: bool = True,
  layernorm_epsilon: float = 1e-6,
  remat: bool = False,
  remat_policy: str = 'nothing_saveable',
  scan: bool = False,
  head_bias_init: float = 0.0,
  dtype: Any = jnp.float32,
  kernels: str = REFERENCE,
) -> Isotropic:
  """An MLP-Mixer with global average pooling. Stochastic depth as big_vision's Mixer (vision_transformer's
  has none): a linear ramp, kept branches not rescaled (`drop_path_scale=True`: timm's MlpMixer)."""
  norm = functools.partial(nn.LayerNorm, epsilon=layernorm_epsilon, dtype=dtype)
  block = functools.partial(
    MixingBlock,
    norm=norm,
    drop_path_scale=drop_path_scale,
    token_mixer=functools.partial(TokenMlp, tokens_mlp_dim, approximate_gelu, dtype, kernels),
    channel_mixer=functools.partial(
      MlpBlock,
      channels_mlp_dim,
      approximate_gelu=approximate_gelu,
      kernel_init=LECUN,
      bias_init=ZEROS,
      dtype=dtype,
      kernels=kernels,
    ),
  )
  return on_tokens(
    num_classes,
    block,
    norm,
    hidden_size,
    patch_size,
    depth,
    drop_path_rate,
    'linear',
    remat,
    remat_policy,
    scan,
    head_bias_init,
    dtype,
    kernels,
  )


def on_tokens(
  num_classes: int,
  block: Any,
  norm: Any,
  hidden_size: int,
  patch_size: int,
  depth: int,
  drop_path_rate: float,
  drop_path_schedule: str,
  remat: bool,
  remat_policy: str,
  scan: bool,
  head_bias_init: float,
  dtype: Any,
  kernels: str,
) -> Isotropic:
  """timm's MlpMixer frame, which its ResMLP and gMLP share: patches flattened to tokens, `depth` blocks, `norm`,
  average pooling and a linear head (zero, or `head_bias_init`)."""
  head = PoolingHead(
    num_classes, norm=norm, pool='gap', bias_init=nn.initializers.constant(head_bias_init), dtype=dtype, kernels=kernels
  )
  return Isotropic(
    MixerStem(hidden_size, patch_size, dtype=dtype),
    block,
    head,
    depth,
    drop_path_rate=drop_path_rate,
    drop_path_schedule=drop_path_schedule,
    remat=remat,
    remat_policy=remat_policy,
    scan=scan,
    dtype=dtype,
  )


# --- weight files ----------------------------------------------------------------------------------------------

_NPZ_MODULES = {
  'LayerNorm_0': 'norm1',
  'LayerNorm_1': 'norm2',
  'token_mixing': 'token_mixing/mlp',
  'channel_mixing': 'channel_mixing',
}


def _npz_params(flat: Tensors) -> dict[str, np.ndarray]:
  """Official MLP-Mixer arrays -> isojax paths."""
  out = {}
  for key, value in convert.without_big_vision_prefix(flat).items():
    value = np.asarray(value)
    match = re.match(r'MixerBlock_(\d+)/(LayerNorm_0|LayerNorm_1|token_mixing|channel_mixing)/(.*)', key)
    if match:
      i, module, rest = match.groups()
      out[f'block_{i}/{_NPZ_MODULES[module]}/{rest}'] = value
    elif key.startswith('stem/'):
      out['stem/patch_embed/embedding/' + key[len('stem/') :]] = value
    elif key.startswith('pre_head_layer_norm/'):
      out['final_norm/' + key[len('pre_head_layer_norm/') :]] = value
    elif key.startswith('head/'):
      out[key] = value
    else:
      raise ValueError(f'Unexpected array {key!r} in a Mixer checkpoint; it is a variant isojax does not implement.')
  return out


def from_npz(flat: Tensors) -> Weights:
  """The MLP-Mixer a vision_transformer file holds, and its variables."""
  params = _npz_params(flat)
  stem = params['stem/patch_embed/embedding/kernel']
  tokens = params['block_0/token_mixing/mlp/Dense_0/kernel']
  patch = convert.square_patch(*stem.shape[:2])
  fields = dict(
    hidden_size=int(stem.shape[-1]),
    depth=convert.block_count(params, r'block_(\d+)/'),
    tokens_mlp_dim=int(tokens.shape[-1]),
    channels_mlp_dim=int(params['block_0/channel_mixing/Dense_0/kernel'].shape[-1]),
    patch_size=patch,
    approximate_gelu=True,
    layernorm_epsilon=1e-6,
  )
  classes = int(params['head/kernel'].shape[-1]) if 'head/kernel' in params else None
  return Weights(
    {'params': traverse_util.unflatten_dict(params, sep='/')},
    'mixer',
    fields,
    classes,
    patch * convert.grid_side(int(tokens.shape[0]), 'The token-mixing MLP'),
    {},
    int(stem.shape[2]),
  )


def _is_npz_mixer(flat: Tensors) -> bool:
  return any(k.startswith('MixerBlock_') for k in convert.without_big_vision_prefix(flat))


def timm_params(state: Tensors) -> dict:
  """A timm MlpMixer's state dict -> isojax's Mixer parameters."""
  params: dict[str, Any] = {'stem': {'patch_embed': convert.patch_embedding(state, 'stem.proj')}}
  for i in range(convert.block_count(state, r'blocks\.(\d+)\.')):
    b = f'blocks.{i}'
    params[f'block_{i}'] = {
      'norm1': convert.norm(state, f'{b}.norm1'),
      'norm2': convert.norm(state, f'{b}.norm2'),
      'token_mixing': {
        'mlp': {
          'Dense_0': convert.linear(state, f'{b}.mlp_tokens.fc1'),
          'Dense_1': convert.linear(state, f'{b}.mlp_tokens.fc2'),
        }
      },
      'channel_mixing': {
        'Dense_0': convert.linear(state, f'{b}.mlp_channels.fc1'),
        'Dense_1': convert.linear(state, f'{b}.mlp_channels.fc2'),
      },
    }
  return convert.timm_head(state, params)


def from_timm(state: Tensors) -> Weights:
  """A timm `mixer_*` state dict -> `Weights`."""
  variables = convert.read_all(state, lambda s: {'params': timm_params(s)}, 'timm mixer')
  stem = state['stem.proj.weight']
  patch = convert.square_patch(*stem.shape[2:])
  tokens = int(state['blocks.0.mlp_tokens.fc1.weight'].shape[1])
  fields = dict(
    hidden_size=int(stem.shape[0]),
    depth=convert.block_count(state, r'blocks\.(\d+)\.'),
    tokens_mlp_dim=int(state['blocks.0.mlp_tokens.fc1.weight'].shape[0]),
    channels_mlp_dim=int(state['blocks.0.mlp_channels.fc1.weight'].shape[0]),
    patch_size=patch,
    approximate_gelu=False,
    layernorm_epsilon=1e-6,
  )
  return Weights(
    variables,
    'mixer',
    fields,
    convert.classes(state),
    patch * convert.grid_side(tokens, 'The token-mixing MLP'),
    {},
    int(stem.shape[1]),
  )


def timm_block_variant(state: Tensors, variables: dict, family: str, token_layer: str, what: str) -> Weights:
  """`Weights` of timm's MlpMixer with another block (ResMLP, gMLP): width, depth, patch and MLP ratio from the
  shapes; the image size from `token_layer`, a linear layer across the tokens (`what` names it in errors)."""
  stem = state['stem.proj.weight']
  width, patch = int(stem.shape[0]), convert.square_patch(*stem.shape[2:])
  tokens = int(state[f'blocks.0.{token_layer}.weight'].shape[0])
  fields = dict(
    hidden_size=width,
    depth=convert.block_count(state, r'blocks\.(\d+)\.'),
    patch_size=patch,
    mlp_ratio=int(state['blocks.0.mlp_channels.fc1.weight'].shape[0]) // width,
  )
  return Weights(
    variables, family, fields, convert.classes(state), patch * convert.grid_side(tokens, what), {}, int(stem.shape[1])
  )


def _is_timm_mixer(state: Tensors) -> bool:
  return convert.has_key(state, '.mlp_tokens.fc1.weight')


READERS = {NPZ: Reader(_is_npz_mixer, from_npz), TIMM: Reader(_is_timm_mixer, from_timm)}
FAMILY = Family.named('mixer', mixer, NAMES, VARIANTS, SOURCE, readers=READERS)
