"""Hybrid ViT (Dosovitskiy et al. 2020, section 3.1): a ResNet's feature map, cut into 1x1 patches, feeds
a ViT. The stem is a pyramid, the body isotropic: the skeleton's stem is simply a bigger module.

Follows google-research/vision_transformer at c6de1e5:
- vit_jax/models_vit.py l.230-260: a root (`conv_root` StdConv 7x7/2, `gn_root` GroupNorm, ReLU, 3x3/2
  max pool, 'SAME' padding) then `ResNetStage`s `block1..` (first stride 1, then 2; widths 64, 128, ...
  x width_factor); the `embedding` convolution with the (1x1) patches; the ViT of models_vit.py on top;
- vit_jax/models_resnet.py: `StdConv` standardises each filter as (w - mean) / (std + 1e-5) (l.23-27:
  the biased std plus eps, not timm's rsqrt(var + eps)); `ResidualUnit` (l.42-89) is a post-activation
  bottleneck (conv1 1x1 -> gn1 ReLU -> conv2 3x3 strided -> gn2 ReLU -> conv3 1x1 -> gn3, ReLU of the
  sum) with a `conv_proj`/`gn_proj` shortcut when the shape changes, `gn3`'s scale starting at zero;
  flax's GroupNorm defaults (32 groups, eps 1e-6) and nn.Conv's lecun-normal kernels;
- vit_jax/configs/models.py l.269-332: R50+ViT-B/16 is ViT-B/16 on stages (3, 4, 9) with dropout 0.1
  (`get_r50_b16_config`), R26+ViT-{S,B}/32 on (2, 2, 2, 2), R50+ViT-L/32 on (3, 4, 6, 3). The name's
  patch is the effective one: 4 x 2^(stages - 1) x the embedding's patch.

In isojax's layout the ResNet is `stem/backbone/...`; the official `.npz` files (R50+ViT-B_16.npz) load
by `isojax.weights.pretrained.create` with the source's logits (tests/test_official_weights.py): the ViT's
arrays as vit.py reads them, the ResNet's (`conv_root`, `gn_root`, `block{s}/unit{u}/{conv,gn}{1,2,3,_proj}`)
moved under `stem/backbone`; its stages are counted from the units, its width from `conv_root`, and the image
size is the position embedding's grid times the ResNet's stride (4 x 2^(stages - 1)) times the patch.

Names: `R50+ViT-B/16`, `R26+ViT-S/32`, `R26+ViT-B/32`, `R50+ViT-L/32`; others `Rs{stages}-w{root width}+ViT-...`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from isojax.kernels import REFERENCE
from isojax.models import convert
from isojax.models import vit as _vit
from isojax.models.convert import NPZ, KeyTracker, Reader, Tensors, Weights
from isojax.models.family import Family
from isojax.models.isotropic import Isotropic
from isojax.models.layers import LECUN, keep_feature

# (R depth, effective patch) -> stages: vision_transformer configs/models.py l.280, 298, 312, 326
RESNET_STAGES = {(50, 16): (3, 4, 9), (26, 32): (2, 2, 2, 2), (50, 32): (3, 4, 6, 3)}


def _fields(depth: int, size: str, patch: int) -> dict:
  return dict(resnet_stages=RESNET_STAGES[(depth, patch)], width_factor=1, **_vit.SIZES[size], patch_size=1)


def _published(name: str, dropout_rate: float) -> dict:
  match = re.match(r'R(\d+)\+ViT-(\w+)/(\d+)', name)
  assert match is not None, name
  depth, size, patch = match.groups()
  return dict(_fields(int(depth), size, int(patch)), dropout_rate=dropout_rate)


# dropout: configs/models.py l.273 (R50+ViT-B/16); l.142 (ViT-L/16's, which R50+ViT-L/32 inherits)
VARIANTS = {
  name: _published(name, dropout)
  for name, dropout in (('R50+ViT-B/16', 0.1), ('R26+ViT-S/32', 0.0), ('R26+ViT-B/32', 0.0), ('R50+ViT-L/32', 0.1))
}
SOURCE = (
  'google-research/vision_transformer vit_jax/models_vit.py l.230-260 (hybrid root and stages), '
  'models_resnet.py (StdConv, ResidualUnit), configs/models.py get_r50_b16_config'
)
_PUBLISHED_NAME = re.compile(r'^r(?P<depth>\d+)\+vit[-_]?(?P<size>ti|s|m|b|l|h)[/_-]?(?P<patch>\d+)$', re.IGNORECASE)
_NAME = re.compile(r'^rs(?P<stages>\d+(?:\.\d+)*)?-w(?P<width>\d+)\+(?P<vit>.+)$', re.IGNORECASE)


def parse_name(name: str) -> Optional[dict]:
  """The architecture a hybrid name fixes, or None when `name` is not one.

  Published names give the effective patch (`R50+ViT-B/16`: stages (3, 4, 9) under 1x1 patches); any other
  hybrid is `Rs{units per stage, dot-separated}-w{root width}+{ViT name with the embedding's patch}`, e.g.
  `Rs1.1-w32+ViT-32x2/1`."""
  name = name.strip()
  match = _PUBLISHED_NAME.match(name)
  if match:
    if (int(match['depth']), int(match['patch'])) not in RESNET_STAGES:
      return None
    size = next(k for k in _vit.SIZES if k.lower() == match['size'].lower())
    return _fields(int(match['depth']), size, int(match['patch']))
  match = _NAME.match(name)
  body = match and _vit.NAMES.parse(match['vit'])
  if not match or not body:
    return None
  stages = tuple(int(u) for u in match['stages'].split('.')) if match['stages'] else ()
  return dict(resnet_stages=stages, width_factor=int(match['width']) / 64, **body)


def format_name(arch) -> str:
  stages, root = tuple(arch['resnet_stages']), round(64 * arch.get('width_factor', 1))
  published = [key for key, value in RESNET_STAGES.items() if value == stages]
  if published and root == 64 and arch['patch_size'] == 1:
    name = f'R{published[0][0]}+' + _vit.NAMES.format(dict(arch, patch_size=published[0][1]))
    if parse_name(name) is not None:  # a lettered ViT size
      return name
  return f'Rs{".".join(map(str, stages))}-w{root}+' + _vit.NAMES.format(arch)


def weight_standardize(kernel: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Each output filter to zero mean and unit std over its inputs and window: (w - mean) / (std + eps)."""
  kernel = kernel - kernel.mean(axis=(0, 1, 2), keepdims=True)
  return kernel / (kernel.std(axis=(0, 1, 2), keepdims=True) + eps)


