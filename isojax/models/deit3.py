"""DeiT III ("Revenge of the ViT", Touvron et al. 2022): a ViT with LayerScale, its position
embedding added to the patches before the class token is prepended.

Architecture as timm/models/deit.py at aa4b585 `deit3_small_patch16_224` (l.335-341) and
`deit3_base_patch16_224` (l.365-371): timm's VisionTransformer with `no_embed_class=True`,
`init_values=1e-6`, exact GELU, LayerNorm(eps=1e-6), qkv biases, class-token pooling after the
final norm. Built by vit.py's factory (the same modules and parameter names, so timm's deit3_*
files load through the ViT reader).

Deliberate difference: initialisers are isojax's ViT ones (vision_transformer's xavier-uniform
linears, zero class token, N(0, 0.02) position embedding), not timm's trunc-normal(0.02) linears
and N(0, 1e-6) class token; loaded weights are unaffected, a from-scratch run starts differently.

Names: `DeiT3-{S,M,B,L,H}/{patch}` (ViT's sizes) or `DeiT3-{width}x{depth}/{patch}` with `-h{heads}`.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from isojax.kernels import REFERENCE
from isojax.models import vit as _vit
from isojax.models.family import Family
from isojax.models.isotropic import Isotropic
from isojax.models.naming import SizedNames

NAMES = SizedNames('DeiT3', _vit.SIZES, _vit.SUFFIXES)  # ViT's name grammar after 'DeiT3'
VARIANTS = {f'DeiT3-{size}/16': dict(_vit.SIZES[size], patch_size=16) for size in ('S', 'B')}
SOURCE = 'timm/models/deit.py deit3_{small,base}_patch16_224 (VisionTransformer, no_embed_class, init_values=1e-6)'


def deit3(
  num_classes: int,
  *,
  hidden_size: int,
  depth: int,
  num_heads: int,
  mlp_dim: int,
  patch_size: int,
  layer_scale_init: float = 1e-6,
  drop_path_rate: float = 0.0,
  dropout_rate: float = 0.0,
  attention_dropout_rate: float = 0.0,
  remat: bool = False,
  remat_policy: str = 'nothing_saveable',
  scan: bool = False,
  head_bias_init: float = 0.0,
  dtype: Any = jnp.float32,
  kernels: str = REFERENCE,
) -> Isotropic:
  """A DeiT III: class token, position embedding before it, LayerScale, exact GELU."""
  return _vit.vit(
    num_classes,
    hidden_size=hidden_size,
    depth=depth,
    num_heads=num_heads,
    mlp_dim=mlp_dim,
    patch_size=patch_size,
    classifier='token',
    posemb='learn',
    posemb_class_token=False,
    layer_scale_init=layer_scale_init,
    approximate_gelu=False,
    layernorm_epsilon=1e-6,
    drop_path_rate=drop_path_rate,
    dropout_rate=dropout_rate,
    attention_dropout_rate=attention_dropout_rate,
    remat=remat,
    remat_policy=remat_policy,
    scan=scan,
    head_bias_init=head_bias_init,
    dtype=dtype,
    kernels=kernels,
  )


# timm's deit3_* files are timm VisionTransformers: the ViT family's timm reader rebuilds them (as a ViT with
# LayerScale, exact GELU and the position embedding before the class token), so DeiT III declares no reader.
FAMILY = Family.named('deit3', deit3, NAMES, VARIANTS, SOURCE)
