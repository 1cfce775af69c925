"""CaiT ("Going deeper with Image Transformers", Touvron et al. 2021): talking-heads self-attention
blocks over the patches, then class-attention layers in the head.

The class token joins only at the end, so CaiT's head is not a pooling head: the family supplies
a `ClassAttentionHead` (class token, 2 class-attention blocks, norm, linear) to the skeleton.
Follows timm/models/cait.py at aa4b585 (the port of facebookresearch/deit cait_models.py):
- patches + a learned position embedding (no class token slot), no dropout by default (l.280-296);
- `LayerScaleBlock` (l.199-246): x + gamma_1 * TalkingHeadAttn(LN(x)), x + gamma_2 * Mlp(LN(x)),
  `TalkingHeadAttn` (l.147-196): softmax((q * d^-0.5) k^T) with a linear layer across heads before
  the softmax (`proj_l`) and one after it (`proj_w`); qkv biases (`qkv_bias=True`, l.258);
- `LayerScaleBlockClassAttn` (l.85-144) x 2 (`depth_token_only`): the class token attends to
  [class token, patches] (`ClassAttn`, l.27-82: separate q, k, v), then its own MLP; no drop path;
- LayerNorm(eps=1e-6) everywhere (l.268), exact GELU, 4x MLPs, class-token pooling after the norm;
- LayerScale starts at 1e-5 for the 24-block models (`cait_xxs24_224`, `cait_s24_224`, l.566-606);
- initialisers (l.329-340): trunc_normal_(std=.02) on every linear layer (bounds +-2 absolute: N(0,
  0.02)), the position embedding and the class token; zero biases; the patch embedding keeps
  PyTorch's Conv2d default, U(+-1/sqrt(fan_in)) (it is not an nn.Linear);
- stochastic depth is the same in every self-attention block (`dpr = [drop_path_rate] * depth`, l.289).

Names: `CaiT-XXS24`, `CaiT-S24` or `CaiT-{width}x{depth}/{patch}` with `-h{heads}` (width/48 otherwise).

Weight files: timm `cait_*` state dicts (`patch_embed.proj`, `pos_embed`, `cls_token`, `blocks.i` and
`blocks_token_only.i` with `norm1`, `attn.*`, `gamma_1`, `norm2`, `mlp`, `gamma_2`; `norm`, `head`). The talking
heads (`proj_l`, `[heads, heads]`) show the head count.
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
from isojax.models.isotropic import Isotropic, MixingBlock
from isojax.models.layers import PRE_LOGITS, ZEROS, Dense, LayerScale, MlpBlock, keep_feature, torch_patch_embedding
from isojax.models.layers import TIMM_TRUNC_NORMAL_02 as NORMAL_02
from isojax.models.naming import PATCH_PARAMETRIC, SizedNames, Suffix

_PATCH = 16
SIZES = {
  'XXS24': dict(hidden_size=192, depth=24, num_heads=4, patch_size=_PATCH),  # cait.py l.566-606
  'S24': dict(hidden_size=384, depth=24, num_heads=8, patch_size=_PATCH),
}
NAMES = SizedNames(
  'CaiT', SIZES, (Suffix('h', 'num_heads', lambda f: max(f['hidden_size'] // 48, 1)),), patch=PATCH_PARAMETRIC
)
VARIANTS = {f'CaiT-{size}': dict(SIZES[size], layer_scale_init=1e-5) for size in SIZES}
SOURCE = 'timm/models/cait.py Cait, LayerScaleBlock, TalkingHeadAttn, LayerScaleBlockClassAttn, ClassAttn'


def _split_heads(x: jax.Array, heads: int) -> jax.Array:
  batch, tokens, width = x.shape
  return x.reshape(batch, tokens, heads, width // heads).transpose(0, 2, 1, 3)  # [B, H, N, d]


def _dense(features: int, dtype: Any, kernels: str, name: str) -> Dense:
  return Dense(features, kernel_init=NORMAL_02, bias_init=ZEROS, dtype=dtype, kernels=kernels, name=name)


class CaiTStem(nn.Module):
  """Patch embedding (PyTorch's Conv2d init) plus a learned position embedding, as [batch, tokens, width]."""

  hidden_size: int
  patch_size: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    x = torch_patch_embedding(images, self.hidden_size, self.patch_size, self.dtype)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    x = x + self.param('pos_embedding', NORMAL_02, (1, x.shape[1], x.shape[2])).astype(x.dtype)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class TalkingHeadAttention(nn.Module):
  """Token mixer: self-attention whose logits and weights are each mixed across heads by a linear layer."""

  num_heads: int
  attention_dropout_rate: float = 0.0
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  kernels: str = REFERENCE

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    batch, tokens, width = x.shape
    qkv = _dense(3 * width, self.dtype, self.kernels, 'qkv')(x).reshape(batch, tokens, 3, width)
    q, k, v = (_split_heads(qkv[:, :, i], self.num_heads) for i in range(3))
    logits = jnp.einsum('bhqd,bhkd->bqkh', q * (width // self.num_heads) ** -0.5, k)
    logits = _dense(self.num_heads, self.dtype, self.kernels, 'proj_l')(logits)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=2).astype(v.dtype)
    weights = _dense(self.num_heads, self.dtype, self.kernels, 'proj_w')(weights)
    weights = nn.Dropout(self.attention_dropout_rate)(weights, deterministic=not train)
    y = jnp.einsum('bqkh,bhkd->bqhd', weights, v).reshape(batch, tokens, width)
    y = _dense(width, self.dtype, self.kernels, 'proj')(y)
    return nn.Dropout(self.dropout_rate)(y, deterministic=not train)


class ClassAttention(nn.Module):
  """The class token (position 0 of x) attends to every token: [B, N, C] -> [B, 1, C]."""

  num_heads: int
  dtype: Any = jnp.float32
  kernels: str = REFERENCE

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    q = _split_heads(_dense(width, self.dtype, self.kernels, 'q')(x[:, :1]), self.num_heads)
    k = _split_heads(_dense(width, self.dtype, self.kernels, 'k')(x), self.num_heads)
    v = _split_heads(_dense(width, self.dtype, self.kernels, 'v')(x), self.num_heads)
    logits = jnp.einsum('bhqd,bhkd->bhqk', q * (width // self.num_heads) ** -0.5, k)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    y = jnp.einsum('bhqk,bhkd->bqhd', weights, v).reshape(x.shape[0], 1, width)
    return _dense(width, self.dtype, self.kernels, 'proj')(y)


class ClassAttentionBlock(nn.Module):
  """cls + gamma_1 * ClassAttention(LN([cls, x])), then cls + gamma_2 * Mlp(LN(cls)): [B, 1, C]."""

  num_heads: int
  mlp_dim: int
  layer_scale_init: float
  dtype: Any = jnp.float32
  kernels: str = REFERENCE

  @nn.compact
  def __call__(self, x: jax.Array, cls: jax.Array, train: bool = False) -> jax.Array:
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=name)
    y = ClassAttention(self.num_heads, self.dtype, self.kernels, name='attention')(
      norm('norm1')(jnp.concatenate([cls, x], 1))
    )
    cls = cls + LayerScale(self.layer_scale_init, name='ls1')(y)
    y = MlpBlock(
      self.mlp_dim,
      approximate_gelu=False,
      kernel_init=NORMAL_02,
      bias_init=ZEROS,
      dtype=self.dtype,
      kernels=self.kernels,
      name='mlp',
    )(norm('norm2')(cls), train=train)
    return cls + LayerScale(self.layer_scale_init, name='ls2')(y)


class ClassAttentionHead(nn.Module):
  """class token -> `class_depth` class-attention blocks over the patches -> norm -> linear."""

  num_classes: int
  num_heads: int
  mlp_dim: int
  layer_scale_init: float
  class_depth: int = 2
  dtype: Any = jnp.float32
  kernels: str = REFERENCE

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    cls = jnp.tile(self.param('cls', NORMAL_02, (1, 1, x.shape[-1])).astype(x.dtype), (x.shape[0], 1, 1))
    for i in range(self.class_depth):
      cls = ClassAttentionBlock(
        self.num_heads, self.mlp_dim, self.layer_scale_init, self.dtype, self.kernels, name=f'class_block_{i}'
      )(x, cls, train)
    # timm norms [cls, x] and takes token 0; LayerNorm is per token, so norming cls alone is the same.
    pooled = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name='final_norm')(cls)[:, 0]
    keep_feature(self, PRE_LOGITS + '_out', pooled)
    return Dense(
      self.num_classes, kernel_init=NORMAL_02, bias_init=ZEROS, dtype=self.dtype, kernels=self.kernels, name='head'
    )(pooled)


def cait(
  num_classes: int,
  *,
  hidden_size: int,
  depth: int,
  num_heads: int,
  patch_size: int,
  mlp_ratio: int = 4,
  layer_scale_init: Optional[float] = None,
  class_depth: int = 2,
  drop_path_rate: float = 0.0,
  dropout_rate: float = 0.0,
  attention_dropout_rate: float = 0.0,
  remat: bool = False,
  remat_policy: str = 'nothing_saveable',
  scan: bool = False,
  dtype: Any = jnp.float32,
  kernels: str = REFERENCE,
) -> Isotropic:
  """A CaiT; `layer_scale_init=None` (an unpublished shape) takes 1e-5 up to 24 blocks, else 1e-6 (timm's
  cait_*36 and deeper)."""
  if layer_scale_init is None:
    layer_scale_init = 1e-5 if depth <= 24 else 1e-6
  norm = functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=dtype)
  block = functools.partial(
    MixingBlock,
    norm=norm,
    layer_scale_init=layer_scale_init,
    token_mixer=functools.partial(
      TalkingHeadAttention, num_heads, attention_dropout_rate, dropout_rate, dtype, kernels
    ),
    channel_mixer=functools.partial(
      MlpBlock,
      mlp_ratio * hidden_size,
      dropout_rate=dropout_rate,
      approximate_gelu=False,
      kernel_init=NORMAL_02,
      bias_init=ZEROS,
      dtype=dtype,
      kernels=kernels,
    ),
  )
  head = ClassAttentionHead(
    num_classes, num_heads, mlp_ratio * hidden_size, layer_scale_init, class_depth, dtype=dtype, kernels=kernels
  )
  return Isotropic(
    CaiTStem(hidden_size, patch_size, dropout_rate, dtype=dtype),
    block,
    head,
    depth,
    drop_path_rate=drop_path_rate,
    drop_path_schedule='constant',
    remat=remat,
    remat_policy=remat_policy,
    scan=scan,
    dtype=dtype,
  )


# --- weight files ----------------------------------------------------------------------------------------------


def _timm_block(state: Tensors, b: str, attention: str, attention_layers: tuple, mlp: str) -> dict:
  """A CaiT block (blocks.i or blocks_token_only.i): norm1, attn, gamma_1, norm2, mlp, gamma_2."""
  return {
    'norm1': convert.norm(state, f'{b}.norm1'),
    'norm2': convert.norm(state, f'{b}.norm2'),
    attention: {name: convert.linear(state, f'{b}.attn.{name}') for name in attention_layers},
    mlp: {'Dense_0': convert.linear(state, f'{b}.mlp.fc1'), 'Dense_1': convert.linear(state, f'{b}.mlp.fc2')},
    'ls1': {'scale': state[f'{b}.gamma_1']},
    'ls2': {'scale': state[f'{b}.gamma_2']},
  }


def timm_params(state: Tensors) -> dict:
  """A timm Cait's state dict -> isojax's parameters."""
  params: dict[str, Any] = {
    'stem': {'patch_embed': convert.patch_embedding(state, 'patch_embed.proj'), 'pos_embedding': state['pos_embed']},
    'cls': state['cls_token'],
  }
  for i in range(convert.block_count(state, r'blocks\.(\d+)\.')):
    params[f'block_{i}'] = _timm_block(
      state, f'blocks.{i}', 'token_mixing', ('qkv', 'proj_l', 'proj_w', 'proj'), 'channel_mixing'
    )
  for i in range(convert.block_count(state, r'blocks_token_only\.(\d+)\.')):
    params[f'class_block_{i}'] = _timm_block(
      state, f'blocks_token_only.{i}', 'attention', ('q', 'k', 'v', 'proj'), 'mlp'
    )
  return convert.timm_head(state, params)


def from_timm(state: Tensors) -> Weights:
  """A timm `cait_*` state dict -> `Weights`."""
  variables = convert.read_all(state, lambda s: {'params': timm_params(s)}, 'timm cait')
  embed = state['patch_embed.proj.weight']
  width, patch = int(embed.shape[0]), convert.square_patch(*embed.shape[2:])
  fields = dict(
    hidden_size=width,
    depth=convert.block_count(state, r'blocks\.(\d+)\.'),
    num_heads=int(state['blocks.0.attn.proj_l.weight'].shape[0]),  # talking heads show the heads
    patch_size=patch,
    mlp_ratio=int(state['blocks.0.mlp.fc1.weight'].shape[0]) // width,
    class_depth=convert.block_count(state, r'blocks_token_only\.(\d+)\.'),
    layer_scale_init=1e-5,
  )  # the loaded gammas replace it
  image_size = patch * convert.grid_side(int(state['pos_embed'].shape[1]), 'The position embedding')
  return Weights(variables, 'cait', fields, convert.classes(state), image_size, {}, int(embed.shape[1]))


def _is_timm_cait(state: Tensors) -> bool:
  return convert.has_key(state, 'blocks_token_only.')


FAMILY = Family.named('cait', cait, NAMES, VARIANTS, SOURCE, readers={TIMM: Reader(_is_timm_cait, from_timm)})
