"""Starting from pretrained weights: `load(path, model, image_size) -> variables` for `model`.

Fine-tuning semantics (as in the ViT paper): when the class count differs the head is
re-initialised (as a fresh model of that family starts it: zeros for ViT and Mixer); when the image size differs, learned
position embeddings are resized bilinearly over their 2D grid, keeping the class token.
Any other mismatch is an error naming the first parameter that does not fit.

Sources: the workdir of an isojax run (its latest checkpoint); the `.npz` files published by
google-research/vision_transformer and big_vision for ViT and MLP-Mixer (formats/official.py);
timm state dicts for vit_*, mixer_* and convmixer_* in `.pth`, `.bin` or `.safetensors`
(formats/timm.py; read without torch).
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Parameters that are replaced, not loaded, when their shape differs from the target's.
REINIT_ON_MISMATCH = ('head/', 'pre_logits/')


def _flatten(tree: Any) -> dict[str, Any]:
  return {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


def resize_posemb(posemb: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
  """[1, (1+)g*g, C] -> [1, (1+)G*G, C]: bilinear over the 2D grid, class token kept as is."""
  tokens, width = target_shape[1], target_shape[2]
  extra = posemb.shape[1] - math.isqrt(posemb.shape[1]) ** 2          # a leading class token
  target_extra = tokens - math.isqrt(tokens) ** 2
  if extra != target_extra or posemb.shape[2] != width or extra > 1:
    raise ValueError(f'Cannot resize position embedding {posemb.shape} to {target_shape}.')
  head, grid = posemb[:, :extra], posemb[:, extra:]
  old, new = math.isqrt(grid.shape[1]), math.isqrt(tokens - extra)
  grid = grid.reshape(1, old, old, width)
  grid = jax.image.resize(grid, (1, new, new, width), method='bilinear')
  return np.concatenate([head, np.asarray(grid).reshape(1, new * new, width)], axis=1)


def adapt(source: dict, target: dict, strict: bool = True) -> dict:
  """`target`-shaped variables filled from `source` with the fine-tuning rules above.

  Every tensor of `source` must be used: one the model has no place for (LayerScale, fc_norm,
  pre_logits, a learned position embedding for a sin-cos model, ...) means the model is not
  configured as the weights were trained, and fails the load, listing the unused and the
  missing ones. `strict=False` loads anyway and reports them as a warning.
  """
  src, out, used, missing = _flatten(source), {}, set(), []
  for path, init in _flatten(target).items():
    if path not in src:
      if path.startswith(tuple(f'params/{p}' for p in REINIT_ON_MISMATCH)):
        out[path] = init
        missing.append(path)
        continue
      raise ValueError(f'Pretrained weights have no {path!r} (shape {tuple(np.shape(init))}); '
                       f'they are for another architecture.')
    used.add(path)
    value = np.asarray(src[path])
    if value.shape == tuple(np.shape(init)):
      out[path] = value.astype(np.asarray(init).dtype)
    elif path.split('/', 1)[1].startswith(REINIT_ON_MISMATCH):
      out[path] = init   # a fresh layer (isojax heads start at zero, as the ViT paper fine-tunes)
    elif path.endswith('pos_embedding'):
      out[path] = resize_posemb(value, tuple(np.shape(init))).astype(np.asarray(init).dtype)
    else:
      raise ValueError(f'Pretrained {path!r} has shape {value.shape}, but the model expects '
                       f'{tuple(np.shape(init))}; they are for another architecture.')
  unused = sorted(set(src) - used)
  if unused:
    message = (f'{len(unused)} tensor(s) in the weights are not used by the model: {unused[:8]}'
               f'{" ..." if len(unused) > 8 else ""}; re-initialised instead of loaded: {missing}. The model '
               f'is not configured as the weights were trained (LayerScale, fc_norm, pre_logits, pooling, '
               f'position embedding?).')
    if strict:
      raise ValueError(message + ' Configure the model to match, or load with strict=False.')
    warnings.warn(message)
  return flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in out.items()})


def read(path: str) -> dict:
  """The variables stored at `path`, as nested dicts of host arrays, in isojax's layout."""
  if os.path.isdir(path) and os.path.exists(os.path.join(path, 'config.json')):
    from isojax import runs
    _, variables, _ = runs.load(path)
    return variables
  if not os.path.exists(path):
    raise FileNotFoundError(f'No pretrained weights at {path!r}.')
  if path.endswith('.npz'):
    return {'params': _nest(_read_official(path))}
  if path.endswith(('.pth', '.bin', '.pt', '.safetensors')):
    from isojax.formats import timm, torchfile
    state = torchfile.read_safetensors(path) if path.endswith('.safetensors') else torchfile.read_torch(path)
    return timm.convert(state)
  raise ValueError(f'Cannot read pretrained weights from {path!r}: expected the workdir of an isojax run, '
                   f'an official .npz, or a timm .pth/.bin/.safetensors file.')


def _nest(flat: dict[str, np.ndarray]) -> dict:
  return flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})


def _read_official(path: str) -> dict[str, np.ndarray]:
  from isojax.formats import official
  try:
    with np.load(path, allow_pickle=False) as archive:
      flat = {k: archive[k] for k in archive.files}
  except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError, OSError: a broken file
    raise ValueError(f'Cannot read {path!r} as a .npz archive ({type(e).__name__}: {e}); '
                     f'is the file complete?') from None
  if official.is_vit(flat):
    return official.vit(flat)
  if official.is_mixer(flat):
    return official.mixer(flat)
  raise ValueError(f'{path!r} holds neither a ViT nor a Mixer in the official layout '
                   f'(first keys: {sorted(flat)[:5]}).')


def load(path: str, model: nn.Module, image_size: int, channels: int = 3, strict: bool = True) -> dict:
  """Variables for `model` at `image_size`, initialised from the weights at `path` (see `adapt`)."""
  images = jnp.zeros((1, image_size, image_size, channels))
  fresh = jax.jit(lambda: model.init(jax.random.PRNGKey(0), images, train=False))()   # re-initialised layers
  return adapt(read(path), jax.device_get(fresh), strict=strict)
