"""BiT ResNet-V2 (Kolesnikov et al. 2020, "Big Transfer"): a pre-activation pyramid baseline with
weight-standardised convolutions and GroupNorm, so its statistics never depend on the batch.

Not an `Isotropic`: its stages halve the grid and widen the channels. Follows timm/models/resnetv2.py
at aa4b585 as `resnetv2_50x1_bit` builds it (l.876-895, 1009-1013; `_create_resnetv2_bit`:
`stem_type='fixed'`, `conv_layer=partial(StdConv2d, eps=1e-8)`):
- `StdConv2d` (timm/layers/std_conv.py l.25-60): each output filter standardised to zero mean, unit
  (biased) variance over its inputs and window, eps 1e-8, no bias, PyTorch's symmetric padding;
- the stem (l.473-518, 'fixed'): a 7x7/2 convolution, zero padding by 1, a 3x3/2 max pool; no norm
  (pre-activation);
- `PreActBottleneck` (l.142-240): x_preact = ReLU(GroupNorm32(x)); the shortcut is x, or a 1x1
  strided projection of x_preact (`DownsampleConv`, l.326-360, no norm when preact) in a stage's
  first block; conv1 1x1 (width/4) -> GN+ReLU -> conv2 3x3 (strided) -> GN+ReLU -> conv3 1x1;
- stages of (3, 4, 6, 3) blocks (`STAGES` for the other depths), widths 256..2048 x width factor, strides
  1, 2, 2, 2 (l.585-612);
  GroupNorm(32, eps 1e-5) + ReLU after the last stage; global average pooling; a 1x1 convolution head
  (`ClassifierHead(use_conv=True)`, `head.fc`);
- initialisers `_init_weights` (l.797-817): convolutions kaiming-normal (fan_out, ReLU gain), the
  head N(0, 0.01) with zero bias, GroupNorm scale 1 / bias 0; `zero_init_last=False` (l.544).

Names: `BiT-R50x1` (also `ResNetV2-50x1`, timm's `resnetv2_50x1_bit`), `BiT-R{26,50,101,152,200}x{1,2,3,4}`; narrower
than BiT publishes, `BiT-R50-w16-g8` (stem width 16, 8 groups per GroupNorm).

Weight files: timm `resnetv2_*_bit` state dicts (`stem.conv`, `stages.S.blocks.B.{norm1-3, conv1-3,
downsample.conv}`, `norm`, `head.fc` as a 1x1 convolution on the pooled map: a dense layer here).
"""

from __future__ import annotations

import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from isojax.models import convert
from isojax.models.convert import TIMM, Reader, Tensors, Weights
from isojax.models.family import Family
from isojax.models.layers import keep_feature
from isojax.models.resnet import KAIMING_FAN_OUT, stage_blocks

# Blocks per stage by depth: big_vision/models/bit.py `get_block_desc` (l.131-141; 26 is timm's, 200 BiT's).
STAGES = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
VARIANTS = {'BiT-R50x1': dict(depth=50, width_factor=1)}
SOURCE = 'timm/models/resnetv2.py resnetv2_50x1_bit (ResNetV2, PreActBottleneck, StdConv2d eps 1e-8, fixed stem)'
_NAME = re.compile(
  r'^(?:bit[-_]?r|resnetv2[-_]?)(?P<depth>\d+)(?:x(?P<width>\d+)|-w(?P<root>\d+))(?:-g(?P<groups>\d+))?'
  r'(?:[-_]bit)?$',
  re.IGNORECASE,
)


def parse_name(name: str) -> Optional[dict]:
  """The architecture a BiT ResNet-V2 name fixes, or None when `name` is not one."""
  match = _NAME.match(name.strip())
  if not match or int(match['depth']) not in STAGES:
    return None
  width_factor = int(match['width']) if match['width'] else int(match['root']) / 64
  return dict(depth=int(match['depth']), width_factor=width_factor, norm_groups=int(match['groups'] or 32))


def format_name(arch) -> str:
  groups, factor = arch.get('norm_groups', 32), arch['width_factor']
  width = f'x{int(factor)}' if factor == int(factor) else f'-w{round(64 * factor)}'
  return f'BiT-R{arch["depth"]}{width}' + (f'-g{groups}' if groups != 32 else '')


class StdConv(nn.Module):
  """A convolution whose filters are standardised (weight standardisation) before use; no bias."""

  features: int
  kernel_size: int
  stride: int = 1
  epsilon: float = 1e-8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param('kernel', KAIMING_FAN_OUT, (k, k, x.shape[-1], self.features))
    mean = kernel.mean(axis=(0, 1, 2), keepdims=True)
    var = kernel.var(axis=(0, 1, 2), keepdims=True)
    kernel = (kernel - mean) * jax.lax.rsqrt(var + self.epsilon)
    pad = ((self.stride - 1) + (k - 1)) // 2  # timm get_padding: PyTorch's symmetric padding
    return jax.lax.conv_general_dilated(
      x.astype(self.dtype),
      kernel.astype(self.dtype),
      (self.stride,) * 2,
      ((pad, pad),) * 2,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )


def _gn_relu(module: nn.Module, x: jax.Array, name: str) -> jax.Array:
  return nn.relu(
    nn.GroupNorm(num_groups=module.norm_groups, epsilon=1e-5, use_fast_variance=False, dtype=module.dtype, name=name)(x)
  )


