"""Reference ViT and MLP-Mixer in the official (google-research/vision_transformer) structure.

Written from the papers with the published parameter names, using flax's stock modules
(separate query/key/value attention, tanh-approximate GELU, LayerNorm epsilon 1e-6): the
implementation whose exported `.npz` isojax must reproduce to float32 precision.
"""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp


class MlpBlock(nn.Module):
  mlp_dim: int

  @nn.compact
  def __call__(self, x):
    y = nn.gelu(nn.Dense(self.mlp_dim, name='Dense_0')(x))
    return nn.Dense(x.shape[-1], name='Dense_1')(y)


class Encoder1DBlock(nn.Module):
  mlp_dim: int
  num_heads: int
  per_type_names: bool = False   # big_vision numbering (LayerNorm_1, MlpBlock_0) instead of one counter

  @nn.compact
  def __call__(self, x):
    n = (0, 0, 1, 0) if self.per_type_names else (0, 1, 2, 3)
    y = nn.LayerNorm(epsilon=1e-6, name=f'LayerNorm_{n[0]}')(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name=f'MultiHeadDotProductAttention_{n[1]}')(y, y)
    x = x + y
    y = nn.LayerNorm(epsilon=1e-6, name=f'LayerNorm_{n[2]}')(x)
    return x + MlpBlock(self.mlp_dim, name=f'MlpBlock_{n[3]}')(y)


class AddPositionEmbs(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x + self.param('pos_embedding', nn.initializers.normal(0.02), (1,) + x.shape[1:])


class Encoder(nn.Module):
  depth: int
  mlp_dim: int
  num_heads: int
  per_type_names: bool = False

  @nn.compact
  def __call__(self, x):
    x = AddPositionEmbs(name='posembed_input')(x)
    for i in range(self.depth):
      x = Encoder1DBlock(self.mlp_dim, self.num_heads, self.per_type_names, name=f'encoderblock_{i}')(x)
    return nn.LayerNorm(epsilon=1e-6, name='encoder_norm')(x)


class OfficialViT(nn.Module):
  num_classes: int
  patch_size: int
  hidden_size: int
  depth: int
  mlp_dim: int
  num_heads: int
  classifier: str = 'token'
  representation_size: Optional[int] = None
  per_type_names: bool = False

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding='VALID', name='embedding')(x)
    n, h, w, c = x.shape
    x = x.reshape(n, h * w, c)
    if self.classifier == 'token':
      cls = self.param('cls', nn.initializers.normal(0.02), (1, 1, c))
      x = jnp.concatenate([jnp.tile(cls, (n, 1, 1)), x], axis=1)
    encoder = Encoder(self.depth, self.mlp_dim, self.num_heads, self.per_type_names, name='Transformer')
    x = encoder(x)
    x = x[:, 0] if self.classifier == 'token' else x.mean(axis=1)
    if self.representation_size:
      x = jnp.tanh(nn.Dense(self.representation_size, name='pre_logits')(x))
    return nn.Dense(self.num_classes, name='head', kernel_init=nn.initializers.normal(0.5))(x)


class MixerBlock(nn.Module):
  tokens_mlp_dim: int
  channels_mlp_dim: int

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm(epsilon=1e-6, name='LayerNorm_0')(x)
    y = jnp.swapaxes(MlpBlock(self.tokens_mlp_dim, name='token_mixing')(jnp.swapaxes(y, 1, 2)), 1, 2)
    x = x + y
    y = nn.LayerNorm(epsilon=1e-6, name='LayerNorm_1')(x)
    return x + MlpBlock(self.channels_mlp_dim, name='channel_mixing')(y)


class OfficialMixer(nn.Module):
  num_classes: int
  patch_size: int
  hidden_size: int
  depth: int
  tokens_mlp_dim: int
  channels_mlp_dim: int

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), name='stem')(x)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    for i in range(self.depth):
      x = MixerBlock(self.tokens_mlp_dim, self.channels_mlp_dim, name=f'MixerBlock_{i}')(x)
    x = nn.LayerNorm(epsilon=1e-6, name='pre_head_layer_norm')(x).mean(axis=1)
    return nn.Dense(self.num_classes, name='head', kernel_init=nn.initializers.normal(0.5))(x)
