"""gMLP ("Pay Attention to MLPs", Liu et al. 2021): a spatial gating unit mixes tokens inside the MLP.

One residual branch per block, not two, so gMLP supplies its own block to the skeleton. Follows
timm/models/mlp_mixer.py at aa4b585: `SpatialGatingBlock` (l.214-262) is
x + fc2(SGU(GELU(fc1(LayerNorm(x))))) with a 6x MLP (timm/layers/mlp.py `GatedMlp`, l.168-212,
exact GELU); the `SpatialGatingUnit` (l.174-211) splits the hidden channels in halves u, v and
returns u * proj(LayerNorm(v)) with `proj` a linear layer across tokens, initialised to weights
N(0, 1e-6) and biases 1 so that each block starts as a plain MLP. Block norms are
LayerNorm(eps=1e-6) (timm's `norm_layer` default), the unit's own norm is torch's default
LayerNorm(eps=1e-5). A LayerNorm(eps=1e-6) after the last block, global average pooling, zero head
(l.339-341). Other initialisers are timm's `_init_weights` (l.519-556): xavier-uniform linears
with N(0, 1e-6) biases (their names contain 'mlp'), lecun-normal patch embedding. Stochastic depth
is the same rate in every block (timm l.331-341). Sizes: `gmlp_{ti,s,b}16_224` (l.833-866), 30
blocks of width 128, 256, 512.

Names: `gMLP-Ti/16`, `gMLP-S/16`, `gMLP-B/16` or `gMLP-{width}x{depth}/{patch}` (`-r{ratio}`
when the MLP is not 6x).
"""
from __future__ import annotations

import functools
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from isojax.models.isotropic import Isotropic, PoolingHead
from isojax.models.layers import MLP_BIAS, XAVIER, Dense, DropPath, gelu
from isojax.models.mixer import MixerStem

_SIZES = {'Ti': 128, 'S': 256, 'B': 512}   # width; depth 30, patch 16, 6x MLP: timm gmlp_*16_224
_DEPTH, _PATCH, _RATIO = 30, 16, 6
VARIANTS = {f'gMLP-{size}/{_PATCH}': dict(hidden_size=w, depth=_DEPTH, patch_size=_PATCH, mlp_ratio=_RATIO)
            for size, w in _SIZES.items()}
IMAGE_SIZE = 224
SOURCE = 'timm/models/mlp_mixer.py SpatialGatingUnit, SpatialGatingBlock, gmlp_*16_224; timm/layers/mlp.py GatedMlp'
_NAME = re.compile(r'^gmlp[-_]?(?:(?P<size>ti|s|b)|(?P<width>\d+)x(?P<depth>\d+))[/_-]?(?P<patch>\d+)'
                   r'(?:-r(?P<ratio>\d+))?$', re.IGNORECASE)


def parse_name(name: str) -> Optional[dict]:
  """The architecture a gMLP name fixes, or None when `name` is not a gMLP name."""
  match = _NAME.match(name.strip())
  if not match:
    return None
  if match['size']:
    if match['ratio']:
      return None
    width, depth = next(w for k, w in _SIZES.items() if k.lower() == match['size'].lower()), _DEPTH
  else:
    width, depth = int(match['width']), int(match['depth'])
  return dict(hidden_size=width, depth=depth, patch_size=int(match['patch']), mlp_ratio=int(match['ratio'] or _RATIO))


def format_name(arch: dict) -> str:
  """The canonical name of a gMLP architecture (inverse of `parse_name`)."""
  width, depth, patch, ratio = arch['hidden_size'], arch['depth'], arch['patch_size'], arch['mlp_ratio']
  for size, sized in _SIZES.items():
    if (sized, depth, ratio) == (width, _DEPTH, _RATIO):
      return f'gMLP-{size}/{patch}'
  return f'gMLP-{width}x{depth}/{patch}' + ('' if ratio == _RATIO else f'-r{ratio}')


class SpatialGatingUnit(nn.Module):
  """u * proj(norm(v)) over tokens, for the two halves (u, v) of the hidden channels."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    u, v = jnp.split(x, 2, axis=-1)
    v = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name='norm')(v)
    v = Dense(x.shape[1], kernel_init=nn.initializers.normal(stddev=1e-6), bias_init=nn.initializers.ones,
              dtype=self.dtype, name='proj')(jnp.swapaxes(v, 1, 2))
    return u * jnp.swapaxes(v, 1, 2)


class SpatialGatingBlock(nn.Module):
  """x + fc2(SGU(GELU(fc1(norm(x))))): gMLP's one residual branch."""
  mlp_dim: int
  norm: Any
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.mlp_dim % 2:
      raise ValueError(f'The spatial gating unit halves the MLP width; {self.mlp_dim} is odd.')
    dense = lambda n, name: Dense(n, kernel_init=XAVIER, bias_init=MLP_BIAS, dtype=self.dtype, name=name)
    y = self.norm(name='norm')(x)
    y = gelu(approximate=False)(dense(self.mlp_dim, 'fc1')(y))
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    y = SpatialGatingUnit(dtype=self.dtype, name='gate')(y)
    y = dense(x.shape[-1], 'fc2')(y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return x + DropPath(self.drop_path_rate)(y, train=train)


def gmlp(num_classes: int, *, hidden_size: int, depth: int, patch_size: int, mlp_ratio: int = _RATIO,
         drop_path_rate: float = 0.0, dropout_rate: float = 0.0, remat: bool = False,
         head_bias_init: float = 0.0, dtype: Any = jnp.float32) -> Isotropic:
  """A gMLP with global average pooling."""
  norm = functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=dtype)
  block = functools.partial(SpatialGatingBlock, mlp_ratio * hidden_size, norm, dropout_rate=dropout_rate, dtype=dtype)
  head = PoolingHead(num_classes, norm=norm, pool='gap', bias_init=nn.initializers.constant(head_bias_init),
                     dtype=dtype)
  return Isotropic(MixerStem(hidden_size, patch_size, dtype=dtype), block, head, depth,
                   drop_path_rate=drop_path_rate, drop_path_schedule='constant', remat=remat, dtype=dtype)
