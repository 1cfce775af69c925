"""The `.npz` weights of google-research/vision_transformer and big_vision, in isojax's layout.

ViT files are flat arrays keyed like `Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel`,
`embedding/kernel`, `cls`, `Transformer/posembed_input/pos_embedding`, `head/kernel`. Inside
each block the pre-Linen files number submodules with one counter (`LayerNorm_0`,
`MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`), big_vision per type
(`LayerNorm_0`, `MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`); both read the
same. big_vision's `scan=True` files stack the blocks (`Transformer/encoderblock/...` with a
leading depth axis); they are unstacked. Separate query/key/value projections become isojax's
fused `qkv`. Mixer files use `stem`, `MixerBlock_i/{LayerNorm_0,token_mixing,LayerNorm_1,
channel_mixing}` and `pre_head_layer_norm`.

What the file shows about the architecture (`describe`):
- vision_transformer `models_vit.py`: a class token ('token') has its position embedding
  (`[1, 1 + h*w, C]`, l.216-217 and 263-272); no class token means 'gap'.
- big_vision `models/vit.py`: the position embedding is added before the class token
  (`[1, h*w, C]`, l.219-225: pool_type 'tok'); 'map' has `MAPHead_0` (l.165-182) whose MLP
  width is the encoder's (l.238); 'sincos2d' files have no position embedding at all (l.47-53).
- Heads come from the query kernel `[C, heads, C/heads]`; both use tanh-approximate GELU
  (`nn.gelu`) and flax's LayerNorm epsilon 1e-6.
- vision_transformer's hybrids (`R50+ViT-B_16.npz`, models_vit.py l.230-260) add a ResNet:
  `conv_root`, `gn_root`, `block{s}/unit{u}/{conv,gn}{1,2,3,_proj}`; its stages are counted from
  the units, its width from `conv_root`, and the image size is the position embedding's grid times
  the ResNet's stride (4 x 2^(stages - 1)) times the patch.
"""
from __future__ import annotations

import math
import re
from typing import Optional

import numpy as np
from flax import traverse_util

from isojax.weights.formats import KeyTracker, Weights, block_count, grid_side, square_patch


def _strip(flat: dict) -> dict:
  """Drops a leading 'params/' (big_vision) and anything that is not a parameter (optimizer state);
  unstacks big_vision's scanned blocks."""
  if any(k.startswith('params/') for k in flat):
    flat = {k[len('params/'):]: v for k, v in flat.items() if k.startswith('params/')}
  scanned = 'Transformer/encoderblock/'
  if any(k.startswith(scanned) for k in flat):
    unstacked = {}
    for key, value in flat.items():
      if key.startswith(scanned):
        for i, layer in enumerate(np.asarray(value)):
          unstacked[f'Transformer/encoderblock_{i}/{key[len(scanned):]}'] = layer
      else:
        unstacked[key] = value
    flat = unstacked
  return flat


def is_vit(flat: dict) -> bool:
  return any('encoderblock' in k for k in _strip(flat))


def is_mixer(flat: dict) -> bool:
  return any(k.startswith('MixerBlock_') for k in _strip(flat))


def _numbered(names, prefix):
  return sorted((n for n in names if n.startswith(prefix)), key=lambda n: int(n.rsplit('_', 1)[1]))


def _refuse_unread(flat: KeyTracker, what: str) -> None:
  unread = flat.unread()
  if unread:
    raise ValueError(f'{len(unread)} array(s) of this {what} checkpoint have no place in isojax: {unread[:8]}'
                     f'{" ..." if len(unread) > 8 else ""}. It is a variant isojax does not implement.')


def _attention(flat: KeyTracker, prefix: str, width: int) -> dict[str, np.ndarray]:
  get = lambda name: np.asarray(flat[f'{prefix}/{name}'])
  return {'qkv/kernel': np.concatenate([get(f'{p}/kernel').reshape(width, -1) for p in ('query', 'key', 'value')], 1),
          'qkv/bias': np.concatenate([get(f'{p}/bias').reshape(-1) for p in ('query', 'key', 'value')]),
          'out/kernel': get('out/kernel').reshape(-1, width), 'out/bias': get('out/bias')}


