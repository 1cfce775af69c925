"""Vision Transformer (Dosovitskiy et al. 2020): attention mixes tokens.

Variants from the ViT paper, AugReg ("How to train your ViT?") and DeiT.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from isojax.models.isotropic import Isotropic
from isojax.models.layers import MlpBlock, PatchEmbed, SelfAttention, posemb_sincos_2d

POSEMBS = ('learn', 'sincos2d')

_SIZES = {  # width, depth, heads, mlp_dim
    'Ti': (192, 12, 3, 768),
    'S': (384, 12, 6, 1536),
    'B': (768, 12, 12, 3072),
    'L': (1024, 24, 16, 4096),
    'H': (1280, 32, 16, 5120),
}
_PATCHES = {'Ti': (16,), 'S': (32, 16, 14, 8), 'B': (32, 16, 14, 8), 'L': (32, 16, 14), 'H': (14,)}

VARIANTS = {
    f'ViT-{size}/{patch}': dict(hidden_size=w, depth=d, num_heads=h, mlp_dim=m, patch_size=patch)
    for size, (w, d, h, m) in _SIZES.items() for patch in _PATCHES[size]
}
IMAGE_SIZE = 224


class ViTStem(nn.Module):
  """Patch embedding, optional class token, position embedding, dropout."""
  hidden_size: int
  patch_size: int
  class_token: bool
  posemb: str = 'learn'
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if self.posemb not in POSEMBS:
      raise ValueError(f'Unknown posemb {self.posemb!r}; expected one of {POSEMBS}.')
    x = PatchEmbed(self.hidden_size, self.patch_size, dtype=self.dtype, name='patch_embed')(images)
    batch, h, w, c = x.shape
    x = x.reshape(batch, h * w, c)
    if self.class_token:
      cls = self.param('cls', nn.initializers.zeros, (1, 1, c))
      x = jnp.concatenate([jnp.tile(cls, (batch, 1, 1)).astype(x.dtype), x], axis=1)
    if self.posemb == 'learn':
      pe = self.param('pos_embedding', nn.initializers.normal(stddev=0.02), (1,) + x.shape[1:])
    else:
      pe = posemb_sincos_2d(h, w, c)
      if self.class_token:
        pe = jnp.concatenate([jnp.zeros((1, 1, c)), pe], axis=1)
    x = x + pe.astype(x.dtype)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class AttentionMixer(nn.Module):
  """Token mixer: self-attention followed by dropout."""
  num_heads: int
  attention_dropout_rate: float = 0.0
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = SelfAttention(self.num_heads, self.attention_dropout_rate, dtype=self.dtype,
                      name='attention')(x, train=train)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


def vit(num_classes: int, *, hidden_size: int, depth: int, num_heads: int, mlp_dim: int,
        patch_size: int, classifier: str = 'token', posemb: str = 'learn',
        representation_size: Optional[int] = None, dropout_rate: float = 0.0,
        attention_dropout_rate: float = 0.0, drop_path_rate: float = 0.0,
        layer_scale_init: Optional[float] = None, approximate_gelu: bool = True,
        layernorm_epsilon: float = 1e-6, norm_after_pool: bool = False, remat: bool = False,
        dtype: Any = jnp.float32) -> Isotropic:
  """A ViT; `classifier` is 'token' (class token), 'gap' or 'map' (attention pooling).

  `norm_after_pool` applies the final LayerNorm to the pooled vector (timm's `fc_norm`).
  """
  norm = functools.partial(nn.LayerNorm, epsilon=layernorm_epsilon, dtype=dtype)
  return Isotropic(
      num_classes=num_classes, depth=depth,
      stem=ViTStem(hidden_size, patch_size, class_token=classifier == 'token', posemb=posemb,
                   dropout_rate=dropout_rate, dtype=dtype),
      token_mixer=functools.partial(AttentionMixer, num_heads=num_heads,
                                    attention_dropout_rate=attention_dropout_rate,
                                    dropout_rate=dropout_rate, dtype=dtype),
      channel_mixer=functools.partial(MlpBlock, mlp_dim, dropout_rate=dropout_rate,
                                      approximate_gelu=approximate_gelu, dtype=dtype),
      block_norm=norm, final_norm=norm, norm_after_pool=norm_after_pool, pool=classifier, map_heads=num_heads,
      representation_size=representation_size, drop_path_rate=drop_path_rate,
      layer_scale_init=layer_scale_init, remat=remat, approximate_gelu=approximate_gelu,
      dtype=dtype)
