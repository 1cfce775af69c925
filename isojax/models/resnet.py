"""ResNet (He et al. 2016), the pyramid baseline: stages that halve the grid and widen the channels.

Not an `Isotropic`: its blocks change shape, which is the point of comparing against it. Layout,
names and numbers follow torchvision's `resnet.py` as timm's `resnet18/34/50/101/152` load it
(timm/models/resnet.py: `BasicBlock` l.33-128, `Bottleneck` l.131-245, the stem l.560-600): a 7x7/2
convolution, BatchNorm, ReLU and a 3x3/2 max pool, then four stages of blocks whose first block
strides (on the 3x3 convolution, "ResNet v1.5") and projects the shortcut with a 1x1 convolution +
BatchNorm, global average pooling and a linear head. Padding is PyTorch's (symmetric), not 'SAME'.
Initialisation as timm's `init_weights` (l.611-623): convolutions kaiming-normal (fan_out, ReLU
gain), BatchNorm scale 1 / bias 0 except the last BatchNorm of each residual branch at zero
(`zero_init_last=True`), the head PyTorch's nn.Linear default. BatchNorm as PyTorch's (momentum
0.1, eps 1e-5), its statistics averaged over `axis_name` under pmap (synced BatchNorm).

Names: `ResNet-{18,34,50,101,152}`; `ResNet-18-w16` for a narrower one (stem and first stage 16 wide, not 64).

Weight files: torchvision-layout state dicts (timm `resnet18` ... `resnet152`): `conv1`/`bn1`,
`layer{s}.{b}.{conv,bn}{1,2,3}`, `downsample.{0,1}`, `fc`; BatchNorm running statistics become `batch_stats`.
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
from isojax.models.layers import keep_feature, torch_default_init

STAGES = {
  18: ('basic', (2, 2, 2, 2)),
  34: ('basic', (3, 4, 6, 3)),
  50: ('bottleneck', (3, 4, 6, 3)),
  101: ('bottleneck', (3, 4, 23, 3)),
  152: ('bottleneck', (3, 8, 36, 3)),
}
VARIANTS = {f'ResNet-{depth}': dict(depth=depth) for depth in STAGES}
SOURCE = 'torchvision models/resnet.py as timm/models/resnet.py loads it (resnet18 ... resnet152)'
_NAME = re.compile(r'^resnet[-_]?(?P<depth>\d+)(?:-w(?P<width>\d+))?$', re.IGNORECASE)
# kaiming_normal_(mode='fan_out', nonlinearity='relu'): N(0, 2 / fan_out), not truncated.
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def parse_name(name: str) -> Optional[dict]:
  """The architecture a ResNet name fixes, or None when `name` is not a ResNet name."""
  match = _NAME.match(name.strip())
  if not match or int(match['depth']) not in STAGES:
    return None
  return dict(depth=int(match['depth']), width=int(match['width'] or 64))


def format_name(arch) -> str:
  width = arch.get('width', 64)
  return f'ResNet-{arch["depth"]}' + (f'-w{width}' if width != 64 else '')


def conv_bn(
  module: nn.Module,
  x: jax.Array,
  train: bool,
  features: int,
  kernel: int,
  stride: int,
  name: str,
  zero_scale: bool = False,
) -> jax.Array:
  """torchvision's `conv{name}` (no bias, symmetric padding) then `bn{name}`, created in `module`'s scope."""
  pad = kernel // 2
  x = nn.Conv(
    features,
    (kernel, kernel),
    (stride, stride),
    padding=((pad, pad),) * 2,
    use_bias=False,
    kernel_init=KAIMING_FAN_OUT,
    dtype=module.dtype,
    name=f'conv{name}',
  )(x)
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    axis_name=module.axis_name,
    scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
    dtype=module.dtype,
    name=f'bn{name}',
  )(x)


class Block(nn.Module):
  """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 x4) residual block; the first of a stage strides."""

  kind: str
  planes: int
  stride: int
  axis_name: Optional[str] = None
  zero_init_last: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.kind == 'basic':
      out_channels = self.planes
      y = nn.relu(conv_bn(self, x, train, self.planes, 3, self.stride, '1'))
      y = conv_bn(self, y, train, self.planes, 3, 1, '2', zero_scale=self.zero_init_last)
    else:
      out_channels = 4 * self.planes
      y = nn.relu(conv_bn(self, x, train, self.planes, 1, 1, '1'))
      y = nn.relu(conv_bn(self, y, train, self.planes, 3, self.stride, '2'))
      y = conv_bn(self, y, train, out_channels, 1, 1, '3', zero_scale=self.zero_init_last)
    if self.stride != 1 or x.shape[-1] != out_channels:
      x = conv_bn(self, x, train, out_channels, 1, self.stride, '_downsample')
    return nn.relu(x + y)


class ResNet(nn.Module):
  """stem -> 4 stages (grid /4, /8, /16, /32; widths 64..512 x expansion) -> average pool -> head."""

  num_classes: int
  depth: int
  width: int = 64
  axis_name: Optional[str] = None
  zero_init_last: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if images.ndim != 4:
      raise ValueError(f'Expected images as [batch, height, width, channels], got shape {images.shape}.')
    kind, blocks = STAGES[self.depth]
    x = nn.relu(conv_bn(self, images.astype(self.dtype), train, self.width, 7, 2, '1'))  # the stem: conv1, bn1
    # torch's MaxPool2d(3, 2, padding=1): -inf padding, then a VALID window (an explicit pad, which every
    # exporter reads, where jax2onnx drops max_pool's own padding argument)
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2))
    for stage, count in enumerate(blocks):
      for i in range(count):
        x = Block(
          kind,
          self.width * 2**stage,
          2 if i == 0 and stage > 0 else 1,
          axis_name=self.axis_name,
          zero_init_last=self.zero_init_last,
          dtype=self.dtype,
          name=f'layer{stage + 1}_{i}',
        )(x, train)
      keep_feature(self, f'stage{stage + 1}', x)
    x = x.mean(axis=(1, 2))
    keep_feature(self, 'pre_logits', x)
    kernel_init, bias_init = torch_default_init(x.shape[-1])
    logits = nn.Dense(self.num_classes, kernel_init=kernel_init, bias_init=bias_init, dtype=self.dtype, name='head')(x)
    return logits.astype(jnp.float32)


def resnet(
  num_classes: int,
  *,
  depth: int,
  width: int = 64,
  axis_name: Optional[str] = None,
  zero_init_last: bool = True,
  dtype: Any = jnp.float32,
) -> ResNet:
  """A torchvision/timm ResNet-`depth`; under pmap, BatchNorm averages over `axis_name`. `width` is the stem's and
  first stage's (64 published; `ResNet-18-w16` is a narrow one, every stage a quarter as wide)."""
  if depth not in STAGES:
    raise ValueError(f'ResNet depth {depth} is not one of {sorted(STAGES)}.')
  return ResNet(num_classes, depth, width, axis_name=axis_name, zero_init_last=zero_init_last, dtype=dtype)


