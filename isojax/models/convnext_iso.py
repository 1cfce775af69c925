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
"""
from __future__ import annotations

import functools
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from isojax.models.isotropic import Isotropic, PoolingHead
from isojax.models.layers import TIMM_TRUNC_NORMAL_02 as TRUNC_NORMAL_02
from isojax.models.layers import ZEROS, Dense, DepthwiseConv, DropPath, LayerScale, PatchEmbed, gelu

_SIZES = {'S': (384, 18), 'B': (768, 18), 'L': (1024, 36)}
_PATCH, _KERNEL = 16, 7
VARIANTS = {f'ConvNeXt-iso-{size}': dict(hidden_size=w, depth=d, patch_size=_PATCH, kernel_size=_KERNEL)
            for size, (w, d) in _SIZES.items()}
IMAGE_SIZE = 224
SOURCE = 'facebookresearch/ConvNeXt models/convnext_isotropic.py, models/convnext.py Block and LayerNorm'
_NAME = re.compile(r'^convnext[-_]?iso(?:tropic)?[-_]?(?:(?P<size>s|b|l|small|base|large)|(?P<width>\d+)x(?P<depth>\d+))'
                   r'(?:-p(?P<patch>\d+))?(?:-k(?P<kernel>\d+))?$', re.IGNORECASE)


def parse_name(name: str) -> Optional[dict]:
  """The architecture an isotropic ConvNeXt name fixes, or None when `name` is not one."""
  match = _NAME.match(name.strip())
  if not match:
    return None
  if match['size']:
    width, depth = _SIZES[match['size'][0].upper()]
  else:
    width, depth = int(match['width']), int(match['depth'])
  return dict(hidden_size=width, depth=depth, patch_size=int(match['patch'] or _PATCH),
              kernel_size=int(match['kernel'] or _KERNEL))


def format_name(arch: dict) -> str:
  """The canonical name of an isotropic ConvNeXt (inverse of `parse_name`)."""
  extra = ('' if arch['patch_size'] == _PATCH else f'-p{arch["patch_size"]}') + (
      '' if arch['kernel_size'] == _KERNEL else f'-k{arch["kernel_size"]}')
  for size, sized in _SIZES.items():
    if sized == (arch['hidden_size'], arch['depth']) and not extra:
      return f'ConvNeXt-iso-{size}'
  return f'ConvNeXt-iso-{arch["hidden_size"]}x{arch["depth"]}{extra}'


class ConvNeXtStem(nn.Module):
  """A strided convolution cutting the image into patches, kept as a [batch, h, w, width] grid."""
  hidden_size: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    return PatchEmbed(self.hidden_size, self.patch_size, kernel_init=TRUNC_NORMAL_02, bias_init=ZEROS,
                      dtype=self.dtype, name='patch_embed')(images)


class ConvNeXtBlock(nn.Module):
  """x + drop_path([gamma *] pwconv2(GELU(pwconv1(LayerNorm(dwconv(x)))))): one residual branch."""
  kernel_size: int = _KERNEL
  layer_scale_init: Optional[float] = None
  drop_path_rate: float = 0.0
  depthwise_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    width = x.shape[-1]
    y = DepthwiseConv(self.kernel_size, self.depthwise_impl, kernel_init=TRUNC_NORMAL_02, bias_init=ZEROS,
                      dtype=self.dtype, name='dwconv')(x)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='norm')(y)
    y = Dense(4 * width, kernel_init=TRUNC_NORMAL_02, bias_init=ZEROS, dtype=self.dtype, name='pwconv1')(y)
    y = Dense(width, kernel_init=TRUNC_NORMAL_02, bias_init=ZEROS, dtype=self.dtype,
              name='pwconv2')(gelu(approximate=False)(y))
    if self.layer_scale_init is not None:
      y = LayerScale(self.layer_scale_init, name='ls')(y)
    return x + DropPath(self.drop_path_rate)(y, train=train)


def convnext_iso(num_classes: int, *, hidden_size: int, depth: int, patch_size: int = _PATCH,
                 kernel_size: int = _KERNEL, layer_scale_init: Optional[float] = None, drop_path_rate: float = 0.0,
                 depthwise_impl: str = 'auto', remat: bool = False, dtype: Any = jnp.float32) -> Isotropic:
  """An isotropic ConvNeXt; `layer_scale_init` adds ConvNeXt's gamma (the isotropic models have none)."""
  block = functools.partial(ConvNeXtBlock, kernel_size, layer_scale_init, depthwise_impl=depthwise_impl, dtype=dtype)
  head = PoolingHead(num_classes, norm=functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=dtype),
                     norm_after_pool=True, pool='gap', kernel_init=TRUNC_NORMAL_02, bias_init=ZEROS, dtype=dtype)
  return Isotropic(ConvNeXtStem(hidden_size, patch_size, dtype=dtype), block, head, depth,
                   drop_path_rate=drop_path_rate, remat=remat, dtype=dtype)
