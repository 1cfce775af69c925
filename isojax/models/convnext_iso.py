"""Isotropic ConvNeXt (Liu et al. 2022, section 3.3): a 7x7 depthwise convolution mixes tokens.

One residual per block around depthwise conv -> LayerNorm -> MLP, so the family supplies its own
block. Follows facebookresearch/ConvNeXt at 048efce: models/convnext_isotropic.py
`ConvNeXtIsotropic` (l.17-64) with models/convnext.py `Block` (l.15-50): a 16x16 stride-16
convolution stem; blocks x + drop_path(gamma * pwconv2(GELU(pwconv1(LayerNorm(dwconv7x7(x)))))),
exact GELU, LayerNorm(eps=1e-6), 4x MLP, and *no* LayerScale (`layer_scale_init_value=0`, l.34, so
`gamma` is None, convnext.py l.33-34); global average pooling, then LayerNorm(eps=1e-6) of the pooled
vector (l.59), a linear head. Every convolution and linear layer starts as timm's
`trunc_normal_(std=.02)` with zero bias (l.51-54); timm truncates at +-2 in absolute value, 100
standard deviations, so this is N(0, 0.02). Stochastic depth grows linearly (l.39).
Sizes: `convnext_isotropic_{small,base,large}` (l.66-91): 18 x 384, 18 x 768, 36 x 1024.

Names: `ConvNeXt-iso-S`, `-B`, `-L` or `ConvNeXt-iso-{width}x{depth}` with `-p{patch}` (16) and
`-k{kernel}` (7) when they differ.

Weight files: facebookresearch/ConvNeXt's `ConvNeXtIsotropic` state dicts (torch layout: `stem`,
`blocks.i.{dwconv, norm, pwconv1, pwconv2[, gamma]}`, `norm`, `head`; timm has no isotropic ConvNeXt).
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from isojax.kernels import REFERENCE
from isojax.models import convert
from isojax.models.convert import TIMM, Reader, Tensors, Weights
from isojax.models.family import Family
from isojax.models.isotropic import Isotropic, PoolingHead
from isojax.models.layers import TIMM_TRUNC_NORMAL_02 as TRUNC_NORMAL_02
from isojax.models.layers import ZEROS, Dense, DepthwiseConv, DropPath, LayerScale, PatchEmbed, gelu
from isojax.models.naming import PATCH_NEVER, SizedNames, Suffix

_PATCH, _KERNEL = 16, 7
SIZES = {
  'S': dict(hidden_size=384, depth=18),
  'B': dict(hidden_size=768, depth=18),
  'L': dict(hidden_size=1024, depth=36),
}
NAMES = SizedNames(
  'ConvNeXt-iso',
  SIZES,
  (Suffix('p', 'patch_size', lambda f: _PATCH), Suffix('k', 'kernel_size', lambda f: _KERNEL)),
  patch=PATCH_NEVER,
  sizes_fix_suffixes=False,
  prefix_pattern=r'convnext[-_]?iso(?:tropic)?',
  size_aliases={'small': 'S', 'base': 'B', 'large': 'L'},
)
VARIANTS = {f'ConvNeXt-iso-{size}': dict(SIZES[size], patch_size=_PATCH, kernel_size=_KERNEL) for size in SIZES}
SOURCE = 'facebookresearch/ConvNeXt models/convnext_isotropic.py, models/convnext.py Block and LayerNorm'


class ConvNeXtStem(nn.Module):
  """A strided convolution cutting the image into patches, kept as a [batch, h, w, width] grid."""

  hidden_size: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    return PatchEmbed(
      self.hidden_size,
      self.patch_size,
      kernel_init=TRUNC_NORMAL_02,
      bias_init=ZEROS,
      dtype=self.dtype,
      name='patch_embed',
    )(images)


class ConvNeXtBlock(nn.Module):
  """x + drop_path([gamma *] pwconv2(GELU(pwconv1(LayerNorm(dwconv(x)))))): one residual branch."""

  kernel_size: int = _KERNEL
  layer_scale_init: Optional[float] = None
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  kernels: str = REFERENCE

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    width = x.shape[-1]

    def dense(features, name):
      return Dense(
        features, kernel_init=TRUNC_NORMAL_02, bias_init=ZEROS, dtype=self.dtype, kernels=self.kernels, name=name
      )

    y = DepthwiseConv(
      self.kernel_size,
      kernel_init=TRUNC_NORMAL_02,
      bias_init=ZEROS,
      dtype=self.dtype,
      kernels=self.kernels,
      name='dwconv',
    )(x)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='norm')(y)
    y = dense(width, 'pwconv2')(gelu(approximate=False)(dense(4 * width, 'pwconv1')(y)))
    if self.layer_scale_init is not None:
      y = LayerScale(self.layer_scale_init, name='ls')(y)
    return x + DropPath(self.drop_path_rate)(y, train=train)


def convnext_iso(
  num_classes: int,
  *,
  hidden_size: int,
  depth: int,
  patch_size: int = _PATCH,
  kernel_size: int = _KERNEL,
  layer_scale_init: Optional[float] = None,
  drop_path_rate: float = 0.0,
  remat: bool = False,
  remat_policy: str = 'nothing_saveable',
  scan: bool = False,
  dtype: Any = jnp.float32,
  kernels: str = REFERENCE,
) -> Isotropic:
  """An isotropic ConvNeXt; `layer_scale_init` adds ConvNeXt's gamma (the isotropic models have none)."""
  block = functools.partial(ConvNeXtBlock, kernel_size, layer_scale_init, dtype=dtype, kernels=kernels)
  head = PoolingHead(
    num_classes,
    norm=functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=dtype),
    norm_after_pool=True,
    pool='gap',
    kernel_init=TRUNC_NORMAL_02,
    bias_init=ZEROS,
    dtype=dtype,
    kernels=kernels,
  )
  return Isotropic(
    ConvNeXtStem(hidden_size, patch_size, dtype=dtype),
    block,
    head,
    depth,
    drop_path_rate=drop_path_rate,
    remat=remat,
    remat_policy=remat_policy,
    scan=scan,
    dtype=dtype,
  )


