"""ConvMixer ("Patches Are All You Need?", Trockman & Kolter 2022): a depthwise conv mixes tokens.

Follows locuslab/convmixer convmixer.py (l.11-28) and timm/models/convmixer.py: each
convolution is followed by the activation then BatchNorm2d (eps 1e-5, momentum 0.1); the
residual goes around the depthwise convolution only; global average pooling; a linear
head. Activation: exact GELU (`nn.GELU`), except ConvMixer-768/32, whose published
weights use ReLU (locuslab/convmixer README.md l.32-35; timm `convmixer_768_32`,
`act_layer=nn.ReLU`, convmixer.py l.143). Initialisers: PyTorch's defaults, which both
sources leave in place (convolutions and the head: U(+-1/sqrt(fan_in)) for weights and
biases; BatchNorm: scale 1, bias 0). BatchNorm statistics are averaged over `axis_name`
under pmap.

Names: `ConvMixer-{width}/{depth}`, optionally `-k{kernel}-p{patch}` (timm's
`convmixer_1024_20_ks9_p14` also parses). Without them, kernel and patch are fields
defaulting to the published model of that width/depth, else to timm's 9 and 7.

Weight files: timm `convmixer_*` state dicts (`stem.{0,2}`, `blocks.i.{0.fn.0, 0.fn.2, 1, 3}`, `head`; BatchNorm
running statistics become `batch_stats`). The activation is not stored: timm's default is exact GELU
(`nn.GELU`) and its one published ReLU model, `convmixer_768_32`, is recognised by its shape.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from isojax.kernels import REFERENCE
from isojax.models import convert
from isojax.models.convert import TIMM, Reader, Tensors, Weights
from isojax.models.family import Family
from isojax.models.isotropic import Isotropic, MixingBlock, PoolingHead
from isojax.models.layers import (
  Dense,
  DepthwiseConv,
  GroupBatchNorm,
  activation,
  torch_default_init,
  torch_patch_embedding,
)

# Published models: kernel, patch (locuslab/convmixer README.md l.31-33; timm convmixer.py
# l.136-150) and activation. 256/8 is the CIFAR-10 model of locuslab/convmixer-cifar10.
VARIANTS = {
  'ConvMixer-1536/20': dict(hidden_size=1536, depth=20, kernel_size=9, patch_size=7, activation='gelu'),
  'ConvMixer-768/32': dict(hidden_size=768, depth=32, kernel_size=7, patch_size=7, activation='relu'),
  'ConvMixer-1024/20': dict(hidden_size=1024, depth=20, kernel_size=9, patch_size=14, activation='gelu'),
  'ConvMixer-256/8': dict(hidden_size=256, depth=8, kernel_size=5, patch_size=2, activation='gelu'),
}
IMAGE_SIZES = {'ConvMixer-256/8': 32}  # the CIFAR model
SOURCE = 'locuslab/convmixer convmixer.py, README.md; timm/models/convmixer.py'
_NAME = re.compile(
  r'^convmixer[-_](?P<width>\d+)[/_-](?P<depth>\d+)'
  r'(?:[-_]ks?(?P<kernel>\d+))?(?:[-_]p(?P<patch>\d+))?(?:[-_](?P<act>relu|gelu))?$',
  re.IGNORECASE,
)


def parse_name(name: str) -> Optional[dict]:
  """The architecture a ConvMixer name fixes, or None when `name` is not a ConvMixer name."""
  match = _NAME.match(name.strip())
  if not match:
    return None
  arch: dict[str, Any] = dict(hidden_size=int(match['width']), depth=int(match['depth']))
  if match['kernel']:
    arch['kernel_size'] = int(match['kernel'])
  if match['patch']:
    arch['patch_size'] = int(match['patch'])
  if match['act']:
    arch['activation'] = match['act'].lower()
  return arch


def published_name(arch: dict) -> str:
  """`ConvMixer-w/d`: the published model whose kernel, patch and activation a name inherits."""
  return f'ConvMixer-{arch["hidden_size"]}/{arch["depth"]}'


def format_name(arch) -> str:
  """`ConvMixer-w/d`, with kernel, patch and activation when they are not the published ones."""
  base = f'ConvMixer-{arch["hidden_size"]}/{arch["depth"]}'
  published = VARIANTS.get(base, dict(kernel_size=9, patch_size=7, activation='gelu'))
  if all(arch.get(k, v) == v for k, v in published.items()):
    return base
  return f'{base}-k{arch.get("kernel_size", 9)}-p{arch.get("patch_size", 7)}' + (
    '-relu' if arch.get('activation') == 'relu' else ''
  )


def _act_norm(x, train, axis_name, act, approximate_gelu, dtype, name, batch_norm_group=0):
  x = activation(act, approximate_gelu)(x)
  # PyTorch BatchNorm2d defaults: momentum 0.1 (flax 0.9), epsilon 1e-5.
  if batch_norm_group:
    norm = GroupBatchNorm(batch_norm_group, momentum=0.9, epsilon=1e-5, axis_name=axis_name, dtype=dtype, name=name)
    return norm(x, use_running_average=not train)
  return nn.BatchNorm(
    use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name=axis_name, dtype=dtype, name=name
  )(x)


class ConvMixerStem(nn.Module):
  """Patch embedding -> GELU -> BatchNorm, kept as a [batch, h, w, width] grid."""

  hidden_size: int
  patch_size: int
  axis_name: Optional[str] = None
  batch_norm_group: int = 0  # 0: statistics over the whole (synchronised) batch
  activation: str = 'gelu'
  approximate_gelu: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    x = torch_patch_embedding(images, self.hidden_size, self.patch_size, self.dtype)
    return _act_norm(
      x, train, self.axis_name, self.activation, self.approximate_gelu, self.dtype, 'norm', self.batch_norm_group
    )


class DepthwiseConvMixer(nn.Module):
  """Token mixer: depthwise k x k convolution -> GELU -> BatchNorm."""

  kernel_size: int
  axis_name: Optional[str] = None
  batch_norm_group: int = 0  # 0: statistics over the whole (synchronised) batch
  activation: str = 'gelu'
  approximate_gelu: bool = False
  dtype: Any = jnp.float32
  kernels: str = REFERENCE

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kernel_init, bias_init = torch_default_init(self.kernel_size**2)  # groups=dim: fan_in = 1 * k * k
    x = DepthwiseConv(
      self.kernel_size,
      kernel_init=kernel_init,
      bias_init=bias_init,
      dtype=self.dtype,
      kernels=self.kernels,
      name='depthwise',
    )(x)
    return _act_norm(
      x, train, self.axis_name, self.activation, self.approximate_gelu, self.dtype, 'norm', self.batch_norm_group
    )


class PointwiseMixer(nn.Module):
  """Channel mixer: 1x1 convolution (a matrix product over channels) -> GELU -> BatchNorm."""

  axis_name: Optional[str] = None
  batch_norm_group: int = 0  # 0: statistics over the whole (synchronised) batch
  activation: str = 'gelu'
  approximate_gelu: bool = False
  dtype: Any = jnp.float32
  kernels: str = REFERENCE

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    kernel_init, bias_init = torch_default_init(x.shape[-1])
    x = Dense(
      x.shape[-1],
      kernel_init=kernel_init,
      bias_init=bias_init,
      dtype=self.dtype,
      kernels=self.kernels,
      name='pointwise',
    )(x)
    return _act_norm(
      x, train, self.axis_name, self.activation, self.approximate_gelu, self.dtype, 'norm', self.batch_norm_group
    )


def convmixer(
  num_classes: int,
  *,
  hidden_size: int,
  depth: int,
  kernel_size: int = 9,
  patch_size: int = 7,
  activation: str = 'gelu',
  axis_name: Optional[str] = None,
  batch_norm_group: int = 0,
  drop_path_rate: float = 0.0,
  approximate_gelu: bool = False,
  remat: bool = False,
  remat_policy: str = 'nothing_saveable',
  scan: bool = False,
  dtype: Any = jnp.float32,
  kernels: str = REFERENCE,
) -> Isotropic:
  """A ConvMixer-`hidden_size`/`depth` with global average pooling and a PyTorch-initialised head.

  `batch_norm_group`: the examples each BatchNorm's training statistics come from (GroupBatchNorm), e.g. the
  per-GPU batch of an unsynchronised DDP run; 0 synchronises them over the whole global batch."""
  common = dict(
    axis_name=axis_name,
    batch_norm_group=batch_norm_group,
    activation=activation,
    approximate_gelu=approximate_gelu,
    dtype=dtype,
  )
  head_kernel_init, head_bias_init = torch_default_init(hidden_size)
  block = functools.partial(
    MixingBlock,
    channel_residual=False,
    token_mixer=functools.partial(DepthwiseConvMixer, kernel_size, kernels=kernels, **common),
    channel_mixer=functools.partial(PointwiseMixer, kernels=kernels, **common),
  )
  head = PoolingHead(
    num_classes, pool='gap', kernel_init=head_kernel_init, bias_init=head_bias_init, dtype=dtype, kernels=kernels
  )
  return Isotropic(
    ConvMixerStem(hidden_size, patch_size, **common),
    block,
    head,
    depth,
    drop_path_rate=drop_path_rate,
    remat=remat,
    remat_policy=remat_policy,
    scan=scan,
    dtype=dtype,
  )


# --- weight files ----------------------------------------------------------------------------------------------

# timm's published ConvMixers whose activation is not its default GELU (convmixer.py l.142-144).
RELU_CONVMIXERS = {(768, 32): 'convmixer_768_32'}


def timm_variables(state: Tensors) -> dict:
  """A timm ConvMixer's state dict -> isojax's {'params', 'batch_stats'}."""
  stem_norm, stem_stats = convert.batchnorm(state, 'stem.2')
  params: dict[str, Any] = {'stem': {'patch_embed': convert.patch_embedding(state, 'stem.0'), 'norm': stem_norm}}
  stats: dict[str, Any] = {'stem': {'norm': stem_stats}}
  for i in range(convert.block_count(state, r'blocks\.(\d+)\.')):
    b = f'blocks.{i}'
    token_norm, token_stats = convert.batchnorm(state, f'{b}.0.fn.2')
    channel_norm, channel_stats = convert.batchnorm(state, f'{b}.3')
    params[f'block_{i}'] = {
      'token_mixing': {'depthwise': convert.conv(state, f'{b}.0.fn.0'), 'norm': token_norm},
      'channel_mixing': {
        'pointwise': {'kernel': state[f'{b}.1.weight'][:, :, 0, 0].T, 'bias': state[f'{b}.1.bias']},
        'norm': channel_norm,
      },
    }
    stats[f'block_{i}'] = {'token_mixing': {'norm': token_stats}, 'channel_mixing': {'norm': channel_stats}}
  if 'head.weight' in state:
    params['head'] = convert.linear(state, 'head')
  return {'params': params, 'batch_stats': stats}


def from_timm(state: Tensors) -> Weights:
  """A timm `convmixer_*` state dict -> `Weights`."""
  variables = convert.read_all(state, timm_variables, 'timm convmixer', ignore=convert.batchnorm_counter)
  stem = state['stem.0.weight']
  width, depth = int(stem.shape[0]), convert.block_count(state, r'blocks\.(\d+)\.')
  relu = (width, depth) in RELU_CONVMIXERS
  fields = dict(
    hidden_size=width,
    depth=depth,
    kernel_size=int(state['blocks.0.0.fn.0.weight'].shape[-1]),
    patch_size=convert.square_patch(*stem.shape[2:]),
    activation='relu' if relu else 'gelu',
    approximate_gelu=False,
  )
  assumed = {
    'activation': (
      f'relu: a {width}-wide, {depth}-deep timm ConvMixer is {RELU_CONVMIXERS[(width, depth)]}, built with nn.ReLU'
      if relu
      else "exact GELU, timm ConvMixer's default (nn.GELU)"
    )
    + '; the file does not store it. Pass activation= if this model was built otherwise.'
  }
  return Weights(variables, 'convmixer', fields, convert.classes(state), None, assumed, int(stem.shape[1]))


def _is_timm_convmixer(state: Tensors) -> bool:
  return 'stem.0.weight' in state and any(k.endswith('.0.fn.0.weight') for k in state)


FAMILY = Family(
  'convmixer',
  convmixer,
  parse_name,
  format_name,
  VARIANTS,
  SOURCE,
  image_sizes=IMAGE_SIZES,
  published_name=published_name,
  readers={TIMM: Reader(_is_timm_convmixer, from_timm)},
)
