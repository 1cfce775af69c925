"""Vision Transformer (Dosovitskiy et al. 2020): attention mixes tokens.

Structure, names and initialisers follow google-research/vision_transformer
vit_jax/models_vit.py: pre-norm blocks with LayerNorm(eps=1e-6) (flax's default),
tanh-approximate GELU (`nn.gelu`, l.90), xavier-uniform kernels for q, k, v, out
(l.141) and the MLP (l.74), MLP biases N(0, 1e-6) (l.77), position embedding
N(0, 0.02) (l.192), zero class token (l.281), zero head (l.306), lecun-normal patch
embedding (nn.Conv default, l.264), tanh pre-logits (l.297-298). Sizes (Ti/S/B/L/H):
big_vision/models/vit.py `decode_variant` (l.297-300; Table 2 of arXiv:2106.04560).

Names: `ViT-{Ti,S,M,B,L,H}/{patch}` or, for other shapes, `ViT-{width}x{depth}/{patch}`
with `-h{heads}` and `-m{mlp_dim}` when they differ from width/64 and 4 x width.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from isojax.models.isotropic import Isotropic, MixingBlock, PoolingHead
from isojax.models.layers import MlpBlock, PatchEmbed, SelfAttention, posemb_sincos_2d

POSEMBS = ('learn', 'sincos2d')

_SIZES = {  # width, depth, heads, mlp_dim: big_vision/models/vit.py decode_variant, l.297-300
    'Ti': (192, 12, 3, 768),
    'S': (384, 12, 6, 1536),
    'M': (512, 12, 8, 2048),
    'B': (768, 12, 12, 3072),
    'L': (1024, 24, 16, 4096),
    'H': (1280, 32, 16, 5120),
}
_PATCHES = {'Ti': (16,), 'S': (32, 16, 14, 8), 'B': (32, 16, 14, 8), 'L': (32, 16, 14), 'H': (14,)}

VARIANTS = {
    f'ViT-{size}/{patch}': dict(hidden_size=w, depth=d, num_heads=h, mlp_dim=m, patch_size=patch)
    for size, (w, d, h, m) in _SIZES.items() for patch in _PATCHES.get(size, ())
}
IMAGE_SIZE = 224
SOURCE = ('google-research/vision_transformer vit_jax/models_vit.py (structure, names, init); '
          'sizes: big_vision/models/vit.py decode_variant')
_NAME = re.compile(r'^vit[-_]?(?:(?P<size>ti|s|m|b|l|h)|(?P<width>\d+)x(?P<depth>\d+))[/_-]?(?P<patch>\d+)'
                   r'(?:-h(?P<heads>\d+))?(?:-m(?P<mlp>\d+))?$', re.IGNORECASE)


def parse_name(name: str) -> Optional[dict]:
  """The architecture a ViT name fixes, or None when `name` is not a ViT name."""
  match = _NAME.match(name.strip())
  if not match:
    return None
  if match['size']:
    size = next(k for k in _SIZES if k.lower() == match['size'].lower())
    width, depth, heads, mlp = _SIZES[size]
    if match['heads'] or match['mlp']:
      return None   # a lettered size fixes heads and MLP width already
  else:
    width, depth = int(match['width']), int(match['depth'])
    heads, mlp = int(match['heads'] or max(width // 64, 1)), int(match['mlp'] or 4 * width)
  return dict(hidden_size=width, depth=depth, num_heads=heads, mlp_dim=mlp, patch_size=int(match['patch']))


def format_name(arch: dict) -> str:
  """The canonical name of a ViT architecture (inverse of `parse_name`)."""
  shape = (arch['hidden_size'], arch['depth'], arch['num_heads'], arch['mlp_dim'])
  for size, sized in _SIZES.items():
    if sized == shape:
      return f'ViT-{size}/{arch["patch_size"]}'
  width = arch['hidden_size']
  heads = '' if arch['num_heads'] == max(width // 64, 1) else f'-h{arch["num_heads"]}'
  mlp = '' if arch['mlp_dim'] == 4 * width else f'-m{arch["mlp_dim"]}'
  return f'ViT-{width}x{arch["depth"]}/{arch["patch_size"]}{heads}{mlp}'


class ViTStem(nn.Module):
  """Patch embedding, optional class token, position embedding, dropout.

  `posemb_class_token=False` adds the position embedding to the patches only, before the
  class token is prepended (big_vision's 'tok' pooling, vit.py l.219-225; DeiT III).
  A `backbone` (a module from images to a feature map) runs before the patch embedding: the hybrid's ResNet.
  """
  hidden_size: int
  patch_size: int
  class_token: bool
  posemb: str = 'learn'
  posemb_class_token: bool = True
  dropout_rate: float = 0.0
  backbone: Optional[nn.Module] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if self.posemb not in POSEMBS:
      raise ValueError(f'Unknown posemb {self.posemb!r}; expected one of {POSEMBS}.')
    if self.backbone is not None:
      images = self.backbone(images)
    x = PatchEmbed(self.hidden_size, self.patch_size, dtype=self.dtype, name='patch_embed')(images)
    batch, h, w, c = x.shape
    x = x.reshape(batch, h * w, c)
    embed_class_token = self.class_token and self.posemb_class_token
    if self.class_token and not embed_class_token:
      x = x + self._posemb(h, w, c, with_class_token=False).astype(x.dtype)
    if self.class_token:
      cls = self.param('cls', nn.initializers.zeros, (1, 1, c))
      x = jnp.concatenate([jnp.tile(cls, (batch, 1, 1)).astype(x.dtype), x], axis=1)
    if embed_class_token or not self.class_token:
      x = x + self._posemb(h, w, c, with_class_token=embed_class_token).astype(x.dtype)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)

  def _posemb(self, h: int, w: int, c: int, with_class_token: bool) -> jax.Array:
    if self.posemb == 'learn':   # N(0, 0.02): vision_transformer models_vit.py l.192 ("from BERT")
      return self.param('pos_embedding', nn.initializers.normal(stddev=0.02), (1, h * w + with_class_token, c))
    pe = posemb_sincos_2d(h, w, c)
    return jnp.concatenate([jnp.zeros((1, 1, c)), pe], axis=1) if with_class_token else pe


class AttentionMixer(nn.Module):
  """Token mixer: self-attention followed by dropout."""
  num_heads: int
  attention_dropout_rate: float = 0.0
  dropout_rate: float = 0.0
  qkv_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = SelfAttention(self.num_heads, self.attention_dropout_rate, qkv_bias=self.qkv_bias, dtype=self.dtype,
                      name='attention')(x, train=train)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


def vit(num_classes: int, *, hidden_size: int, depth: int, num_heads: int, mlp_dim: int,
        patch_size: int, classifier: str = 'token', posemb: str = 'learn', posemb_class_token: bool = True,
        representation_size: Optional[int] = None, dropout_rate: float = 0.0,
        attention_dropout_rate: float = 0.0, drop_path_rate: float = 0.0,
        layer_scale_init: Optional[float] = None, approximate_gelu: bool = True,
        layernorm_epsilon: float = 1e-6, norm_after_pool: bool = False, qkv_bias: bool = True, remat: bool = False,
        head_bias_init: float = 0.0, dtype: Any = jnp.float32) -> Isotropic:
  """A ViT; `classifier` is 'token' (class token), 'gap' or 'map' (attention pooling).

  `norm_after_pool` applies the final LayerNorm to the pooled vector (timm's `fc_norm`);
  `qkv_bias=False` drops the query/key/value biases (timm's `qkv_bias=False` models).
  """
  norm = functools.partial(nn.LayerNorm, epsilon=layernorm_epsilon, dtype=dtype)
  block = functools.partial(
      MixingBlock, norm=norm, layer_scale_init=layer_scale_init,
      token_mixer=functools.partial(AttentionMixer, num_heads=num_heads,
                                    attention_dropout_rate=attention_dropout_rate,
                                    dropout_rate=dropout_rate, qkv_bias=qkv_bias, dtype=dtype),
      channel_mixer=functools.partial(MlpBlock, mlp_dim, dropout_rate=dropout_rate,
                                      approximate_gelu=approximate_gelu, dtype=dtype))
  head = PoolingHead(num_classes, norm=norm, norm_after_pool=norm_after_pool, pool=classifier,
                     map_heads=num_heads, map_mlp_dim=mlp_dim, representation_size=representation_size,
                     approximate_gelu=approximate_gelu, bias_init=nn.initializers.constant(head_bias_init),
                     dtype=dtype)
  stem = ViTStem(hidden_size, patch_size, class_token=classifier == 'token', posemb=posemb,
                 posemb_class_token=posemb_class_token, dropout_rate=dropout_rate, dtype=dtype)
  return Isotropic(stem, block, head, depth, drop_path_rate=drop_path_rate, remat=remat, dtype=dtype)


def attention_heads(model: nn.Module) -> Optional[int]:
  """The attention heads of a model `vit` built (ViT, DeiT III), else None: the one shape its
  parameters do not show (the fused qkv kernel is [width, 3 * width] whatever the heads)."""
  mixer = getattr(getattr(model, 'block', None), 'keywords', {}).get('token_mixer')
  return mixer.keywords['num_heads'] if getattr(mixer, 'func', None) is AttentionMixer else None
