"""ResMLP (Touvron et al. 2021): one linear layer across tokens mixes them.

Follows timm/models/mlp_mixer.py at aa4b585 (the port of facebookresearch/deit resmlp_models.py
that timm's and the authors' weights load into): `Affine` normalisation, x * alpha + beta (l.105-121);
`ResBlock` (l.124-171): x + ls1 * linear_tokens(norm1(x) across tokens), then
x + ls2 * Mlp(norm2(x)) with exact GELU (torch `nn.GELU`) and a 4x MLP; an `Affine` after the
last block, global average pooling, a linear head (l.339-341). LayerScale starts at 1e-4 for 12
blocks, 1e-5 for 24 and 1e-6 for 36 and for ResMLP-B24 (`resmlp_*_224`, l.786-830); other shapes
take 1e-4 / 1e-5 / 1e-6 by depth up to 12 / 24 / beyond. Initialisers are
timm's `_init_weights` (l.519-556): xavier-uniform linears with zero biases except the MLP's
(N(0, 1e-6)), lecun-normal patch embedding, zero head. Stochastic depth is the same rate in every
block (timm l.331-341 and deit's `dpr = [drop_path_rate] * depth`), not the linear ramp of ViT.

Names: `ResMLP-S12`, `-S24`, `-S36` (width 384, patch 16), `ResMLP-B24` (width 768, patch 8) or
`ResMLP-{width}x{depth}/{patch}` (`-r{ratio}` when the MLP is not 4x).

Weight files: timm `resmlp_*` state dicts (`stem.proj`, `blocks.i.{norm1, linear_tokens, norm2, mlp_channels,
ls1, ls2}`, `norm`, `head`), and the authors' (facebookresearch/deit resmlp_models.py: `patch_embed.`, `attn.`,
`mlp.`, `gamma_1`), renamed to timm's as timm's `checkpoint_filter_fn` does (mlp_mixer.py l.559-573).
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
from isojax.models.layers import XAVIER, ZEROS, Dense, MlpBlock
from isojax.models.mixer import on_tokens, timm_block_variant
from isojax.models.naming import PATCH_PARAMETRIC, SizedNames, Suffix

SIZES = {  # width, depth, patch: timm resmlp_12/24/36/big_24_224, mlp_mixer.py l.786-830
  'S12': dict(hidden_size=384, depth=12, patch_size=16),
  'S24': dict(hidden_size=384, depth=24, patch_size=16),
  'S36': dict(hidden_size=384, depth=36, patch_size=16),
  'B24': dict(hidden_size=768, depth=24, patch_size=8),
}
# ResBlock's default 1e-4 (l.135) or the model's partial(init_values=)
_LAYER_SCALE = {'S12': 1e-4, 'S24': 1e-5, 'S36': 1e-6, 'B24': 1e-6}
NAMES = SizedNames('ResMLP', SIZES, (Suffix('r', 'mlp_ratio', lambda f: 4),), patch=PATCH_PARAMETRIC)
VARIANTS = {f'ResMLP-{size}': dict(SIZES[size], mlp_ratio=4, layer_scale_init=_LAYER_SCALE[size]) for size in SIZES}
SOURCE = 'timm/models/mlp_mixer.py Affine, ResBlock, resmlp_*_224 (port of facebookresearch/deit resmlp_models.py)'


def layer_scale_for_depth(depth: int) -> float:
  """LayerScale start of a shape timm does not publish: as its S12/S24/S36, 1e-4 up to 12 blocks,
  1e-5 up to 24, else 1e-6."""
  return 1e-4 if depth <= 12 else 1e-5 if depth <= 24 else 1e-6


class Affine(nn.Module):
  """ResMLP's normalisation: a learned per-channel scale and shift, no statistics."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    alpha = self.param('alpha', nn.initializers.ones, (x.shape[-1],))
    beta = self.param('beta', nn.initializers.zeros, (x.shape[-1],))
    return (x * alpha + beta).astype(self.dtype)


class LinearTokenMixer(nn.Module):
  """Token mixer: one linear layer [tokens -> tokens] applied to every channel."""

  dtype: Any = jnp.float32
  kernels: str = REFERENCE

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = Dense(
      x.shape[1], kernel_init=XAVIER, bias_init=ZEROS, dtype=self.dtype, kernels=self.kernels, name='linear_tokens'
    )(jnp.swapaxes(x, 1, 2))
    return jnp.swapaxes(y, 1, 2)


