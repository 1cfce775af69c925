"""The `.npz` weights of google-research/vision_transformer and big_vision, in isojax's layout.

ViT files are flat arrays keyed like `Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel`,
`embedding/kernel`, `cls`, `Transformer/posembed_input/pos_embedding`, `head/kernel`. Inside
each block the pre-Linen files number submodules with one counter (`LayerNorm_0`,
`MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`), big_vision per type
(`LayerNorm_0`, `MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`); both read the
same. Separate query/key/value projections become isojax's fused `qkv`. Mixer files use
`stem`, `MixerBlock_i/{LayerNorm_0,token_mixing,LayerNorm_1,channel_mixing}` and
`pre_head_layer_norm`.
"""
from __future__ import annotations

import re

import numpy as np


def _strip(flat: dict) -> dict:
  """Drops a leading 'params/' (big_vision) and anything that is not a parameter (optimizer state)."""
  if any(k.startswith('params/') for k in flat):
    flat = {k[len('params/'):]: v for k, v in flat.items() if k.startswith('params/')}
  return flat


def is_vit(flat: dict) -> bool:
  return any('encoderblock_' in k for k in _strip(flat))


def is_mixer(flat: dict) -> bool:
  return any(k.startswith('MixerBlock_') for k in _strip(flat))


def _numbered(names, prefix):
  return sorted((n for n in names if n.startswith(prefix)), key=lambda n: int(n.rsplit('_', 1)[1]))


def vit(flat: dict) -> dict[str, np.ndarray]:
  """Official ViT arrays -> isojax paths ('block_0/token_mixing/attention/qkv/kernel', ...)."""
  flat = _strip(flat)
  out = {}
  renames = {'embedding/': 'stem/patch_embed/embedding/', 'cls': 'stem/cls',
             'Transformer/posembed_input/pos_embedding': 'stem/pos_embedding', 'pos_embedding': 'stem/pos_embedding',
             'Transformer/encoder_norm/': 'final_norm/', 'pre_logits/': 'pre_logits/', 'head/': 'head/',
             'MAPHead_0/': 'map_head/'}
  blocks: dict[int, dict[str, np.ndarray]] = {}
  for key, value in flat.items():
    match = re.match(r'Transformer/encoderblock_(\d+)/(.*)', key)
    if match:
      blocks.setdefault(int(match.group(1)), {})[match.group(2)] = np.asarray(value)
      continue
    for old, new in renames.items():
      if key == old or (old.endswith('/') and key.startswith(old)):
        out[new + key[len(old):]] = np.asarray(value)
        break
    else:
      raise ValueError(f'Unexpected array {key!r} in a ViT checkpoint.')
  for i, block in sorted(blocks.items()):
    modules = {k.split('/')[0] for k in block}
    norm1, norm2 = _numbered(modules, 'LayerNorm_')
    (attention,), (mlp,) = _numbered(modules, 'MultiHeadDotProductAttention_'), _numbered(modules, 'MlpBlock_')
    get = lambda module, name: block[f'{module}/{name}']
    prefix = f'block_{i}'
    for norm, new in ((norm1, 'norm1'), (norm2, 'norm2')):
      out[f'{prefix}/{new}/scale'], out[f'{prefix}/{new}/bias'] = get(norm, 'scale'), get(norm, 'bias')
    width = get(attention, 'query/kernel').shape[0]
    out[f'{prefix}/token_mixing/attention/qkv/kernel'] = np.concatenate(
        [get(attention, f'{p}/kernel').reshape(width, -1) for p in ('query', 'key', 'value')], axis=1)
    out[f'{prefix}/token_mixing/attention/qkv/bias'] = np.concatenate(
        [get(attention, f'{p}/bias').reshape(-1) for p in ('query', 'key', 'value')])
    out[f'{prefix}/token_mixing/attention/out/kernel'] = get(attention, 'out/kernel').reshape(-1, width)
    out[f'{prefix}/token_mixing/attention/out/bias'] = get(attention, 'out/bias')
    for dense in ('Dense_0', 'Dense_1'):
      for name in ('kernel', 'bias'):
        out[f'{prefix}/channel_mixing/{dense}/{name}'] = get(mlp, f'{dense}/{name}')
  return out


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
