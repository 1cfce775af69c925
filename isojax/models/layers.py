"""Building blocks shared by every isotropic family.

Each block computes the model's meaning with the plain (reference) ops; a block whose op has a CPU fast path
(Dense, attention, the depthwise convolution) takes it when its `kernels` field says 'cpu' (isojax/kernels,
resolved once when the model is built). Every block takes its initialisers as fields: each family passes
those of the codebase whose weights its names refer to (vit.py: google-research/vision_transformer; mixer.py:
its models_mixer.py, i.e. flax defaults; convmixer.py: PyTorch's defaults, as
locuslab/convmixer and timm leave them). The defaults here are vision_transformer's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from isojax.kernels import CPU, REFERENCE
from isojax.kernels import attention as attention_kernels
from isojax.kernels import check as check_kernels
from isojax.kernels import dense as dense_kernels
from isojax.kernels import depthwise as depthwise_kernels

Dtype = Any
ModuleDef = Callable[..., nn.Module]
Initializer = Callable[..., jax.Array]

# google-research/vision_transformer vit_jax/models_vit.py, MlpBlock (l.74-77) and the
# attention's kernel_init (l.141); flax's nn.Conv default for the patch embedding (l.264).
XAVIER = nn.initializers.xavier_uniform()
MLP_BIAS = nn.initializers.normal(stddev=1e-6)
LECUN = nn.initializers.lecun_normal()
ZEROS = nn.initializers.zeros


FEATURES = 'intermediates'  # the collection features are sown into (isojax.models.features)
PRE_LOGITS = 'pre_logits'  # the feature the head sees (big_vision's name)


def keep_feature(module: nn.Module, name: str, value: jax.Array) -> None:
  """Records `value` as feature `name` when the caller asked for features (never during init)."""
  if module.is_mutable_collection(FEATURES) and not module.is_initializing():
    module.sow(FEATURES, name, value)


# timm's trunc_normal_(std=.02) truncates at +-2 in absolute value, 100 standard deviations: N(0, 0.02).
TIMM_TRUNC_NORMAL_02 = nn.initializers.normal(stddev=0.02)


def torch_default_init(fan_in: int) -> tuple[Initializer, Initializer]:
  """(kernel, bias) initialisers of PyTorch's nn.Linear / nn.Conv2d `reset_parameters`.

  Weights: kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)); biases:
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)). flax computes the same fan_in for [in, out] and
  [kh, kw, in/groups, out] kernels.
  """
  bound = 1.0 / np.sqrt(fan_in)
  kernel = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')

  def bias(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return kernel, bias


def fused_init(base: Initializer, parts: int) -> Initializer:
  """Initialises a fused [in, parts * out] kernel as `parts` separate [in, out] kernels.

  The fused QKV projection must start like vision_transformer's separate query, key and
  value Dense layers: xavier over [C, 3C] would draw from a bound sqrt(2) too small.
  """

  def init(key, shape, dtype=jnp.float32):
    fan_out = shape[-1] // parts
    keys = jax.random.split(key, parts)
    return jnp.concatenate([base(k, (*shape[:-1], fan_out), dtype) for k in keys], axis=-1)

  return init


def activation(name: str, approximate_gelu: bool = True) -> Callable[[jax.Array], jax.Array]:
  """'gelu' (tanh approximation or exact, see `gelu`) or 'relu'."""
  if name == 'gelu':
    return gelu(approximate_gelu)
  if name == 'relu':
    return nn.relu
  raise ValueError(f"Unknown activation {name!r}; expected 'gelu' or 'relu'.")


def gelu(approximate: bool) -> Callable[[jax.Array], jax.Array]:
  """GELU; the official JAX checkpoints use the tanh approximation, timm the exact erf.

  The exact form is written with erf rather than jax.nn.gelu's erfc, which XLA's CPU
  backend evaluates about twice as slowly; the two agree to float rounding.
  """
  if approximate:
    return lambda x: nn.gelu(x, approximate=True)
  return lambda x: 0.5 * x * (1 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


def check_patchable(height: int, width: int, patch_size: int) -> None:
  """Raises an actionable error when the image is not a whole number of patches."""
  if height % patch_size or width % patch_size:
    raise ValueError(
      f'Image size {height}x{width} is not divisible by patch_size={patch_size}; '
      f'use an image size that is a multiple of {patch_size} '
      f'(e.g. {max(1, height // patch_size) * patch_size}) or another patch size.'
    )


class PatchEmbed(nn.Module):
  """Cuts the image into non-overlapping patches and embeds each (a strided conv)."""

  features: int
  patch_size: int
  kernel_init: Initializer = LECUN
  bias_init: Initializer = ZEROS
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    check_patchable(images.shape[1], images.shape[2], self.patch_size)
    p = self.patch_size
    return nn.Conv(
      self.features,
      (p, p),
      strides=(p, p),
      padding='VALID',
      kernel_init=self.kernel_init,
      bias_init=self.bias_init,
      dtype=self.dtype,
      name='embedding',
    )(images)


def torch_patch_embedding(images: jax.Array, features: int, patch_size: int, dtype: Dtype) -> jax.Array:
  """`PatchEmbed` ('patch_embed') as PyTorch initialises its nn.Conv2d, which CaiT and ConvMixer leave in place.
  Called inside a module's compact method, whose submodule it becomes."""
  kernel_init, bias_init = torch_default_init(patch_size**2 * images.shape[-1])
  embed = PatchEmbed(
    features, patch_size, kernel_init=kernel_init, bias_init=bias_init, dtype=dtype, name='patch_embed'
  )
  return embed(images)