def resmlp(
  num_classes: int,
  *,
  hidden_size: int,
  depth: int,
  patch_size: int,
  mlp_ratio: int = 4,
  layer_scale_init: Optional[float] = None,
  drop_path_rate: float = 0.0,
  dropout_rate: float = 0.0,
  remat: bool = False,
  remat_policy: str = 'nothing_saveable',
  scan: bool = False,
  head_bias_init: float = 0.0,
  dtype: Any = jnp.float32,
  kernels: str = REFERENCE,
) -> Isotropic:
  """A ResMLP; `layer_scale_init=None` (an unpublished shape) takes 1e-4 / 1e-5 / 1e-6 by depth."""
  norm = functools.partial(Affine, dtype=dtype)
  block = functools.partial(
    MixingBlock,
    norm=norm,
    layer_scale_init=layer_scale_for_depth(depth) if layer_scale_init is None else layer_scale_init,
    token_mixer=functools.partial(LinearTokenMixer, dtype=dtype, kernels=kernels),
    channel_mixer=functools.partial(
      MlpBlock, mlp_ratio * hidden_size, dropout_rate=dropout_rate, approximate_gelu=False, dtype=dtype, kernels=kernels
    ),
  )
  return on_tokens(
    num_classes,
    block,
    norm,
    hidden_size,
    patch_size,
    depth,
    drop_path_rate,
    'constant',
    remat,
    remat_policy,
    scan,
    head_bias_init,
    dtype,
    kernels,
  )


# --- weight files ----------------------------------------------------------------------------------------------


def _is_facebook(state: Tensors) -> bool:
  """facebookresearch/deit's names: its token mixer is one Linear called `attn`, its LayerScale `gamma_1`."""
  return 'blocks.0.attn.weight' in state and 'blocks.0.gamma_1' in state


def timm_names(state: Tensors) -> dict:
  """facebookresearch/deit's ResMLP names -> timm's, as timm's mlp_mixer.py checkpoint_filter_fn (l.559-573)."""
  if not _is_facebook(state):
    return dict(state)
  renamed = {}
  for key, value in state.items():
    for old, new in (
      ('patch_embed.', 'stem.'),
      ('attn.', 'linear_tokens.'),
      ('mlp.', 'mlp_channels.'),
      ('gamma_', 'ls'),
    ):
      key = key.replace(old, new)
    renamed[key] = value
  return renamed


def _affine(state: Tensors, name: str) -> dict:
  return {'alpha': state[f'{name}.alpha'].reshape(-1), 'beta': state[f'{name}.beta'].reshape(-1)}  # [1, 1, C]


def timm_params(state: Tensors) -> dict:
  """A timm ResMLP's state dict (timm's names) -> isojax's parameters."""
  params: dict[str, Any] = {'stem': {'patch_embed': convert.patch_embedding(state, 'stem.proj')}}
  for i in range(convert.block_count(state, r'blocks\.(\d+)\.')):
    b = f'blocks.{i}'
    params[f'block_{i}'] = {
      'norm1': _affine(state, f'{b}.norm1'),
      'norm2': _affine(state, f'{b}.norm2'),
      'token_mixing': {'linear_tokens': convert.linear(state, f'{b}.linear_tokens')},
      'channel_mixing': {
        'Dense_0': convert.linear(state, f'{b}.mlp_channels.fc1'),
        'Dense_1': convert.linear(state, f'{b}.mlp_channels.fc2'),
      },
      'ls1': {'scale': state[f'{b}.ls1']},
      'ls2': {'scale': state[f'{b}.ls2']},
    }
  params['final_norm'] = _affine(state, 'norm')
  if 'head.weight' in state:
    params['head'] = convert.linear(state, 'head')
  return params


def from_timm(state: Tensors) -> Weights:
  """A timm (or facebookresearch/deit) ResMLP state dict -> `Weights`."""
  state = timm_names(state)
  variables = convert.read_all(state, lambda s: {'params': timm_params(s)}, 'timm resmlp')
  return timm_block_variant(state, variables, 'resmlp', 'linear_tokens', 'The token-mixing layer')


def _is_timm_resmlp(state: Tensors) -> bool:
  return convert.has_key(state, '.linear_tokens.weight') or _is_facebook(state)


FAMILY = Family.named('resmlp', resmlp, NAMES, VARIANTS, SOURCE, readers={TIMM: Reader(_is_timm_resmlp, from_timm)})
