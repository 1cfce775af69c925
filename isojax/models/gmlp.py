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

Weight files: timm `gmlp_*` state dicts (`stem.proj`, `blocks.i.{norm, mlp_channels.{fc1, gate.{norm, proj},
fc2}}`, `norm`, `head`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from isojax.kernels import REFERENCE
from isojax.models import convert
from isojax.models.convert import TIMM, Reader, Tensors, Weights
from isojax.models.family import Family
from isojax.models.isotropic import Isotropic
from isojax.models.layers import MLP_BIAS, XAVIER, Dense, DropPath, gelu
from isojax.models.mixer import on_tokens, timm_block_variant
from isojax.models.naming import SizedNames, Suffix

_DEPTH, _PATCH, _RATIO = 30, 16, 6  # timm gmlp_*16_224: 30 blocks, patch 16, 6x MLP
SIZES = {
  'Ti': dict(hidden_size=128, depth=_DEPTH),
  'S': dict(hidden_size=256, depth=_DEPTH),
  'B': dict(hidden_size=512, depth=_DEPTH),
}
NAMES = SizedNames('gMLP', SIZES, (Suffix('r', 'mlp_ratio', lambda f: _RATIO),))
VARIANTS = {f'gMLP-{size}/{_PATCH}': dict(SIZES[size], patch_size=_PATCH, mlp_ratio=_RATIO) for size in SIZES}
SOURCE = 'timm/models/mlp_mixer.py SpatialGatingUnit, SpatialGatingBlock, gmlp_*16_224; timm/layers/mlp.py GatedMlp'


class SpatialGatingUnit(nn.Module):
  """u * proj(norm(v)) over tokens, for the two halves (u, v) of the hidden channels."""

  dtype: Any = jnp.float32
  kernels: str = REFERENCE

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    u, v = jnp.split(x, 2, axis=-1)
    v = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name='norm')(v)
    v = Dense(
      x.shape[1],
      kernel_init=nn.initializers.normal(stddev=1e-6),
      bias_init=nn.initializers.ones,
      dtype=self.dtype,
      kernels=self.kernels,
      name='proj',
    )(jnp.swapaxes(v, 1, 2))
    return u * jnp.swapaxes(v, 1, 2)


class SpatialGatingBlock(nn.Module):
  """x + fc2(SGU(GELU(fc1(norm(x))))): gMLP's one residual branch."""

  mlp_dim: int
  norm: Any
  dropout_rate: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32
  kernels: str = REFERENCE

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.mlp_dim % 2:
      raise ValueError(f'The spatial gating unit halves the MLP width; {self.mlp_dim} is odd.')

    def dense(features, name):
      return Dense(features, kernel_init=XAVIER, bias_init=MLP_BIAS, dtype=self.dtype, kernels=self.kernels, name=name)

    y = self.norm(name='norm')(x)
    y = gelu(approximate=False)(dense(self.mlp_dim, 'fc1')(y))
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    y = SpatialGatingUnit(dtype=self.dtype, kernels=self.kernels, name='gate')(y)
    y = dense(x.shape[-1], 'fc2')(y)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    return x + DropPath(self.drop_path_rate)(y, train=train)


def gmlp(
  num_classes: int,
  *,
  hidden_size: int,
  depth: int,
  patch_size: int,
  mlp_ratio: int = _RATIO,
  drop_path_rate: float = 0.0,
  dropout_rate: float = 0.0,
  remat: bool = False,
  remat_policy: str = 'nothing_saveable',
  scan: bool = False,
  head_bias_init: float = 0.0,
  dtype: Any = jnp.float32,
  kernels: str = REFERENCE,
) -> Isotropic:
  """A gMLP with global average pooling."""
  norm = functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=dtype)
  block = functools.partial(
    SpatialGatingBlock, mlp_ratio * hidden_size, norm, dropout_rate=dropout_rate, dtype=dtype, kernels=kernels
  )
  return on_tokens(
    num_classes,
    block,
    norm,
    hidden_size,
    patch_size,
    depth,
    drop_path_rate,
    'constant',
    remat,
    remat_policy,
    scan,
    head_bias_init,
    dtype,
    kernels,
  )


# --- weight files ----------------------------------------------------------------------------------------------


def timm_params(state: Tensors) -> dict:
  """A timm gMLP's state dict -> isojax's parameters."""
  params: dict[str, Any] = {'stem': {'patch_embed': convert.patch_embedding(state, 'stem.proj')}}
  for i in range(convert.block_count(state, r'blocks\.(\d+)\.')):
    b = f'blocks.{i}.mlp_channels'
    params[f'block_{i}'] = {
      'norm': convert.norm(state, f'blocks.{i}.norm'),
      'fc1': convert.linear(state, f'{b}.fc1'),
      'fc2': convert.linear(state, f'{b}.fc2'),
      'gate': {'norm': convert.norm(state, f'{b}.gate.norm'), 'proj': convert.linear(state, f'{b}.gate.proj')},
    }
  return convert.timm_head(state, params)


def from_timm(state: Tensors) -> Weights:
  """A timm `gmlp_*` state dict -> `Weights`."""
  variables = convert.read_all(state, lambda s: {'params': timm_params(s)}, 'timm gmlp')
  return timm_block_variant(state, variables, 'gmlp', 'mlp_channels.gate.proj', 'The spatial gating unit')


def _is_timm_gmlp(state: Tensors) -> bool:
  return convert.has_key(state, '.mlp_channels.gate.proj.weight')


FAMILY = Family.named('gmlp', gmlp, NAMES, VARIANTS, SOURCE, readers={TIMM: Reader(_is_timm_gmlp, from_timm)})
