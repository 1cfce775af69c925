"""MLP-Mixer (Tolstikhin et al. 2021): an MLP across tokens mixes them."""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from isojax.models.isotropic import Isotropic
from isojax.models.layers import MlpBlock, PatchEmbed

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
    y = MlpBlock(self.mlp_dim, approximate_gelu=self.approximate_gelu, dtype=self.dtype,
                 name='mlp')(jnp.swapaxes(x, 1, 2), train=train)
    return jnp.swapaxes(y, 1, 2)


def mixer(num_classes: int, *, hidden_size: int, depth: int, tokens_mlp_dim: int,
          channels_mlp_dim: int, patch_size: int, drop_path_rate: float = 0.0,
          approximate_gelu: bool = True, layernorm_epsilon: float = 1e-6,
          remat: bool = False, dtype: Any = jnp.float32) -> Isotropic:
  """An MLP-Mixer with global average pooling."""
  norm = functools.partial(nn.LayerNorm, epsilon=layernorm_epsilon, dtype=dtype)
  return Isotropic(
      num_classes=num_classes, depth=depth,
      stem=MixerStem(hidden_size, patch_size, dtype=dtype),
      token_mixer=functools.partial(TokenMlp, tokens_mlp_dim, approximate_gelu, dtype),
      channel_mixer=functools.partial(MlpBlock, channels_mlp_dim,
                                      approximate_gelu=approximate_gelu, dtype=dtype),
      block_norm=norm, final_norm=norm, pool='gap', drop_path_rate=drop_path_rate,
      remat=remat, approximate_gelu=approximate_gelu, dtype=dtype)
