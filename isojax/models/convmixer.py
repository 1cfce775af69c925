"""ConvMixer ("Patches Are All You Need?", Trockman & Kolter 2022): a depthwise conv mixes tokens.

Each convolution is followed by GELU then BatchNorm; the residual goes around the
depthwise convolution only. BatchNorm statistics are averaged over `axis_name`
when the model runs under pmap.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from isojax.models.isotropic import Isotropic
from isojax.models.layers import Dense, DepthwiseConv, PatchEmbed, gelu

VARIANTS = {
    'ConvMixer-1536/20': dict(hidden_size=1536, depth=20, kernel_size=9, patch_size=7),
    'ConvMixer-768/32': dict(hidden_size=768, depth=32, kernel_size=7, patch_size=7),
    'ConvMixer-1024/20': dict(hidden_size=1024, depth=20, kernel_size=9, patch_size=14),
    'ConvMixer-256/8': dict(hidden_size=256, depth=8, kernel_size=5, patch_size=2),
}
IMAGE_SIZE = 224
IMAGE_SIZES = {'ConvMixer-256/8': 32}   # the CIFAR model


def _act_norm(x, train, axis_name, approximate_gelu, dtype, name):
  x = gelu(approximate_gelu)(x)
  # PyTorch BatchNorm2d defaults: momentum 0.1 (flax 0.9), epsilon 1e-5.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      axis_name=axis_name, dtype=dtype, name=name)(x)


class ConvMixerStem(nn.Module):
  """Patch embedding -> GELU -> BatchNorm, kept as a [batch, h, w, width] grid."""
  hidden_size: int
  patch_size: int
  axis_name: Optional[str] = None
  approximate_gelu: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    x = PatchEmbed(self.hidden_size, self.patch_size, dtype=self.dtype, name='patch_embed')(images)
    return _act_norm(x, train, self.axis_name, self.approximate_gelu, self.dtype, 'norm')


class DepthwiseConvMixer(nn.Module):
  """Token mixer: depthwise k x k convolution -> GELU -> BatchNorm."""
  kernel_size: int
  axis_name: Optional[str] = None
  approximate_gelu: bool = False
  depthwise_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = DepthwiseConv(self.kernel_size, self.depthwise_impl, dtype=self.dtype, name='depthwise')(x)
    return _act_norm(x, train, self.axis_name, self.approximate_gelu, self.dtype, 'norm')


class PointwiseMixer(nn.Module):
  """Channel mixer: 1x1 convolution (a matrix product over channels) -> GELU -> BatchNorm."""
  axis_name: Optional[str] = None
  approximate_gelu: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = Dense(x.shape[-1], dtype=self.dtype, name='pointwise')(x)
    return _act_norm(x, train, self.axis_name, self.approximate_gelu, self.dtype, 'norm')


def convmixer(num_classes: int, *, hidden_size: int, depth: int, kernel_size: int,
              patch_size: int, axis_name: Optional[str] = None, drop_path_rate: float = 0.0,
              approximate_gelu: bool = False, depthwise_impl: str = 'auto', remat: bool = False,
              dtype: Any = jnp.float32) -> Isotropic:
  """A ConvMixer-`hidden_size`/`depth` with global average pooling."""
  common = dict(axis_name=axis_name, approximate_gelu=approximate_gelu, dtype=dtype)
  return Isotropic(
      num_classes=num_classes, depth=depth,
      stem=ConvMixerStem(hidden_size, patch_size, **common),
      token_mixer=functools.partial(DepthwiseConvMixer, kernel_size, depthwise_impl=depthwise_impl, **common),
      channel_mixer=functools.partial(PointwiseMixer, **common),
      block_norm=None, channel_residual=False, final_norm=None, pool='gap',
      drop_path_rate=drop_path_rate, remat=remat, approximate_gelu=approximate_gelu,
      dtype=dtype)