class PreActBottleneck(nn.Module):
  """GN+ReLU -> 1x1 -> GN+ReLU -> 3x3 (strided) -> GN+ReLU -> 1x1, plus the (projected) shortcut."""

  features: int
  stride: int = 1
  norm_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda features, k, stride, name: StdConv(features, k, stride, dtype=self.dtype, name=name)
    preact = _gn_relu(self, x, 'norm1')
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, 1, self.stride, 'downsample')(preact)
    y = conv(self.features // 4, 1, 1, 'conv1')(preact)
    y = conv(self.features // 4, 3, self.stride, 'conv2')(_gn_relu(self, y, 'norm2'))
    y = conv(self.features, 1, 1, 'conv3')(_gn_relu(self, y, 'norm3'))
    return y + shortcut


class ResNetV2(nn.Module):
  """BiT stem -> 4 pre-activation stages (grid /4 .. /32) -> GN+ReLU -> average pool -> 1x1 conv head."""

  num_classes: int
  depth: int
  width_factor: float = 1
  norm_groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if images.ndim != 4:
      raise ValueError(f'Expected images as [batch, height, width, channels], got shape {images.shape}.')
    x = StdConv(round(64 * self.width_factor), 7, 2, dtype=self.dtype, name='stem')(images.astype(self.dtype))
    x = nn.max_pool(
      jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), window_shape=(3, 3), strides=(2, 2)
    )  # 'fixed': zero pad, then pool
    for stage, count in enumerate(STAGES[self.depth]):
      for i in range(count):
        x = PreActBottleneck(
          round(256 * 2**stage * self.width_factor),
          2 if i == 0 and stage > 0 else 1,
          self.norm_groups,
          dtype=self.dtype,
          name=f'stage{stage + 1}_{i}',
        )(x)
      keep_feature(self, f'stage{stage + 1}', x)
    x = _gn_relu(self, x, 'final_norm').mean(axis=(1, 2))
    keep_feature(self, 'pre_logits', x)
    logits = nn.Dense(
      self.num_classes,
      kernel_init=nn.initializers.normal(0.01),
      bias_init=nn.initializers.zeros,
      dtype=self.dtype,
      name='head',
    )(x)  # timm's 1x1 conv head.fc on the pooled map
    return logits.astype(jnp.float32)


def resnetv2(
  num_classes: int, *, depth: int, width_factor: float = 1, norm_groups: int = 32, dtype: Any = jnp.float32
) -> ResNetV2:
  """A BiT ResNet-V2-`depth`x`width_factor` (GroupNorm: nothing to sync across devices).

  BiT publishes whole width factors and 32 groups; a narrower model (`BiT-R50-w16-g8`: stem 16 wide, every stage a
  quarter of BiT-R50x1's) needs fewer groups, since a bottleneck's first convolution is then only 16 channels wide."""
  if depth not in STAGES:
    raise ValueError(f'BiT ResNet-V2 depth {depth} is not one of {sorted(STAGES)}.')
  narrowest = round(64 * width_factor)
  if narrowest % norm_groups:
    raise ValueError(
      f'GroupNorm with norm_groups={norm_groups} needs channel counts divisible by it, but the stem and '
      f'first bottleneck are {narrowest} wide; choose norm_groups dividing {narrowest} '
      f'(name the model BiT-R{depth}-w{narrowest}-g<groups>).'
    )
  return ResNetV2(num_classes, depth, width_factor, norm_groups, dtype=dtype)


# --- weight files ----------------------------------------------------------------------------------------------


def timm_params(state: Tensors) -> dict:
  """timm `resnetv2_*_bit`: stem.conv, stages.S.blocks.B.{norm1-3, conv1-3, downsample.conv}, norm, head.fc."""
  params: dict[str, Any] = {'stem': {'kernel': convert.conv_kernel(state['stem.conv.weight'])}}
  for stage, count in enumerate(stage_blocks(state, 'stages.{}.blocks', 0)):
    for i in range(count):
      p = f'stages.{stage}.blocks.{i}'
      block = {f'norm{k}': convert.norm(state, f'{p}.norm{k}') for k in (1, 2, 3)}
      block.update({f'conv{k}': {'kernel': convert.conv_kernel(state[f'{p}.conv{k}.weight'])} for k in (1, 2, 3)})
      if f'{p}.downsample.conv.weight' in state:
        block['downsample'] = {'kernel': convert.conv_kernel(state[f'{p}.downsample.conv.weight'])}
      params[f'stage{stage + 1}_{i}'] = block
  params['final_norm'] = convert.norm(state, 'norm')
  if 'head.fc.weight' in state:  # a 1x1 convolution on the pooled map: a dense layer
    params['head'] = {'kernel': state['head.fc.weight'][:, :, 0, 0].T, 'bias': state['head.fc.bias']}
  return params


def from_timm(state: Tensors) -> Weights:
  """A timm `resnetv2_*_bit` state dict -> `Weights`."""
  variables = convert.read_all(state, lambda s: {'params': timm_params(s)}, 'timm resnetv2')
  blocks = tuple(stage_blocks(state, 'stages.{}.blocks', 0))
  depth = next((d for d, shape in STAGES.items() if shape == blocks), None)
  if depth is None:
    raise ValueError(f'A timm ResNet-V2 with blocks {blocks} is none of BiT-R{sorted(STAGES)}.')
  stem = state['stem.conv.weight']
  fields = dict(depth=depth, width_factor=int(stem.shape[0]) // 64)
  return Weights(variables, 'resnetv2', fields, convert.classes(state, 'head.fc.weight'), None, {}, int(stem.shape[1]))


def _is_timm_resnetv2(state: Tensors) -> bool:
  return 'stem.conv.weight' in state and 'stages.0.blocks.0.conv1.weight' in state


FAMILY = Family(
  'resnetv2', resnetv2, parse_name, format_name, VARIANTS, SOURCE, readers={TIMM: Reader(_is_timm_resnetv2, from_timm)}
)
