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
import numpy as np

from isojax.core.config import REMAT_POLICIES
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


SCANNED = 'blocks'  # the stacked blocks' scope under `scan=True`; unrolled, they are block_0 ... block_{depth-1}


def remat_policy(name: str) -> Callable[..., bool]:
  """The `jax.checkpoint_policies` policy called `name`, or a ValueError listing the ones a config may name."""
  if name not in REMAT_POLICIES:
    raise ValueError(f'Unknown remat_policy {name!r}; expected one of {REMAT_POLICIES} (jax.checkpoint_policies).')
  return getattr(jax.checkpoint_policies, name)


def _rematerialised(block: ModuleDef, policy: str, static_argnums: tuple[int, ...], scanned: bool) -> ModuleDef:
  """`block` (a Module class or a functools.partial of one) recomputed in the backward pass, keeping what
  `policy` saves. Under scan, as big_vision's Encoder (vit.py l.130-135): `prevent_cse=False`, which scan's loop
  makes safe and which lets XLA fuse the recomputation."""
  if isinstance(block, functools.partial):
    inner = _rematerialised(block.func, policy, static_argnums, scanned)
    return functools.partial(inner, *block.args, **block.keywords)
  return nn.remat(block, static_argnums=static_argnums, policy=remat_policy(policy), prevent_cse=not scanned)


class ScanStep(nn.Module):
  """`nn.scan`'s body: one block of the stack, sharing this module's scope, so that the stacked parameters keep
  the block's own names (`blocks/norm1/scale`, a leading depth axis). Its drop-path rate is this layer's slice of
  `rates`, or `rate` when every layer has the same one; it returns the block's output as the carry and, when
  the caller keeps features, as the layer's output."""

  block: ModuleDef
  rate: float = 0.0
  keep_outputs: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, rates: Optional[jax.Array], train: bool) -> tuple[jax.Array, Any]:
    block = self.block(drop_path_rate=self.rate if rates is None else rates)
    nn.share_scope(self, block)
    x = block(x, train)
    return x, (x if self.keep_outputs else None)


class Isotropic(nn.Module):
  """stem -> depth x block (same shape in, same shape out) -> head (norm, pool, classifier).

  A family supplies all three. `block(drop_path_rate=r, name='block_i')` must build a module
  called as `(x, train)` that keeps x's shape; stochastic depth grows linearly over the blocks
  (DeiT / timm's ViT) or, with drop_path_schedule='constant', is the same in all. Tokens are
  [batch, tokens, width] (ViT, Mixer) or [batch, h, w, width] (ConvMixer); the skeleton does not care which.

  `scan=True` runs the blocks under `nn.scan` (big_vision's `scan=True`, vit.py l.129-148): one traced block,
  so compile time does not grow with depth, and parameters (and BatchNorm statistics) stacked under `blocks`
  with a leading depth axis, as big_vision stacks `encoderblock`. `stack_blocks` / `unstack_blocks` convert
  between the layouts; the computation is the same, the dropout and drop-path draws are not (scan splits
  the keys per layer). `remat` recomputes each block in the backward pass, keeping what `remat_policy` saves.
  """

  stem: nn.Module
  block: ModuleDef
  pooling_head: nn.Module
  depth: int
  drop_path_rate: float = 0.0
  drop_path_schedule: str = 'linear'  # or 'constant': the same rate in every block (timm's MlpMixer, ResMLP)
  remat: bool = False
  remat_policy: str = 'nothing_saveable'
  scan: bool = False
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
    x = self._scanned(x, train) if self.scan else self._unrolled(x, train)
    nn.share_scope(self, self.pooling_head)  # the head's layers are the model's top-level names
    return self.pooling_head(x, train=train).astype(jnp.float32)

  def _rates(self) -> list[float]:
    """Each block's drop-path rate."""
    ramp = lambda i: i / max(self.depth - 1, 1) if self.drop_path_schedule == 'linear' else 1.0
    return [self.drop_path_rate * ramp(i) for i in range(self.depth)]

  def _unrolled(self, x: jax.Array, train: bool) -> jax.Array:
    block = _rematerialised(self.block, self.remat_policy, (2,), False) if self.remat else self.block
    for i, rate in enumerate(self._rates()):
      x = block(drop_path_rate=rate, name=f'block_{i}')(x, train)
      _keep(self, f'block{i:02d}', x)  # big_vision's names for block outputs
    return x

  def _scanned(self, x: jax.Array, train: bool) -> jax.Array:
    rates = self._rates()
    uniform = len(set(rates)) == 1
    step = _rematerialised(ScanStep, self.remat_policy, (3,), True) if self.remat else ScanStep
    keep = self.is_mutable_collection(FEATURES) and not self.is_initializing()
    stack = nn.scan(
      step,
      variable_axes={'params': 0, 'batch_stats': 0},
      split_rngs={'params': True, 'dropout': True},
      in_axes=(0, nn.broadcast),
      length=self.depth,
    )
    x, outputs = stack(self.block, rates[0] if uniform else 0.0, keep, name=SCANNED)(
      x, None if uniform else jnp.asarray(rates, jnp.float32), train
    )
    for i in range(self.depth if keep else 0):
      _keep(self, f'block{i:02d}', outputs[i])
    return x


def stack_blocks(variables: dict) -> dict:
  """Unrolled variables (`block_0` ... `block_{depth-1}` in each collection) -> the `scan=True` layout: one
  `blocks` tree whose arrays have a leading depth axis (big_vision vit.py `pyloop_to_scan`, l.363-386)."""
  out = {}
  for collection, tree in variables.items():
    tree = dict(tree)
    depth = sum(1 for k in tree if k.startswith('block_') and k[len('block_') :].isdigit())
    if depth:
      layers = [tree.pop(f'block_{i}') for i in range(depth)]
      tree[SCANNED] = jax.tree.map(lambda *a: np.stack([np.asarray(x) for x in a]), *layers)
    out[collection] = tree
  return out


def unstack_blocks(variables: dict) -> dict:
  """The `scan=True` layout -> unrolled `block_{i}` trees, each the i-th slice (big_vision `scan_to_pyloop`)."""
  out = {}
  for collection, tree in variables.items():
    tree = dict(tree)
    if SCANNED in tree:
      stacked = tree.pop(SCANNED)
      depth = len(jax.tree.leaves(stacked)[0])
      for i in range(depth):
        tree[f'block_{i}'] = jax.tree.map(lambda a, i=i: np.asarray(a)[i], stacked)
    out[collection] = tree
  return out


def is_scanned(variables: dict) -> bool:
  """Whether `variables` (or abstract shapes of them) are in the `scan=True` layout."""
  return SCANNED in variables.get('params', {})


def blocks_like(variables: dict, target: dict) -> dict:
  """`variables` in `target`'s block layout (stacked or unrolled), converted where the two differ."""
  if is_scanned(target) and not is_scanned(variables):
    return stack_blocks(variables)
  if is_scanned(variables) and not is_scanned(target):
    return unstack_blocks(variables)
  return variables


def unrolled(model: nn.Module, variables: dict) -> tuple[nn.Module, dict]:
  """(model, variables) with the blocks unrolled: what per-block tools (attention maps, exports) read."""
  if isinstance(model, Isotropic) and model.scan:
    return model.clone(scan=False), unstack_blocks(variables)
  return model, variables