def vit(flat: dict) -> dict[str, np.ndarray]:
  """Official ViT arrays -> isojax paths ('block_0/token_mixing/attention/qkv/kernel', ...)."""
  flat = KeyTracker(_strip(flat))
  out = {}
  renames = {'embedding/': 'stem/patch_embed/embedding/', 'cls': 'stem/cls',
             'Transformer/posembed_input/pos_embedding': 'stem/pos_embedding', 'pos_embedding': 'stem/pos_embedding',
             'Transformer/encoder_norm/': 'final_norm/', 'pre_logits/': 'pre_logits/', 'head/': 'head/',
             'MAPHead_0/': 'map_head/'}   # big_vision's attention pooling: same module names inside
  for key in list(flat):
    for old, new in renames.items():
      if key == old or (old.endswith('/') and key.startswith(old)):
        out[new + key[len(old):]] = np.asarray(flat[key])
    if re.match(r'(conv_root|gn_root|block\d+)/', key):   # a hybrid's ResNet (models_vit.py l.230-260)
      out['stem/backbone/' + key] = np.asarray(flat[key])
  width = flat['embedding/kernel'].shape[-1]
  for i in range(block_count(flat, r'Transformer/encoderblock_(\d+)/')):
    block = f'Transformer/encoderblock_{i}'
    modules = {k[len(block) + 1:].split('/')[0] for k in flat if k.startswith(block + '/')}
    norm1, norm2 = _numbered(modules, 'LayerNorm_')
    (attention,), (mlp,) = _numbered(modules, 'MultiHeadDotProductAttention_'), _numbered(modules, 'MlpBlock_')
    prefix = f'block_{i}'
    for norm, new in ((norm1, 'norm1'), (norm2, 'norm2')):
      for name in ('scale', 'bias'):
        out[f'{prefix}/{new}/{name}'] = flat[f'{block}/{norm}/{name}']
    for name, value in _attention(flat, f'{block}/{attention}', width).items():
      out[f'{prefix}/token_mixing/attention/{name}'] = value
    for dense in ('Dense_0', 'Dense_1'):
      for name in ('kernel', 'bias'):
        out[f'{prefix}/channel_mixing/{dense}/{name}'] = flat[f'{block}/{mlp}/{dense}/{name}']
  _refuse_unread(flat, 'ViT')
  return {k: np.asarray(v) for k, v in out.items()}


def mixer(flat: dict) -> dict[str, np.ndarray]:
  """Official MLP-Mixer arrays -> isojax paths."""
  flat = _strip(flat)
  out = {}
  for key, value in flat.items():
    value = np.asarray(value)
    match = re.match(r'MixerBlock_(\d+)/(LayerNorm_0|LayerNorm_1|token_mixing|channel_mixing)/(.*)', key)
    if match:
      i, module, rest = match.groups()
      module = {'LayerNorm_0': 'norm1', 'LayerNorm_1': 'norm2', 'token_mixing': 'token_mixing/mlp',
                'channel_mixing': 'channel_mixing'}[module]
      out[f'block_{i}/{module}/{rest}'] = value
    elif key.startswith('stem/'):
      out['stem/patch_embed/embedding/' + key[len('stem/'):]] = value
    elif key.startswith('pre_head_layer_norm/'):
      out['final_norm/' + key[len('pre_head_layer_norm/'):]] = value
    elif key.startswith('head/'):
      out[key] = value
    else:
      raise ValueError(f'Unexpected array {key!r} in a Mixer checkpoint.')
  return out


def _classes(flat: dict, key: str = 'head/kernel') -> Optional[int]:
  return int(flat[key].shape[-1]) if key in flat else None


