"""Vision Transformer (Dosovitskiy et al. 2020): attention mixes tokens.

Structure, names and initialisers follow google-research/vision_transformer
vit_jax/models_vit.py: pre-norm blocks with LayerNorm(eps=1e-6) (flax's default),
tanh-approximate GELU (`nn.gelu`, l.90), xavier-uniform kernels for q, k, v, out
(l.141) and the MLP (l.74), MLP biases N(0, 1e-6) (l.77), position embedding
N(0, 0.02) (l.192), zero class token (l.281), zero head (l.306), lecun-normal patch
embedding (nn.Conv default, l.264), tanh pre-logits (l.297-298). Sizes (Ti/S/M/B/L/So400m/H/g/G):
big_vision/models/vit.py `decode_variant` (l.297-300; Table 2 of arXiv:2106.04560); `g` and `G` are two
models, so their letter's case is part of the name.

Names: `ViT-{Ti,S,M,B,L,So400m,H,g,G}/{patch}` or, for other shapes, `ViT-{width}x{depth}/{patch}`
with `-h{heads}` and `-m{mlp_dim}` when they differ from width/64 and 4 x width.

Weight files (the readers at the end):
- vision_transformer and big_vision `.npz`: flat arrays keyed like `Transformer/encoderblock_0/MlpBlock_3/Dense_0/
  kernel`, `embedding/kernel`, `cls`, `Transformer/posembed_input/pos_embedding`, `head/kernel`. Inside each block
  the pre-Linen files number submodules with one counter (`LayerNorm_0`, `MultiHeadDotProductAttention_1`,
  `LayerNorm_2`, `MlpBlock_3`), big_vision per type (`LayerNorm_0`, `MultiHeadDotProductAttention_0`,
  `LayerNorm_1`, `MlpBlock_0`); both read the same. big_vision's `scan=True` files stack the blocks
  (`Transformer/encoderblock/...` with a leading depth axis); they are unstacked. Separate query/key/value
  projections become the fused `qkv`. What the file shows: vision_transformer `models_vit.py` gives a class
  token ('token') its position embedding (`[1, 1 + h*w, C]`, l.216-217 and 263-272), no class token means
  'gap'; big_vision `models/vit.py` adds the position embedding before the class token (`[1, h*w, C]`,
  l.219-225: pool_type 'tok'); 'map' has `MAPHead_0` (l.165-182) whose MLP width is the encoder's (l.238);
  'sincos2d' files have no position embedding (l.47-53). Heads come from the query kernel `[C, heads, C/heads]`;
  both use tanh-approximate GELU (`nn.gelu`) and LayerNorm epsilon 1e-6.
- timm `vit_*` (and `deit3_*`) state dicts: every width, depth, patch and MLP width from the tensors' shapes;
  a `cls_token` means class-token pooling, none average pooling; `fc_norm` means the final LayerNorm runs on
  the pooled vector (timm vision_transformer.py l.800, 879, 902); a `pos_embed` without a slot for the class
  token means it is added before the class token (`no_embed_class`, DeiT III; l.839, 1062); `ls1.gamma`/
  `ls2.gamma` are LayerScale. Not the heads: the fused qkv weight is [3C, C] whatever the heads; isojax takes
  timm's convention for its `vit_*` definitions, width/64 up to 1024 and 16 above (`vit_huge_patch14_224`:
  1280 wide, 16 heads, l.3269), and says so in `Weights.assumed`. timm's GELU is exact (erf), its LayerNorm
  eps 1e-6.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from isojax.kernels import REFERENCE
from isojax.models import convert
from isojax.models.convert import NPZ, TIMM, KeyTracker, Reader, Tensors, Weights
from isojax.models.family import Family
from isojax.models.isotropic import Isotropic, MixingBlock, PoolingHead
from isojax.models.layers import MlpBlock, PatchEmbed, SelfAttention, posemb_sincos_2d
from isojax.models.naming import SizedNames, Suffix

POSEMBS = ('learn', 'sincos2d')

SIZES = {  # width, depth, heads, mlp_dim: big_vision/models/vit.py decode_variant, l.297-300
  'Ti': dict(hidden_size=192, depth=12, num_heads=3, mlp_dim=768),
  'S': dict(hidden_size=384, depth=12, num_heads=6, mlp_dim=1536),
  'M': dict(hidden_size=512, depth=12, num_heads=8, mlp_dim=2048),
  'B': dict(hidden_size=768, depth=12, num_heads=12, mlp_dim=3072),
  'L': dict(hidden_size=1024, depth=24, num_heads=16, mlp_dim=4096),
  'So400m': dict(hidden_size=1152, depth=27, num_heads=16, mlp_dim=4304),  # SigLIP's shape-optimised ViT
  'H': dict(hidden_size=1280, depth=32, num_heads=16, mlp_dim=5120),
  'g': dict(hidden_size=1408, depth=40, num_heads=16, mlp_dim=6144),  # Zhai et al. 2022: 1.0B at /14
  'G': dict(hidden_size=1664, depth=48, num_heads=16, mlp_dim=8192),  # 1.8B at /14; 'g' and 'G' differ by case
}
_PATCHES = {
  'Ti': (16,),
  'S': (32, 16, 14, 8),
  'B': (32, 16, 14, 8),
  'L': (32, 16, 14),
  'So400m': (14, 16),
  'H': (14,),
  'g': (14,),
  'G': (14,),
}
SUFFIXES = (
  Suffix('h', 'num_heads', lambda f: max(f['hidden_size'] // 64, 1)),
  Suffix('m', 'mlp_dim', lambda f: 4 * f['hidden_size']),
)
NAMES = SizedNames('ViT', SIZES, SUFFIXES)
VARIANTS = {
  f'ViT-{size}/{patch}': dict(SIZES[size], patch_size=patch) for size in SIZES for patch in _PATCHES.get(size, ())
}
SOURCE = (
  'google-research/vision_transformer vit_jax/models_vit.py (structure, names, init); '
  'sizes: big_vision/models/vit.py decode_variant'
)


class ViTStem(nn.Module):
  """Patch embedding, optional class token, position embedding, dropout.

  `posemb_class_token=False` adds the position embedding to the patches only, before the
  class token is prepended (big_vision's 'tok' pooling, vit.py l.219-225; DeiT III).
  A `backbone` (a module from images to a feature map) runs before the patch embedding: the hybrid's ResNet.
  """

  hidden_size: int
  patch_size: int
  class_token: bool
  posemb: str = 'learn'
  posemb_class_token: bool = True
  dropout_rate: float = 0.0
  backbone: Optional[nn.Module] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if self.posemb not in POSEMBS:
      raise ValueError(f'Unknown posemb {self.posemb!r}; expected one of {POSEMBS}.')
    if self.backbone is not None:
      images = self.backbone(images)
    x = PatchEmbed(self.hidden_size, self.patch_size, dtype=self.dtype, name='patch_embed')(images)
    batch, h, w, c = x.shape
    x = x.reshape(batch, h * w, c)
    embed_class_token = self.class_token and self.posemb_class_token
    if self.class_token and not embed_class_token:
      x = x + self._posemb(h, w, c, with_class_token=False).astype(x.dtype)
    if self.class_token:
      cls = self.param('cls', nn.initializers.zeros, (1, 1, c))
      x = jnp.concatenate([jnp.tile(cls, (batch, 1, 1)).astype(x.dtype), x], axis=1)
    if embed_class_token or not self.class_token:
      x = x + self._posemb(h, w, c, with_class_token=embed_class_token).astype(x.dtype)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)

  def _posemb(self, h: int, w: int, c: int, with_class_token: bool) -> jax.Array:
    if self.posemb == 'learn':  # N(0, 0.02): vision_transformer models_vit.py l.192 ("from BERT")
      return self.param('pos_embedding', nn.initializers.normal(stddev=0.02), (1, h * w + with_class_token, c))
    pe = posemb_sincos_2d(h, w, c)
    return jnp.concatenate([jnp.zeros((1, 1, c)), pe], axis=1) if with_class_token else jnp.asarray(pe)


class AttentionMixer(nn.Module):
  """Token mixer: self-attention followed by dropout."""

  num_heads: int
  attention_dropout_rate: float = 0.0
  dropout_rate: float = 0.0
  qkv_bias: bool = True
  dtype: Any = jnp.float32
  kernels: str = REFERENCE

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = SelfAttention(
      self.num_heads,
      self.attention_dropout_rate,
      qkv_bias=self.qkv_bias,
      dtype=self.dtype,
      kernels=self.kernels,
      name='attention',
    )(x, train=train)
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


def encoder_block(
  norm: Any,
  num_heads: int,
  mlp_dim: int,
  layer_scale_init: Optional[float],
  dropout_rate: float,
  attention_dropout_rate: float,
  qkv_bias: bool,
  approximate_gelu: bool,
  dtype: Any,
  kernels: str,
) -> Any:
  """A ViT encoder block: x + attention(norm1(x)), then x + MLP(norm2(x)) (models_vit.py Encoder1DBlock)."""
  attention = functools.partial(
    AttentionMixer,
    num_heads=num_heads,
    attention_dropout_rate=attention_dropout_rate,
    dropout_rate=dropout_rate,
    qkv_bias=qkv_bias,
    dtype=dtype,
    kernels=kernels,
  )
  mlp = functools.partial(
    MlpBlock, mlp_dim, dropout_rate=dropout_rate, approximate_gelu=approximate_gelu, dtype=dtype, kernels=kernels
  )
  return functools.partial(
    MixingBlock, norm=norm, layer_scale_init=layer_scale_init, token_mixer=attention, channel_mixer=mlp
  )


def vit(
  num_classes: int,
  *,
  hidden_size: int,
  depth: int,
  num_heads: int,
  mlp_dim: int,
  patch_size: int,
  classifier: str = 'token',
  posemb: str = 'learn',
  posemb_class_token: bool = True,
  representation_size: Optional[int] = None,
  dropout_rate: float = 0.0,
  attention_dropout_rate: float = 0.0,
  drop_path_rate: float = 0.0,
  layer_scale_init: Optional[float] = None,
  approximate_gelu: bool = True,
  layernorm_epsilon: float = 1e-6,
  norm_after_pool: bool = False,
  qkv_bias: bool = True,
  remat: bool = False,
  remat_policy: str = 'nothing_saveable',
  scan: bool = False,
  head_bias_init: float = 0.0,
  dtype: Any = jnp.float32,
  kernels: str = REFERENCE,
) -> Isotropic:
  """A ViT; `classifier` is 'token' (class token), 'gap' or 'map' (attention pooling).

  `norm_after_pool` applies the final LayerNorm to the pooled vector (timm's `fc_norm`);
  `qkv_bias=False` drops the query/key/value biases (timm's `qkv_bias=False` models).
  """
  norm = functools.partial(nn.LayerNorm, epsilon=layernorm_epsilon, dtype=dtype)
  mixing = (layer_scale_init, dropout_rate, attention_dropout_rate, qkv_bias, approximate_gelu, dtype, kernels)
  block = encoder_block(norm, num_heads, mlp_dim, *mixing)
  head = PoolingHead(
    num_classes,
    norm=norm,
    norm_after_pool=norm_after_pool,
    pool=classifier,
    map_heads=num_heads,
    map_mlp_dim=mlp_dim,
    representation_size=representation_size,
    approximate_gelu=approximate_gelu,
    bias_init=nn.initializers.constant(head_bias_init),
    dtype=dtype,
    kernels=kernels,
  )
  # hidden_size, patch_size, class_token, posemb, posemb_class_token, dropout_rate
  stem = ViTStem(hidden_size, patch_size, classifier == 'token', posemb, posemb_class_token, dropout_rate, dtype=dtype)
  stacking: dict[str, Any] = dict(remat=remat, remat_policy=remat_policy, scan=scan)
  return Isotropic(stem, block, head, depth, drop_path_rate=drop_path_rate, dtype=dtype, **stacking)


def attention_heads(model: nn.Module) -> Optional[int]:
  """The attention heads of a model `vit` built (ViT, DeiT III), else None: the one shape its
  parameters do not show (the fused qkv kernel is [width, 3 * width] whatever the heads)."""
  mixer = getattr(getattr(model, 'block', None), 'keywords', {}).get('token_mixer')
  if mixer is None or getattr(mixer, 'func', None) is not AttentionMixer:
    return None
  return mixer.keywords['num_heads']


# --- weight files ----------------------------------------------------------------------------------------------


def unstack_scanned(flat: Tensors) -> dict:
  """big_vision's `scan=True` checkpoints stack the blocks (`Transformer/encoderblock/...`, depth first):
  one `encoderblock_{i}` per layer of the stack."""
  scanned = 'Transformer/encoderblock/'
  unstacked = {}
  for key, value in flat.items():
    if key.startswith(scanned):
      for i, layer in enumerate(np.asarray(value)):
        unstacked[f'Transformer/encoderblock_{i}/{key[len(scanned) :]}'] = layer
    else:
      unstacked[key] = value
  return unstacked


def npz_arrays(flat: Tensors) -> dict:
  """A vision_transformer/big_vision ViT file's parameters: the `params/` prefix dropped, blocks unstacked."""
  return unstack_scanned(convert.without_big_vision_prefix(flat))


def _numbered(names, prefix):
  return sorted((n for n in names if n.startswith(prefix)), key=lambda n: int(n.rsplit('_', 1)[1]))


def _npz_attention(flat: KeyTracker, prefix: str, width: int) -> dict[str, np.ndarray]:
  get = lambda name: np.asarray(flat[f'{prefix}/{name}'])
  return {
    'qkv/kernel': np.concatenate([get(f'{p}/kernel').reshape(width, -1) for p in ('query', 'key', 'value')], 1),
    'qkv/bias': np.concatenate([get(f'{p}/bias').reshape(-1) for p in ('query', 'key', 'value')]),
    'out/kernel': get('out/kernel').reshape(-1, width),
    'out/bias': get('out/bias'),
  }


_NPZ_RENAMES = {
  'embedding/': 'stem/patch_embed/embedding/',
  'cls': 'stem/cls',
  'Transformer/posembed_input/pos_embedding': 'stem/pos_embedding',
  'pos_embedding': 'stem/pos_embedding',
  'Transformer/encoder_norm/': 'final_norm/',
  'pre_logits/': 'pre_logits/',
  'head/': 'head/',
  'MAPHead_0/': 'map_head/',
}  # big_vision's attention pooling: the same module names inside


def _npz_block(flat: KeyTracker, i: int, width: int) -> dict[str, np.ndarray]:
  """`Transformer/encoderblock_{i}` -> `block_{i}`: norms, fused attention, MLP (either numbering)."""
  block, out = f'Transformer/encoderblock_{i}', {}
  modules = {k[len(block) + 1 :].split('/')[0] for k in flat if k.startswith(block + '/')}
  norm1, norm2 = _numbered(modules, 'LayerNorm_')
  (attention,), (mlp,) = _numbered(modules, 'MultiHeadDotProductAttention_'), _numbered(modules, 'MlpBlock_')
  for norm, new in ((norm1, 'norm1'), (norm2, 'norm2')):
    for name in ('scale', 'bias'):
      out[f'block_{i}/{new}/{name}'] = flat[f'{block}/{norm}/{name}']
  for name, value in _npz_attention(flat, f'{block}/{attention}', width).items():
    out[f'block_{i}/token_mixing/attention/{name}'] = value
  for dense in ('Dense_0', 'Dense_1'):
    for name in ('kernel', 'bias'):
      out[f'block_{i}/channel_mixing/{dense}/{name}'] = flat[f'{block}/{mlp}/{dense}/{name}']
  return out


def npz_params(flat: KeyTracker) -> dict[str, np.ndarray]:
  """Official ViT arrays -> isojax paths ('block_0/token_mixing/attention/qkv/kernel', ...)."""
  out = {}
  for key in list(flat):
    for old, new in _NPZ_RENAMES.items():
      if key == old or (old.endswith('/') and key.startswith(old)):
        out[new + key[len(old) :]] = np.asarray(flat[key])
  width = flat['embedding/kernel'].shape[-1]
  for i in range(convert.block_count(flat, r'Transformer/encoderblock_(\d+)/')):
    out.update(_npz_block(flat, i, width))
  return out


def npz_fields(flat: Tensors, params: dict) -> tuple[dict, Optional[int]]:
  """(the ViT's fields, its image size or None) from its official arrays and their isojax `params`."""
  patch = convert.square_patch(*params['stem/patch_embed/embedding/kernel'].shape[:2])
  width = params['stem/patch_embed/embedding/kernel'].shape[-1]
  query = next(
    np.asarray(v) for k, v in flat.items() if re.match(r'Transformer/encoderblock_0/MultiHead\w+/query/kernel', k)
  )
  class_token = 'stem/cls' in params
  classifier = 'token' if class_token else 'map' if 'map_head/probe' in params else 'gap'
  posemb = 'learn' if 'stem/pos_embedding' in params else 'sincos2d'
  image_size, posemb_class_token = None, True
  if posemb == 'learn':
    tokens = params['stem/pos_embedding'].shape[1]
    with_class = class_token and math.isqrt(tokens) ** 2 != tokens
    image_size = patch * convert.grid_side(tokens - with_class, 'The position embedding')
    posemb_class_token = with_class if class_token else True
  elif class_token:
    posemb_class_token = False  # big_vision adds sin-cos position embeddings before the class token
  fields = dict(
    hidden_size=int(width),
    depth=convert.block_count(params, r'block_(\d+)/'),
    num_heads=int(query.shape[1]),
    mlp_dim=int(params['block_0/channel_mixing/Dense_0/kernel'].shape[-1]),
    patch_size=patch,
    classifier=classifier,
    posemb=posemb,
    posemb_class_token=posemb_class_token,
    representation_size=_npz_classes(params, 'pre_logits/kernel'),
    approximate_gelu=True,
    layernorm_epsilon=1e-6,
  )
  return fields, image_size


def _npz_classes(params: dict, key: str = 'head/kernel') -> Optional[int]:
  return int(params[key].shape[-1]) if key in params else None


NPZ_HINT = 'It is a variant isojax does not implement.'


def from_npz(flat: Tensors) -> Weights:
  """The ViT a vision_transformer or big_vision `.npz` holds, and its variables."""
  arrays = KeyTracker(npz_arrays(flat))
  params = npz_params(arrays)
  convert.refuse_unread(arrays, 'array(s) of this ViT checkpoint', NPZ_HINT)
  fields, image_size = npz_fields(arrays, params)
  channels = int(params['stem/patch_embed/embedding/kernel'].shape[2])
  return Weights(
    {'params': traverse_util.unflatten_dict(params, sep='/')},
    'vit',
    fields,
    _npz_classes(params),
    image_size,
    {},
    channels,
  )


def _is_npz_vit(flat: Tensors) -> bool:
  keys = convert.without_big_vision_prefix(flat)
  return convert.has_key(keys, 'encoderblock') and not convert.has_key(keys, 'conv_root/')


def timm_params(state: Tensors) -> dict:
  """A timm VisionTransformer's state dict -> isojax's ViT parameters."""
  params: dict[str, Any] = {'stem': {'patch_embed': convert.patch_embedding(state, 'patch_embed.proj')}}
  if 'cls_token' in state:
    params['stem']['cls'] = state['cls_token']
  if 'pos_embed' in state:
    params['stem']['pos_embedding'] = state['pos_embed']
  for i in range(convert.block_count(state, r'blocks\.(\d+)\.')):
    b = f'blocks.{i}'
    block = {
      'norm1': convert.norm(state, f'{b}.norm1'),
      'norm2': convert.norm(state, f'{b}.norm2'),
      'token_mixing': {
        'attention': {'qkv': convert.linear(state, f'{b}.attn.qkv'), 'out': convert.linear(state, f'{b}.attn.proj')}
      },
      'channel_mixing': {
        'Dense_0': convert.linear(state, f'{b}.mlp.fc1'),
        'Dense_1': convert.linear(state, f'{b}.mlp.fc2'),
      },
    }
    if f'{b}.ls1.gamma' in state:
      block['ls1'], block['ls2'] = {'scale': state[f'{b}.ls1.gamma']}, {'scale': state[f'{b}.ls2.gamma']}
    params[f'block_{i}'] = block
  return convert.timm_head(state, params, norm_name='fc_norm' if 'fc_norm.weight' in state else 'norm')


def timm_heads_for_width(width: int) -> int:
  """timm's attention heads for a `vit_*` of this width (width/64 up to 1024, then 16)."""
  return 16 if width > 1024 else max(width // 64, 1)


TIMM_HINT = (
  'It is a timm variant isojax does not implement (register tokens, attention pooling, pre-norm, q/k norm, ...).'
)


def from_timm(state: Tensors) -> Weights:
  """A timm `vit_*`/`deit3_*` state dict -> `Weights`."""
  variables = convert.read_all(state, lambda s: {'params': timm_params(s)}, 'timm vit', TIMM_HINT)
  embed = state['patch_embed.proj.weight']
  width, patch = int(embed.shape[0]), convert.square_patch(*embed.shape[2:])
  class_token, fc_norm = 'cls_token' in state, 'fc_norm.weight' in state
  if class_token and fc_norm:
    raise ValueError(
      'This timm ViT has a class token but pools by averaging the patch tokens (fc_norm, as MAE '
      'models do); isojax ViTs pool the class token or average every token, not this mix.'
    )
  image_size, posemb_class_token = None, True
  if 'pos_embed' in state:
    tokens = state['pos_embed'].shape[1]
    with_class = class_token and math.isqrt(tokens) ** 2 != tokens
    image_size = patch * convert.grid_side(tokens - with_class, 'The position embedding')
    posemb_class_token = with_class if class_token else True
  heads = timm_heads_for_width(width)
  fields = dict(
    hidden_size=width,
    depth=convert.block_count(state, r'blocks\.(\d+)\.'),
    num_heads=heads,
    mlp_dim=int(state['blocks.0.mlp.fc1.weight'].shape[0]),
    patch_size=patch,
    classifier='token' if class_token else 'gap',
    posemb='learn',
    posemb_class_token=posemb_class_token,
    norm_after_pool=fc_norm,
    qkv_bias='blocks.0.attn.qkv.bias' in state,
    # the loaded gammas replace it; 1e-6 is DeiT III's
    layer_scale_init=1e-6 if 'blocks.0.ls1.gamma' in state else None,
    approximate_gelu=False,
    layernorm_epsilon=1e-6,
  )
  assumed = {
    'num_heads': f'{heads}: a timm file does not store heads; timm vit_* use width/64 up to 1024 '
    f'wide, 16 above. Pass num_heads= if this model was built otherwise.'
  }
  return Weights(variables, 'vit', fields, convert.classes(state), image_size, assumed, int(embed.shape[1]))


def _is_timm_vit(state: Tensors) -> bool:
  return convert.has_key(state, '.attn.qkv.weight') and not convert.has_key(state, 'blocks_token_only.')


READERS = {NPZ: Reader(_is_npz_vit, from_npz), TIMM: Reader(_is_timm_vit, from_timm)}
FAMILY = Family.named('vit', vit, NAMES, VARIANTS, SOURCE, readers=READERS)
