"""The isotropic skeleton every family shares.

    images -> stem -> depth x block (same shape in, same shape out)
           -> head: final norm -> pool -> [pre-logits] -> classifier

A family supplies the stem, the block and the head (MetaFormer-style). Most blocks are a
`MixingBlock`: token mixing then channel mixing, two pre-normed residual branches (ViT,
Mixer, ResMLP, ConvMixer), so a family there is just its two mixers; a family whose block
is shaped otherwise (gMLP's spatial gating unit, ConvNeXt's single residual) supplies
its own block module. Most heads are a `PoolingHead`. A new family is one file plus one
line in registry.py (models/family.py says what the file declares).

Features on request: `features(model, variables, images)` returns the logits and every
block's output (`block00`, `block01`, ...) plus the vector the head sees (`pre_logits`), for probes and
attention maps without model surgery; a plain `apply` computes and keeps none of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from isojax.kernels import REFERENCE
from isojax.models.layers import FEATURES, PRE_LOGITS, ZEROS, Dense, DropPath, Initializer, LayerScale, MAPHead
from isojax.models.layers import keep_feature as _keep

ModuleDef = Callable[..., nn.Module]
POOLS = ('token', 'gap', 'map')
DROP_PATH_SCHEDULES = ('linear', 'constant')


def features(
  model: nn.Module, variables: Any, images: jax.Array, train: bool = False, **apply_kwargs: Any
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(logits, {'block00': ..., 'block{depth-1:02d}': ..., 'pre_logits': [batch, width]}); features a submodule
  keeps are named by its path ('stem/backbone/stage1': the hybrid's ResNet stages)."""
  logits, state = model.apply(variables, images, train=train, mutable=[FEATURES], **apply_kwargs)
  kept = flax.traverse_util.flatten_dict(dict(state.get(FEATURES, {})), sep='/')
  return logits, {k.removesuffix('_out'): v[0] for k, v in kept.items()}


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
  drop_path_scale: bool = True  # DropPath.scale: timm's 1 / (1 - rate), or big_vision's Mixer without

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
    x = x + DropPath(self.drop_path_rate, self.drop_path_scale)(y, train=train)
    y = branch(x, self.channel_mixer, 'norm2', 'channel_mixing', 'ls2')
    if self.channel_residual:
      return x + DropPath(self.drop_path_rate, self.drop_path_scale)(y, train=train)
    return y


class PoolingHead(nn.Module):
  """final norm -> pool -> [tanh pre-logits] -> linear classifier.

  The skeleton shares its scope with the model (`nn.share_scope`), so its layers keep the
  top-level names of the published checkpoints: `final_norm`, `map_head`, `pre_logits`, `head`.
  """

  num_classes: int
  norm: Optional[ModuleDef] = None
  norm_after_pool: bool = False  # timm's fc_norm: normalise the pooled vector instead
  pool: str = 'gap'
  map_heads: int = 1
  map_mlp_dim: Optional[int] = None  # big_vision's MAP head uses the encoder's MLP width (vit.py l.238)
  representation_size: Optional[int] = None
  approximate_gelu: bool = True
  # Zero heads as in vision_transformer; a family whose source starts its head otherwise
  # (ConvMixer: PyTorch's nn.Linear) passes its own.
  kernel_init: Initializer = ZEROS
  bias_init: Initializer = ZEROS
  dtype: Any = jnp.float32
  kernels: str = REFERENCE

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.pool not in POOLS:
      raise ValueError(f'Unknown pool/classifier {self.pool!r}; expected one of {POOLS}.')
    if self.norm is not None and not self.norm_after_pool:
      x = self.norm(name='final_norm')(x)
    if self.pool == 'token':
      x = x[:, 0]
    elif self.pool == 'map':
      x = MAPHead(
        num_heads=self.map_heads,
        mlp_dim=self.map_mlp_dim,
        approximate_gelu=self.approximate_gelu,
        dtype=self.dtype,
        kernels=self.kernels,
        name='map_head',
      )(x.reshape(x.shape[0], -1, x.shape[-1]))
    else:
      x = x.mean(axis=tuple(range(1, x.ndim - 1)))
    if self.norm is not None and self.norm_after_pool:
      x = self.norm(name='final_norm')(x)
    if self.representation_size is not None:
      x = jnp.tanh(Dense(self.representation_size, dtype=self.dtype, kernels=self.kernels, name='pre_logits')(x))
    _keep(self, PRE_LOGITS + '_out', x)  # '_out': 'pre_logits' is the Dense layer's scope
    return Dense(
      self.num_classes,
      dtype=self.dtype,
      name='head',
      kernel_init=self.kernel_init,
      bias_init=self.bias_init,
      kernels=self.kernels,
    )(x)


def _rematerialised(block: ModuleDef) -> ModuleDef:
  """`block` (a Module class or a functools.partial of one) recomputed in the backward pass."""
  if isinstance(block, functools.partial):
    return functools.partial(_rematerialised(block.func), *block.args, **block.keywords)
  return nn.remat(block, static_argnums=(2,))  # (self, x, train): train is static


class Isotropic(nn.Module):
  """stem -> depth x block (same shape in, same shape out) -> head (norm, pool, classifier).

  A family supplies all three. `block(drop_path_rate=r, name='block_i')` must build a module
  called as `(x, train)` that keeps x's shape; stochastic depth grows linearly over the blocks
  (DeiT / timm's ViT) or, with drop_path_schedule='constant', is the same in all. Tokens are
  [batch, tokens, width] (ViT, Mixer) or [batch, h, w, width] (ConvMixer); the skeleton does not care which.
  """

  stem: nn.Module
  block: ModuleDef
  pooling_head: nn.Module
  depth: int
  drop_path_rate: float = 0.0
  drop_path_schedule: str = 'linear'  # or 'constant': the same rate in every block (timm's MlpMixer, ResMLP)
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if images.ndim != 4:
      raise ValueError(f'Expected images as [batch, height, width, channels], got shape {images.shape}.')
    if self.drop_path_schedule not in DROP_PATH_SCHEDULES:
      raise ValueError(
        f'Unknown drop_path_schedule {self.drop_path_schedule!r}; expected one of {DROP_PATH_SCHEDULES}.'
      )
    x = self.stem(images.astype(self.dtype), train=train)
    block = _rematerialised(self.block) if self.remat else self.block
    for i in range(self.depth):
      ramp = i / max(self.depth - 1, 1) if self.drop_path_schedule == 'linear' else 1.0
      rate = self.drop_path_rate * ramp
      x = block(drop_path_rate=rate, name=f'block_{i}')(x, train)
      _keep(self, f'block{i:02d}', x)  # big_vision's names for block outputs
    nn.share_scope(self, self.pooling_head)  # the head's layers are the model's top-level names
    return self.pooling_head(x, train=train).astype(jnp.float32)