def describe_vit(flat: dict) -> Weights:
  """The ViT a vision_transformer or big_vision file holds, and its variables."""
  params = vit(flat)
  patch = square_patch(*params['stem/patch_embed/embedding/kernel'].shape[:2])
  width = params['stem/patch_embed/embedding/kernel'].shape[-1]
  raw = _strip(flat)
  query = next(np.asarray(v) for k, v in raw.items() if re.match(r'Transformer/encoderblock_0/MultiHead\w+/query/kernel', k))
  class_token = 'stem/cls' in params
  classifier = 'token' if class_token else 'map' if 'map_head/probe' in params else 'gap'
  posemb = 'learn' if 'stem/pos_embedding' in params else 'sincos2d'
  image_size, posemb_class_token = None, True
  if posemb == 'learn':
    tokens = params['stem/pos_embedding'].shape[1]
    side = math.isqrt(tokens)
    with_class = class_token and side * side != tokens
    image_size = patch * grid_side(tokens - with_class, 'The position embedding')
    posemb_class_token = with_class if class_token else True
  elif class_token:
    posemb_class_token = False     # big_vision adds sin-cos position embeddings before the class token
  stages = _hybrid_stages(params)
  if stages is not None:   # the position embedding counts tokens of the backbone's grid, 4 x 2^(n-1) finer
    image_size = image_size and image_size * (4 * 2 ** (len(stages) - 1) if stages else 4)
  fields = dict(hidden_size=int(width), depth=block_count(params, r'block_(\d+)/'), num_heads=int(query.shape[1]),
                mlp_dim=int(params['block_0/channel_mixing/Dense_0/kernel'].shape[-1]), patch_size=patch,
                classifier=classifier, posemb=posemb, posemb_class_token=posemb_class_token,
                representation_size=_classes(params, 'pre_logits/kernel'),
                approximate_gelu=True, layernorm_epsilon=1e-6)
  family = 'vit'
  if stages is not None:
    family = 'hybrid'
    fields = {k: v for k, v in fields.items() if k not in ('posemb', 'posemb_class_token', 'approximate_gelu',
                                                           'layernorm_epsilon')}
    fields.update(resnet_stages=stages, width_factor=params['stem/backbone/conv_root/kernel'].shape[-1] / 64)
  return Weights({'params': traverse_util.unflatten_dict(params, sep='/')}, family, fields, _classes(params), image_size,
                 {})


def _hybrid_stages(params: dict) -> Optional[tuple[int, ...]]:
  """A hybrid's units per stage (`stem/backbone/block{s}/unit{u}`), or None when there is no backbone."""
  if 'stem/backbone/conv_root/kernel' not in params:
    return None
  last = lambda pattern: max((int(m[1]) for k in params if (m := re.match(pattern, k))), default=0)   # 1-based
  return tuple(last(rf'stem/backbone/block{s}/unit(\d+)/') for s in range(1, last(r'stem/backbone/block(\d+)/') + 1))


def describe_mixer(flat: dict) -> Weights:
  """The MLP-Mixer a vision_transformer file holds, and its variables."""
  params = mixer(flat)
  stem = params['stem/patch_embed/embedding/kernel']
  patch, tokens_in = square_patch(*stem.shape[:2]), params['block_0/token_mixing/mlp/Dense_0/kernel'].shape[0]
  fields = dict(hidden_size=int(stem.shape[-1]), depth=block_count(params, r'block_(\d+)/'),
                tokens_mlp_dim=int(params['block_0/token_mixing/mlp/Dense_0/kernel'].shape[-1]),
                channels_mlp_dim=int(params['block_0/channel_mixing/Dense_0/kernel'].shape[-1]), patch_size=patch,
                approximate_gelu=True, layernorm_epsilon=1e-6)
  return Weights({'params': traverse_util.unflatten_dict(params, sep='/')}, 'mixer', fields, _classes(params),
                 patch * grid_side(tokens_in, 'The token-mixing MLP'), {})


def describe(flat: dict) -> Weights:
  """A vision_transformer/big_vision `.npz`'s arrays -> `Weights` (variables and architecture)."""
  if is_vit(flat):
    return describe_vit(flat)
  if is_mixer(flat):
    return describe_mixer(flat)
  raise ValueError(f'Neither a ViT nor a Mixer in the official layout (first keys: {sorted(flat)[:5]}).')
