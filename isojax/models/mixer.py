"""MLP-Mixer (Tolstikhin et al. 2021): an MLP across tokens mixes them.

Structure, names and initialisers follow google-research/vision_transformer
vit_jax/models_mixer.py: its MlpBlock is two flax `nn.Dense` with their defaults
(lecun-normal kernels, zero biases; l.27-29) and tanh-approximate GELU (`nn.gelu`, l.28),
LayerNorm(eps=1e-6), lecun-normal `stem` conv (l.61), global average pooling after
`pre_head_layer_norm` (l.66-67), zero head (l.69). Sizes: the paper's Table 1.

Names: `Mixer-{S,B,L,H}/{patch}` or `Mixer-{width}x{depth}/{patch}` with `-t{tokens_mlp_dim}`
and `-c{channels_mlp_dim}` when they differ from width/2 and 4 x width.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from isojax.models.isotropic import Isotropic, MixingBlock, PoolingHead
from isojax.models.layers import LECUN, ZEROS, MlpBlock, PatchEmbed

_SIZES = {  # width, depth, token mlp, channel mlp
    'S': (512, 8, 256, 2048),
    'B': (768, 12, 384, 3072),
    'L': (1024, 24, 512, 4096),
    'H': (1280, 32, 640, 5120),
}
_PATCHES = {'S': (32, 16), 'B': (32, 16), 'L': (32, 16), 'H': (14,)}

VARIANTS = {
    f'Mixer-{size}/{patch}': dict(hidden_size=w, depth=d, tokens_mlp_dim=t, channels_mlp_dim=c,
                                  patch_size=patch)
    for size, (w, d, t, c) in _SIZES.items() for patch in _PATCHES[size]
}
IMAGE_SIZE = 224
SOURCE = 'google-research/vision_transformer vit_jax/models_mixer.py; sizes: MLP-Mixer paper, Table 1'
_NAME = re.compile(r'^mixer[-_]?(?:(?P<size>s|b|l|h)|(?P<width>\d+)x(?P<depth>\d+))[/_-]?(?P<patch>\d+)'
                   r'(?:-t(?P<tokens>\d+))?(?:-c(?P<channels>\d+))?$', re.IGNORECASE)


def parse_name(name: str) -> Optional[dict]:
  """The architecture a Mixer name fixes, or None when `name` is not a Mixer name."""
  match = _NAME.match(name.strip())
  if not match:
    return None
  if match['size']:
    if match['tokens'] or match['channels']:
      return None
    width, depth, tokens, channels = _SIZES[match['size'].upper()]
  else:
    width, depth = int(match['width']), int(match['depth'])
    tokens, channels = int(match['tokens'] or width // 2), int(match['channels'] or 4 * width)
  return dict(hidden_size=width, depth=depth, tokens_mlp_dim=tokens, channels_mlp_dim=channels,
              patch_size=int(match['patch']))


def format_name(arch: dict) -> str:
  """The canonical name of a Mixer architecture (inverse of `parse_name`)."""
  shape = (arch['hidden_size'], arch['depth'], arch['tokens_mlp_dim'], arch['channels_mlp_dim'])
  for size, sized in _SIZES.items():
    if sized == shape:
      return f'Mixer-{size}/{arch["patch_size"]}'
  width = arch['hidden_size']
  tokens = '' if arch['tokens_mlp_dim'] == width // 2 else f'-t{arch["tokens_mlp_dim"]}'
  channels = '' if arch['channels_mlp_dim'] == 4 * width else f'-c{arch["channels_mlp_dim"]}'
  return f'Mixer-{width}x{arch["depth"]}/{arch["patch_size"]}{tokens}{channels}'


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

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = MlpBlock(self.mlp_dim, approximate_gelu=self.approximate_gelu, kernel_init=LECUN, bias_init=ZEROS,
                 dtype=self.dtype, name='mlp')(jnp.swapaxes(x, 1, 2), train=train)
    return jnp.swapaxes(y, 1, 2)


def mixer(num_classes: int, *, hidden_size: int, depth: int, tokens_mlp_dim: int,
          channels_mlp_dim: int, patch_size: int, drop_path_rate: float = 0.0,
          approximate_gelu: bool = True, layernorm_epsilon: float = 1e-6,
          remat: bool = False, head_bias_init: float = 0.0, dtype: Any = jnp.float32) -> Isotropic:
  """An MLP-Mixer with global average pooling."""
  norm = functools.partial(nn.LayerNorm, epsilon=layernorm_epsilon, dtype=dtype)
  block = functools.partial(
      MixingBlock, norm=norm,
      token_mixer=functools.partial(TokenMlp, tokens_mlp_dim, approximate_gelu, dtype),
      channel_mixer=functools.partial(MlpBlock, channels_mlp_dim, approximate_gelu=approximate_gelu,
                                      kernel_init=LECUN, bias_init=ZEROS, dtype=dtype))
  head = PoolingHead(num_classes, norm=norm, pool='gap', bias_init=nn.initializers.constant(head_bias_init),
                     dtype=dtype)
  return Isotropic(MixerStem(hidden_size, patch_size, dtype=dtype), block, head, depth,
                   drop_path_rate=drop_path_rate, remat=remat, dtype=dtype)
