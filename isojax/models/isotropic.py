"""The isotropic skeleton every family shares.

    images -> stem -> depth x MixingBlock (same shape in, same shape out)
           -> final norm -> pool -> [pre-logits] -> head

A family is a stem plus a token mixer and a channel mixer; see vit.py, mixer.py
and convmixer.py. A new family (pooling mixer, gMLP, ResMLP) is one small file
that builds an `Isotropic` from its own mixers.

Features on request: `features(model, variables, images)` returns the logits and every
block's output (`block00`, `block01`, ...) plus the vector the head sees (`pre_logits`), for probes and
attention maps without model surgery; a plain `apply` computes and keeps none of them.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from isojax.models.layers import FEATURES, PRE_LOGITS, ZEROS, Dense, DropPath, Initializer, LayerScale, MAPHead
from isojax.models.layers import keep_feature as _keep

ModuleDef = Callable[..., nn.Module]
POOLS = ('token', 'gap', 'map')
def features(model: nn.Module, variables: dict, images: jax.Array,
             train: bool = False, **apply_kwargs: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(logits, {'block00': ..., 'block{depth-1:02d}': ..., 'pre_logits': [batch, width]})."""
  logits, state = model.apply(variables, images, train=train, mutable=[FEATURES], **apply_kwargs)
  return logits, {k.removesuffix('_out'): v[0] for k, v in state.get(FEATURES, {}).items()}


class MixingBlock(nn.Module):
  """Token mixing then channel mixing, each an (optionally pre-normed) residual branch.

  `norm=None` is for mixers that normalise their own output (ConvMixer's BatchNorm);
  `channel_residual=False` is ConvMixer's pointwise convolution, which has no skip.
  """
  token_mixer: ModuleDef
  channel_mixer: ModuleDef
  norm: Optional[ModuleDef] = None
  channel_residual: bool = True
  drop_path_rate: float = 0.0
  layer_scale_init: Optional[float] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    def branch(y, mixer, norm_name, mixer_name, scale_name):
      if self.norm is not None:
        y = self.norm(name=norm_name)(y)
      y = mixer(name=mixer_name)(y, train=train)
      if self.layer_scale_init is not None:
        y = LayerScale(self.layer_scale_init, name=scale_name)(y)
      return y

    y = branch(x, self.token_mixer, 'norm1', 'token_mixing', 'ls1')
    x = x + DropPath(self.drop_path_rate)(y, train=train)
    y = branch(x, self.channel_mixer, 'norm2', 'channel_mixing', 'ls2')
    if self.channel_residual:
      return x + DropPath(self.drop_path_rate)(y, train=train)
    return y


class Isotropic(nn.Module):
  """stem -> N same-shape blocks -> norm -> pool -> head.

  Tokens are [batch, tokens, width] (ViT, Mixer) or [batch, h, w, width] (ConvMixer);
  the skeleton is agnostic: 'gap' averages every axis but batch and width.
  """
  num_classes: int
  depth: int
  stem: nn.Module
  token_mixer: ModuleDef
  channel_mixer: ModuleDef
  block_norm: Optional[ModuleDef] = None
  channel_residual: bool = True
  final_norm: Optional[ModuleDef] = None
  norm_after_pool: bool = False     # timm's fc_norm: normalise the pooled vector instead
  pool: str = 'gap'
  map_heads: int = 1
  map_mlp_dim: Optional[int] = None   # big_vision's MAP head uses the encoder's MLP width (vit.py l.238)
  representation_size: Optional[int] = None
  drop_path_rate: float = 0.0
  layer_scale_init: Optional[float] = None
  remat: bool = False
  approximate_gelu: bool = True
  # Zero heads as in vision_transformer; a family whose source starts its head otherwise
  # (ConvMixer: PyTorch's nn.Linear) passes its own.
  head_kernel_init: Initializer = ZEROS
  head_bias_init: Initializer = ZEROS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if self.pool not in POOLS:
      raise ValueError(f'Unknown pool/classifier {self.pool!r}; expected one of {POOLS}.')
    if images.ndim != 4:
      raise ValueError(f'Expected images as [batch, height, width, channels], got shape {images.shape}.')
    x = self.stem(images.astype(self.dtype), train=train)
    block = nn.remat(MixingBlock, static_argnums=(2,)) if self.remat else MixingBlock
    for i in range(self.depth):
      # Stochastic depth grows linearly with depth (DeiT / timm convention).
      rate = self.drop_path_rate * i / max(self.depth - 1, 1)
      x = block(token_mixer=self.token_mixer, channel_mixer=self.channel_mixer,
                norm=self.block_norm, channel_residual=self.channel_residual,
                drop_path_rate=rate, layer_scale_init=self.layer_scale_init,
                name=f'block_{i}')(x, train)
      _keep(self, f'block{i:02d}', x)   # big_vision's names for block outputs
    if self.final_norm is not None and not self.norm_after_pool:
      x = self.final_norm(name='final_norm')(x)
    if self.pool == 'token':
      x = x[:, 0]
    elif self.pool == 'map':
      x = MAPHead(num_heads=self.map_heads, mlp_dim=self.map_mlp_dim, approximate_gelu=self.approximate_gelu,
                  dtype=self.dtype, name='map_head')(x.reshape(x.shape[0], -1, x.shape[-1]))
    else:
      x = x.mean(axis=tuple(range(1, x.ndim - 1)))
    if self.final_norm is not None and self.norm_after_pool:
      x = self.final_norm(name='final_norm')(x)
    if self.representation_size is not None:
      x = jnp.tanh(Dense(self.representation_size, dtype=self.dtype, name='pre_logits')(x))
    _keep(self, PRE_LOGITS + '_out', x)   # '_out': 'pre_logits' is the Dense layer's scope
    logits = Dense(self.num_classes, dtype=self.dtype, name='head', kernel_init=self.head_kernel_init,
                   bias_init=self.head_bias_init)(x)
    return logits.astype(jnp.float32)