class StdConv(nn.Module):
  """A weight-standardised convolution, no bias, 'SAME' padding (vision_transformer's StdConv)."""

  features: int
  kernel_size: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = weight_standardize(self.param('kernel', LECUN, (k, k, x.shape[-1], self.features)))
    return jax.lax.conv_general_dilated(
      x.astype(self.dtype),
      kernel.astype(self.dtype),
      (self.stride,) * 2,
      'SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )


class ResidualUnit(nn.Module):
  """A post-activation bottleneck: 1x1 -> 3x3 (strided) -> 1x1 with GroupNorm, plus the (projected) input."""

  features: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    norm = lambda name, **kw: nn.GroupNorm(dtype=self.dtype, name=name, **kw)
    residual = x
    if x.shape[-1] != 4 * self.features or self.stride != 1:
      residual = norm('gn_proj')(StdConv(4 * self.features, 1, self.stride, self.dtype, name='conv_proj')(x))
    y = nn.relu(norm('gn1')(StdConv(self.features, 1, 1, self.dtype, name='conv1')(x)))
    y = nn.relu(norm('gn2')(StdConv(self.features, 3, self.stride, self.dtype, name='conv2')(y)))
    y = norm('gn3', scale_init=nn.initializers.zeros)(StdConv(4 * self.features, 1, 1, self.dtype, name='conv3')(y))
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`units` bottlenecks named unit1, unit2, ...; the first one strides."""

  units: int
  features: int
  first_stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for unit in range(self.units):
      x = ResidualUnit(self.features, self.first_stride if unit == 0 else 1, self.dtype, name=f'unit{unit + 1}')(x)
    return x


class ResNetBackbone(nn.Module):
  """Root (7x7/2 conv, GroupNorm, ReLU, 3x3/2 max pool) then bottleneck stages; the grid shrinks 4 x 2^(n-1)."""

  stages: Sequence[int]
  width_factor: float = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    width = int(64 * self.width_factor)  # models_vit.py l.231
    x = StdConv(width, 7, 2, self.dtype, name='conv_root')(images.astype(self.dtype))
    x = nn.relu(nn.GroupNorm(dtype=self.dtype, name='gn_root')(x))
    x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='SAME')
    for stage, units in enumerate(self.stages):
      x = ResNetStage(units, width * 2**stage, 2 if stage else 1, self.dtype, name=f'block{stage + 1}')(x)
      keep_feature(self, f'stage{stage + 1}', x)
    return x


def hybrid(
  num_classes: int,
  *,
  resnet_stages: Sequence[int],
  width_factor: float = 1,
  hidden_size: int,
  depth: int,
  num_heads: int,
  mlp_dim: int,
  patch_size: int = 1,
  classifier: str = 'token',
  representation_size: Optional[int] = None,
  dropout_rate: float = 0.0,
  attention_dropout_rate: float = 0.0,
  drop_path_rate: float = 0.0,
  remat: bool = False,
  remat_policy: str = 'nothing_saveable',
  scan: bool = False,
  dtype: Any = jnp.float32,
  kernels: str = REFERENCE,
) -> Isotropic:
  """A ResNet backbone under the ViT of `vit.vit` (same blocks, head and names; the stem gains `backbone`)."""
  if int(64 * width_factor) % 32:
    raise ValueError(
      f'The hybrid ResNet root is {int(64 * width_factor)} channels wide (width_factor={width_factor}); '
      f'its GroupNorms have 32 groups (models_resnet.py, flax defaults), so it must be a multiple of 32 '
      f'(Rs...-w32, -w64, ...).'
    )
  body = _vit.vit(
    num_classes,
    hidden_size=hidden_size,
    depth=depth,
    num_heads=num_heads,
    mlp_dim=mlp_dim,
    patch_size=patch_size,
    classifier=classifier,
    representation_size=representation_size,
    dropout_rate=dropout_rate,
    attention_dropout_rate=attention_dropout_rate,
    drop_path_rate=drop_path_rate,
    remat=remat,
    remat_policy=remat_policy,
    scan=scan,
    dtype=dtype,
    kernels=kernels,
  )
  backbone = ResNetBackbone(tuple(resnet_stages), width_factor, dtype=dtype)
  return body.clone(stem=body.stem.clone(backbone=backbone))


# --- weight files ----------------------------------------------------------------------------------------------

_BACKBONE = re.compile(r'(conv_root|gn_root|block\d+)/')  # the ResNet's arrays (models_vit.py l.230-260)


def _stages(params: dict) -> tuple[int, ...]:
  """A hybrid's units per stage (`stem/backbone/block{s}/unit{u}`, 1-based)."""
  last = lambda pattern: max((int(m[1]) for k in params if (m := re.match(pattern, k))), default=0)
  return tuple(last(rf'stem/backbone/block{s}/unit(\d+)/') for s in range(1, last(r'stem/backbone/block(\d+)/') + 1))


def from_npz(flat: Tensors) -> Weights:
  """The hybrid a vision_transformer `.npz` holds (`R50+ViT-B_16.npz`), and its variables."""
  arrays = KeyTracker(_vit.npz_arrays(flat))
  params = _vit.npz_params(arrays)
  params.update({'stem/backbone/' + key: arrays[key] for key in list(arrays) if _BACKBONE.match(key)})
  convert.refuse_unread(arrays, 'array(s) of this ViT checkpoint', _vit.NPZ_HINT)
  fields, image_size = _vit.npz_fields(arrays, params)
  stages = _stages(params)
  # The position embedding counts tokens of the backbone's grid, 4 x 2^(n - 1) finer than the image.
  image_size = image_size and image_size * (4 * 2 ** (len(stages) - 1) if stages else 4)
  fields = {
    k: v
    for k, v in fields.items()
    if k not in ('posemb', 'posemb_class_token', 'approximate_gelu', 'layernorm_epsilon')
  }
  root = params['stem/backbone/conv_root/kernel']
  fields.update(resnet_stages=stages, width_factor=root.shape[-1] / 64)
  classes = int(params['head/kernel'].shape[-1]) if 'head/kernel' in params else None
  return Weights(
    {'params': traverse_util.unflatten_dict(params, sep='/')},
    'hybrid',
    fields,
    classes,
    image_size,
    {},
    int(root.shape[2]),
  )


def _is_npz_hybrid(flat: Tensors) -> bool:
  return convert.has_key(convert.without_big_vision_prefix(flat), 'conv_root/')


FAMILY = Family(
  'hybrid', hybrid, parse_name, format_name, VARIANTS, SOURCE, readers={NPZ: Reader(_is_npz_hybrid, from_npz)}
)
