"""ResMLP (Touvron et al. 2021): one linear layer across tokens mixes them.

Follows timm/models/mlp_mixer.py at aa4b585 (the port of facebookresearch/deit resmlp_models.py
that timm's and the authors' weights load into): `Affine` normalisation, x * alpha + beta (l.105-121);
`ResBlock` (l.124-171): x + ls1 * linear_tokens(norm1(x) across tokens), then
x + ls2 * Mlp(norm2(x)) with exact GELU (torch `nn.GELU`) and a 4x MLP; an `Affine` after the
last block, global average pooling, a linear head (l.339-341). LayerScale starts at 1e-4 for 12
blocks, 1e-5 for 24 and 1e-6 for 36 and for ResMLP-B24 (`resmlp_*_224`, l.786-830); other shapes
take 1e-4 / 1e-5 / 1e-6 by depth up to 12 / 24 / beyond. Initialisers are
timm's `_init_weights` (l.519-556): xavier-uniform linears with zero biases except the MLP's
(N(0, 1e-6)), lecun-normal patch embedding, zero head. Stochastic depth is the same rate in every
block (timm l.331-341 and deit's `dpr = [drop_path_rate] * depth`), not the linear ramp of ViT.

Names: `ResMLP-S12`, `-S24`, `-S36` (width 384, patch 16), `ResMLP-B24` (width 768, patch 8) or
`ResMLP-{width}x{depth}/{patch}`.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from isojax.models.isotropic import Isotropic, MixingBlock, PoolingHead
from isojax.models.layers import XAVIER, ZEROS, Dense, MlpBlock
from isojax.models.mixer import MixerStem

_SIZES = {  # width, depth, patch: timm resmlp_12/24/36/big_24_224, mlp_mixer.py l.786-830
    'S12': (384, 12, 16),
    'S24': (384, 24, 16),
    'S36': (384, 36, 16),
    'B24': (768, 24, 8),
}
_LAYER_SCALE = {'S12': 1e-4, 'S24': 1e-5, 'S36': 1e-6, 'B24': 1e-6}   # ResBlock's default 1e-4 (l.135) or partial(init_values=)
VARIANTS = {f'ResMLP-{size}': dict(hidden_size=w, depth=d, patch_size=p, mlp_ratio=4, layer_scale_init=_LAYER_SCALE[size])
            for size, (w, d, p) in _SIZES.items()}
IMAGE_SIZE = 224
SOURCE = 'timm/models/mlp_mixer.py Affine, ResBlock, resmlp_*_224 (port of facebookresearch/deit resmlp_models.py)'
_NAME = re.compile(r'^resmlp[-_]?(?:(?P<size>s12|s24|s36|b24)|(?P<width>\d+)x(?P<depth>\d+)[/_-]?(?P<patch>\d+))'
                   r'(?:-r(?P<ratio>\d+))?$', re.IGNORECASE)


def parse_name(name: str) -> Optional[dict]:
  """The architecture a ResMLP name fixes, or None when `name` is not a ResMLP name."""
  match = _NAME.match(name.strip())
  if not match:
    return None
  if match['size']:
    if match['ratio']:
      return None
    width, depth, patch = _SIZES[match['size'].upper()]
  else:
    width, depth, patch = int(match['width']), int(match['depth']), int(match['patch'])
  return dict(hidden_size=width, depth=depth, patch_size=patch, mlp_ratio=int(match['ratio'] or 4))


def format_name(arch: dict) -> str:
  """The canonical name of a ResMLP architecture (inverse of `parse_name`)."""
  shape = (arch['hidden_size'], arch['depth'], arch['patch_size'])
  ratio = '' if arch['mlp_ratio'] == 4 else f'-r{arch["mlp_ratio"]}'
  for size, sized in _SIZES.items():
    if sized == shape and not ratio:
      return f'ResMLP-{size}'
  return f'ResMLP-{arch["hidden_size"]}x{arch["depth"]}/{arch["patch_size"]}{ratio}'


def layer_scale_for_depth(depth: int) -> float:
  """LayerScale start of a shape timm does not publish: as its S12/S24/S36, 1e-4 up to 12 blocks,
  1e-5 up to 24, else 1e-6."""
  return 1e-4 if depth <= 12 else 1e-5 if depth <= 24 else 1e-6


class Affine(nn.Module):
  """ResMLP's normalisation: a learned per-channel scale and shift, no statistics."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    alpha = self.param('alpha', nn.initializers.ones, (x.shape[-1],))
    beta = self.param('beta', nn.initializers.zeros, (x.shape[-1],))
    return (x * alpha + beta).astype(self.dtype)


class LinearTokenMixer(nn.Module):
  """Token mixer: one linear layer [tokens -> tokens] applied to every channel."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = Dense(x.shape[1], kernel_init=XAVIER, bias_init=ZEROS, dtype=self.dtype,
              name='linear_tokens')(jnp.swapaxes(x, 1, 2))
    return jnp.swapaxes(y, 1, 2)


def resmlp(num_classes: int, *, hidden_size: int, depth: int, patch_size: int, mlp_ratio: int = 4,
           layer_scale_init: Optional[float] = None, drop_path_rate: float = 0.0, dropout_rate: float = 0.0,
           remat: bool = False, head_bias_init: float = 0.0, dtype: Any = jnp.float32) -> Isotropic:
  """A ResMLP; `layer_scale_init=None` (an unpublished shape) takes 1e-4 / 1e-5 / 1e-6 by depth."""
  norm = functools.partial(Affine, dtype=dtype)
  block = functools.partial(
      MixingBlock, norm=norm,
      layer_scale_init=layer_scale_for_depth(depth) if layer_scale_init is None else layer_scale_init,
      token_mixer=functools.partial(LinearTokenMixer, dtype=dtype),
      channel_mixer=functools.partial(MlpBlock, mlp_ratio * hidden_size, dropout_rate=dropout_rate,
                                      approximate_gelu=False, dtype=dtype))
  head = PoolingHead(num_classes, norm=norm, pool='gap', bias_init=nn.initializers.constant(head_bias_init),
                     dtype=dtype)
  return Isotropic(MixerStem(hidden_size, patch_size, dtype=dtype), block, head, depth,
                   drop_path_rate=drop_path_rate, drop_path_schedule='constant', remat=remat, dtype=dtype)