# --- weight files ----------------------------------------------------------------------------------------------


def stage_blocks(state: Tensors, stage: str, first: int) -> list[int]:
  """Blocks in each of a ResNet's 4 stages, whose keys start `stage.format(s)`.<block>. for s = first..first+3."""
  return [
    1
    + max((int(m.group(1)) for k in state if (m := re.match(re.escape(stage.format(s)) + r'\.(\d+)\.', k))), default=-1)
    for s in range(first, first + 4)
  ]


def timm_variables(state: Tensors) -> dict:
  """torchvision-layout ResNet (timm `resnet18` ... `resnet152`): conv{k}/bn{k}, downsample.{0,1}, fc."""
  params: dict[str, Any] = {}
  stats: dict[str, Any] = {}

  def conv_bn_of(prefix, conv, bn, target, suffix):
    target_params = params if target is None else params.setdefault(target, {})
    target_stats = stats if target is None else stats.setdefault(target, {})
    target_params[f'conv{suffix}'] = {'kernel': convert.conv_kernel(state[f'{prefix}{conv}.weight'])}
    target_params[f'bn{suffix}'], target_stats[f'bn{suffix}'] = convert.batchnorm(state, f'{prefix}{bn}')

  conv_bn_of('', 'conv1', 'bn1', None, '1')
  for stage, count in enumerate(stage_blocks(state, 'layer{}', 1), start=1):
    for i in range(count):
      prefix, name = f'layer{stage}.{i}.', f'layer{stage}_{i}'
      for k in (1, 2, 3):
        if f'{prefix}conv{k}.weight' in state:
          conv_bn_of(prefix, f'conv{k}', f'bn{k}', name, str(k))
      if f'{prefix}downsample.0.weight' in state:
        conv_bn_of(prefix, 'downsample.0', 'downsample.1', name, '_downsample')
  if 'fc.weight' in state:
    params['head'] = convert.linear(state, 'fc')
  return {'params': params, 'batch_stats': stats}


def from_timm(state: Tensors) -> Weights:
  """A torchvision/timm ResNet state dict -> `Weights`."""
  variables = convert.read_all(state, timm_variables, 'timm resnet', ignore=convert.batchnorm_counter)
  blocks = tuple(stage_blocks(state, 'layer{}', 1))
  kind = 'bottleneck' if 'layer1.0.conv3.weight' in state else 'basic'
  depth = next((d for d, shape in STAGES.items() if shape == (kind, blocks)), None)
  if depth is None:
    raise ValueError(f'A timm ResNet with {kind} blocks {blocks} is none of ResNet-{sorted(STAGES)}.')
  return Weights(
    variables,
    'resnet',
    dict(depth=depth),
    convert.classes(state, 'fc.weight'),
    None,
    {},
    int(state['conv1.weight'].shape[1]),
  )


def _is_timm_resnet(state: Tensors) -> bool:
  return 'conv1.weight' in state and 'layer1.0.conv1.weight' in state


FAMILY = Family(
  'resnet', resnet, parse_name, format_name, VARIANTS, SOURCE, readers={TIMM: Reader(_is_timm_resnet, from_timm)}
)