def posemb_sincos_2d(height: int, width: int, features: int, temperature: float = 10_000.0) -> np.ndarray:
  """Fixed 2D sin-cos position embedding of shape [1, height*width, features] (MoCo v3 / big_vision)."""
  if features % 4:
    raise ValueError(f'sincos2d position embedding needs a width divisible by 4, got {features}.')
  y, x = np.mgrid[:height, :width]
  omega = 1.0 / temperature ** (np.arange(features // 4) / (features // 4 - 1 or 1))
  y = np.einsum('m,d->md', y.flatten(), omega)
  x = np.einsum('m,d->md', x.flatten(), omega)
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return pe[None].astype(np.float32)


class Dense(nn.Dense):
  """nn.Dense (same parameters, same numbers) with the kernels option of its model.

  `kernels='cpu'` folds the leading axes into one before the product (isojax/kernels/dense.py), which XLA's
  CPU backend runs as plain 2-D products in the backward pass too; `'reference'` is nn.Dense itself.
  """

  kernels: str = REFERENCE

  def __call__(self, inputs: jax.Array) -> jax.Array:
    check_kernels(self.kernels)
    if self.kernels == CPU:
      return dense_kernels.folded(super().__call__, inputs)
    return super().__call__(inputs)


class MlpBlock(nn.Module):
  """Dense -> GELU -> Dropout -> Dense -> Dropout; the channel mixer of ViT and Mixer."""

  mlp_dim: int
  out_dim: Optional[int] = None
  dropout_rate: float = 0.0
  approximate_gelu: bool = True
  kernel_init: Initializer = XAVIER
  bias_init: Initializer = MLP_BIAS
  dtype: Dtype = jnp.float32
  kernels: str = REFERENCE

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    out_dim = self.out_dim or x.shape[-1]

    def dense(n, name):
      return Dense(
        n, dtype=self.dtype, name=name, kernel_init=self.kernel_init, bias_init=self.bias_init, kernels=self.kernels
      )

    x = dense(self.mlp_dim, 'Dense_0')(x)
    x = gelu(self.approximate_gelu)(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = dense(out_dim, 'Dense_1')(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


def multihead_attention(
  qkv: jax.Array, num_heads: int, dropout: Optional[Callable[[jax.Array], jax.Array]] = None
) -> jax.Array:
  """softmax(q k^T / sqrt(d)) v for a fused [batch, tokens, 3 * width] projection, heads as a middle axis.

  The reference: what `jax.nn.dot_product_attention` computes (tested); `kernels='cpu'` folds batch and
  heads into one axis instead (isojax/kernels/attention.py). The softmax is computed in float32 whatever
  the compute dtype.
  """
  batch, tokens, width3 = qkv.shape
  width = width3 // 3
  head_dim = width // num_heads
  q, k, v = (t[:, :, 0] for t in jnp.split(qkv.reshape(batch, tokens, 3, num_heads, head_dim), 3, axis=2))
  logits = jnp.einsum('bqhd,bkhd->bhqk', q * jnp.asarray(head_dim**-0.5, q.dtype), k)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  if dropout is not None:
    weights = dropout(weights)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(batch, tokens, width)


class SelfAttention(nn.Module):
  """Multi-head self-attention with one fused QKV projection ([C, 3C] instead of three [C, C])."""

  num_heads: int
  dropout_rate: float = 0.0  # on the attention weights
  qkv_bias: bool = True  # timm's qkv_bias=False models have none
  dtype: Dtype = jnp.float32
  kernels: str = REFERENCE

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    *batch, tokens, width = x.shape
    if width % self.num_heads:
      raise ValueError(f'Width {width} is not divisible by num_heads={self.num_heads}.')
    qkv = Dense(
      3 * width,
      dtype=self.dtype,
      name='qkv',
      kernel_init=fused_init(XAVIER, 3),
      use_bias=self.qkv_bias,
      kernels=self.kernels,
    )(x)
    dropout = None
    if train and self.dropout_rate > 0:
      dropout = lambda w: nn.Dropout(self.dropout_rate)(w, deterministic=False)
    attend = attention_kernels.folded if self.kernels == CPU else multihead_attention
    out = attend(qkv.reshape(-1, tokens, 3 * width), self.num_heads, dropout)
    return Dense(width, dtype=self.dtype, name='out', kernel_init=XAVIER, kernels=self.kernels)(
      out.reshape(*batch, tokens, width)
    )


class DropPath(nn.Module):
  """Stochastic depth: drops a whole residual branch per example during training.

  `scale=True` divides the kept branches by 1 - rate (timm layers/drop.py `drop_path`, scale_by_keep=True,
  and DeiT's); `scale=False` keeps them as they are (big_vision models/mlp_mixer.py `_stoch_depth_mask`,
  l.173-177: `1 - bernoulli(p)`). Both conventions exist; each family uses its source's."""

  rate: float | jax.Array  # an array under `nn.scan`, where each layer's rate is its slice of the schedule
  scale: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if not train or (isinstance(self.rate, (int, float)) and self.rate == 0.0):
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, shape)
    return jnp.where(mask, x / keep if self.scale else x, jnp.zeros_like(x))


class LayerScale(nn.Module):
  """Per-channel learned scale of a residual branch (CaiT), initialised small."""

  init_value: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param('scale', nn.initializers.constant(self.init_value), (x.shape[-1],))
    return x * scale.astype(x.dtype)


class MAPHead(nn.Module):
  """Multihead attention pooling: a learned probe token attends to all tokens (big_vision)."""

  num_heads: int
  mlp_dim: Optional[int] = None
  approximate_gelu: bool = True
  dtype: Dtype = jnp.float32
  kernels: str = REFERENCE

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, _, width = x.shape
    probe = self.param('probe', nn.initializers.xavier_uniform(), (1, 1, width))
    probe = jnp.tile(probe, (batch, 1, 1)).astype(x.dtype)
    x = nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform()
    )(probe, x)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)(x)
    x = x + MlpBlock(
      self.mlp_dim or 4 * width, approximate_gelu=self.approximate_gelu, dtype=self.dtype, kernels=self.kernels
    )(y)
    return x[:, 0]


class DepthwiseConv(nn.Module):
  """Depthwise k x k 'SAME' convolution; parameters laid out as nn.Conv's ([k, k, 1, C], [C]).

  The reference is XLA's grouped convolution (cuDNN and TPU kernels); `kernels='cpu'` computes the same
  numbers as k*k shifted multiply-adds with a hand-written backward pass (isojax/kernels/depthwise.py),
  an order of magnitude faster on XLA's CPU backend.
  """

  kernel_size: int
  kernel_init: Initializer = LECUN
  bias_init: Initializer = ZEROS
  dtype: Dtype = jnp.float32
  kernels: str = REFERENCE

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    check_kernels(self.kernels)
    k, width = self.kernel_size, x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (k, k, 1, width))
    bias = self.param('bias', self.bias_init, (width,))
    x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    if self.kernels == CPU:
      y = depthwise_kernels.shifted(x, kernel)
    else:
      y = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), 'SAME', feature_group_count=width, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
      )
    return y + bias