NOT_IMPLEMENTED = 'It is a variant isojax does not implement.'

# --- weight files ----------------------------------------------------------------------------------------------


def facebook_params(state: Tensors) -> dict:
  """facebookresearch/ConvNeXt's ConvNeXtIsotropic state dict -> isojax's parameters."""
  params: dict[str, Any] = {'stem': {'patch_embed': convert.patch_embedding(state, 'stem')}}
  for i in range(convert.block_count(state, r'blocks\.(\d+)\.')):
    b = f'blocks.{i}'
    params[f'block_{i}'] = {
      'dwconv': convert.conv(state, f'{b}.dwconv'),
      'norm': convert.norm(state, f'{b}.norm'),
      'pwconv1': convert.linear(state, f'{b}.pwconv1'),
      'pwconv2': convert.linear(state, f'{b}.pwconv2'),
    }
    if f'{b}.gamma' in state:
      params[f'block_{i}']['ls'] = {'scale': state[f'{b}.gamma']}
  return convert.timm_head(state, params)


def from_facebook(state: Tensors) -> Weights:
  """A ConvNeXtIsotropic state dict -> `Weights`."""
  variables = convert.read_all(state, lambda s: {'params': facebook_params(s)}, 'ConvNeXt-iso', NOT_IMPLEMENTED)
  stem = state['stem.weight']
  fields = dict(
    hidden_size=int(stem.shape[0]),
    depth=convert.block_count(state, r'blocks\.(\d+)\.'),
    patch_size=convert.square_patch(*stem.shape[2:]),
    kernel_size=int(state['blocks.0.dwconv.weight'].shape[-1]),
    layer_scale_init=1e-6 if 'blocks.0.gamma' in state else None,
  )  # the loaded gammas replace 1e-6
  return Weights(variables, 'convnext_iso', fields, convert.classes(state), None, {}, int(stem.shape[1]))


def _is_convnext_iso(state: Tensors) -> bool:
  return 'stem.weight' in state and any(k.endswith('.dwconv.weight') for k in state)


FAMILY = Family.named(
  'convnext_iso', convnext_iso, NAMES, VARIANTS, SOURCE, readers={TIMM: Reader(_is_convnext_iso, from_facebook)}
)