def _device_groups(axis_name: str, devices_per_group: int) -> list[list[int]]:
  count = jax.device_count()
  if count % devices_per_group:
    raise ValueError(
      f'batch_norm_group spans {devices_per_group} devices, which does not divide the {count} devices of '
      f'{axis_name!r}; choose a group of a per-device batch times a divisor of {count}.'
    )
  return [list(range(i, i + devices_per_group)) for i in range(0, count, devices_per_group)]


class GroupBatchNorm(nn.Module):
  """BatchNorm whose training statistics come from groups of `group` examples: an unsynchronised DDP run's
  per-GPU BatchNorm (torch.nn.BatchNorm2d on each GPU's batch, no --sync-bn) rather than the whole batch.

  Its variables are nn.BatchNorm's (params scale, bias; batch_stats mean, var), so weights and checkpoints
  are interchangeable; evaluation uses the running statistics, as nn.BatchNorm. A group smaller than the
  device's batch normalises each consecutive `group` examples by their own statistics; a larger one averages
  the statistics over `group // batch` consecutive devices of `axis_name`. The running statistics move
  towards the mean of the groups' (DDP keeps rank 0's; the average is its unbiased estimate)."""

  group: int
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  def _statistics(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean, mean of squares) per group, [groups, ..., channels] broadcastable against the grouped x."""
    batch = x.shape[0]
    if self.group <= batch:
      if batch % self.group:
        raise ValueError(f'batch_norm_group={self.group} does not divide the per-device batch of {batch}.')
      grouped = x.reshape((batch // self.group, self.group) + x.shape[1:])
      axes = tuple(range(1, grouped.ndim - 1))
      return grouped.mean(axes, keepdims=True), (grouped**2).mean(axes, keepdims=True)
    if self.axis_name is None or self.group % batch:
      raise ValueError(
        f'batch_norm_group={self.group} is larger than the per-device batch of {batch}: it must be a multiple '
        f'of it, with the model built for pmap (axis_name set).'
      )
    axes = tuple(range(x.ndim - 1))
    stats = (x.mean(axes, keepdims=True)[None], (x**2).mean(axes, keepdims=True)[None])
    return jax.lax.pmean(stats, self.axis_name, axis_index_groups=_device_groups(self.axis_name, self.group // batch))

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool = False) -> jax.Array:
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,))
    bias = self.param('bias', nn.initializers.zeros, (features,))
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((features,), jnp.float32))
    if use_running_average:
      y = (x - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.epsilon)
      return (y * scale + bias).astype(self.dtype)
    x32 = x.astype(jnp.float32)
    mean, mean2 = self._statistics(x32)
    var = jnp.maximum(mean2 - mean**2, 0.0)  # flax's fast variance
    batch = x.shape[0]
    grouped = x32.reshape((mean.shape[0], -1) + x.shape[1:]) if self.group <= batch else x32[None]
    y = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    if not self.is_initializing():
      group_mean, group_var = mean.reshape(-1, features).mean(0), var.reshape(-1, features).mean(0)
      if self.axis_name is not None:
        group_mean, group_var = jax.lax.pmean((group_mean, group_var), self.axis_name)
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * group_mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * group_var
    return (y * scale + bias).astype(self.dtype)
