"""What every family's weight converters share: the result type, strict key tracking, and the layout changes
between PyTorch state dicts (timm, facebookresearch) or flat `.npz` checkpoints and flax parameters.

A family's converters live in its own file (vit.py: vision_transformer/big_vision `.npz` and timm files;
convmixer.py: timm files; ...), next to the modules whose scope names they write. `isojax.weights` only reads
the files and hands the tensors to the family whose reader claims them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Optional

import numpy as np

Tensors = Mapping[str, Any]  # a file's tensors by name: a state dict, or an .npz's flat arrays


class Weights(NamedTuple):
  """What a weight file holds, in isojax's terms."""

  variables: dict  # {'params': ..., ['batch_stats': ...]} in isojax's layout
  family: str  # the registry family whose modules the variables fit ('vit', 'mixer', ...)
  fields: dict  # the family factory's keyword arguments the file determines
  num_classes: Optional[int]  # None: the file has no head
  image_size: Optional[int]  # None: the weights work at any size (sin-cos or no position embedding)
  assumed: dict  # fields the file cannot show, with why they were chosen
  channels: int = 3  # input channels, from the first convolution


@dataclasses.dataclass(frozen=True)
class Reader:
  """A family's reader of one weight-file format: `claims(tensors)` says whether a file is this family's (the
  readers of a format claim disjoint files), `read(tensors)` converts it."""

  claims: Callable[[Tensors], bool]
  read: Callable[[Tensors], Weights]


# The formats readers are registered for: what `isojax.weights` makes of a file.
TIMM = 'timm'  # a PyTorch state dict (.pth, .pt, .bin, .safetensors): timm's names, or a family's authors'
NPZ = 'npz'  # flat arrays named by flax scope paths: google-research/vision_transformer and big_vision
FORMATS = (TIMM, NPZ)


class KeyTracker(dict):
  """A dict that remembers which keys were read, so a converter can refuse what it left unread."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.read: set = set()

  def __getitem__(self, key):
    self.read.add(key)
    return super().__getitem__(key)

  def unread(self, ignore: Callable[[str], bool] = lambda key: False) -> list:
    return sorted(k for k in self if k not in self.read and not ignore(k))


def refuse_unread(tensors: KeyTracker, what: str, hint: str, ignore: Callable[[str], bool] = lambda k: False) -> None:
  """A converter is strict: a tensor it has no place for is an error naming it, never silently dropped."""
  unread = tensors.unread(ignore)
  if unread:
    raise ValueError(
      f'{len(unread)} {what} have no place in isojax: {unread[:8]}{" ..." if len(unread) > 8 else ""}. {hint}'
    )


TIMM_HINT = 'It is a timm variant isojax does not implement.'


def batchnorm_counter(key: str) -> bool:
  """BatchNorm's step counter, which no flax parameter holds."""
  return key.endswith('num_batches_tracked')


def read_all(
  state: Tensors,
  to_variables: Callable[[KeyTracker], dict],
  what: str,
  hint: str = TIMM_HINT,
  ignore: Callable[[str], bool] = lambda k: False,
) -> dict:
  """`to_variables(state)`, refusing every tensor it left unread (`what` names the file in the error)."""
  tracked = KeyTracker(state)
  variables = to_variables(tracked)
  refuse_unread(tracked, f'tensor(s) of this {what} file', hint, ignore)
  return variables


def block_count(keys: Iterable[str], pattern: str) -> int:
  """How many blocks: 1 + the largest index `pattern`'s first group matches among `keys`."""
  return 1 + max(int(m.group(1)) for k in keys if (m := re.match(pattern, k)))


def grid_side(tokens: int, what: str) -> int:
  """The side of the square grid of `tokens` tokens; isojax builds square inputs only."""
  side = math.isqrt(tokens)
  if side * side != tokens:
    raise ValueError(f'{what} has {tokens} tokens, not a square grid; isojax builds square inputs only.')
  return side


def square_patch(height: int, width: int) -> int:
  """The patch size of a `height` x `width` patch embedding; isojax patches are square."""
  if height != width:
    raise ValueError(f'The patch embedding is {height}x{width}; isojax patches are square.')
  return int(height)


def has_key(tensors: Tensors, fragment: str) -> bool:
  """Whether any tensor name contains `fragment`."""
  return any(fragment in k for k in tensors)


# --- PyTorch layouts ([out, in] linear weights, [out, in, kh, kw] convolutions) -> flax ------------------------


def linear(state: Tensors, name: str) -> dict:
  """A torch nn.Linear `name` as a flax Dense ({'kernel': [in, out], 'bias'}); timm's bias-free ones have no bias."""
  if f'{name}.bias' not in state:
    return {'kernel': state[f'{name}.weight'].T}
  return {'kernel': state[f'{name}.weight'].T, 'bias': state[f'{name}.bias']}


def norm(state: Tensors, name: str) -> dict:
  """A torch LayerNorm/GroupNorm `name` as flax's {'scale', 'bias'}."""
  return {'scale': state[f'{name}.weight'], 'bias': state[f'{name}.bias']}


def conv_kernel(weight: np.ndarray) -> np.ndarray:
  """[out, in, kh, kw] -> [kh, kw, in, out]."""
  return np.transpose(weight, (2, 3, 1, 0))


def conv(state: Tensors, name: str) -> dict:
  """A torch Conv2d `name` (with its bias) as a flax Conv."""
  return {'kernel': conv_kernel(state[f'{name}.weight']), 'bias': state[f'{name}.bias']}


def batchnorm(state: Tensors, name: str) -> tuple[dict, dict]:
  """A torch BatchNorm2d `name` as flax's (params {'scale', 'bias'}, batch_stats {'mean', 'var'})."""
  params = {'scale': state[f'{name}.weight'], 'bias': state[f'{name}.bias']}
  stats = {'mean': state[f'{name}.running_mean'], 'var': state[f'{name}.running_var']}
  return params, stats


def patch_embedding(state: Tensors, name: str) -> dict:
  """A torch patch-embedding Conv2d as isojax's `PatchEmbed` ({'embedding': conv})."""
  return {'embedding': conv(state, name)}


def timm_head(state: Tensors, params: dict, norm_name: str = 'norm', head: str = 'head') -> dict:
  """`params` with timm's final norm as `final_norm` and its classifier, when the file has one, as `head`."""
  params['final_norm'] = norm(state, norm_name)
  if f'{head}.weight' in state:
    params['head'] = linear(state, head)
  return params


def classes(state: Tensors, key: str = 'head.weight', axis: int = 0) -> Optional[int]:
  """The classes of the head tensor `key` (None when the file has no head)."""
  return int(state[key].shape[axis]) if key in state else None


# --- the .npz checkpoints of google-research/vision_transformer and big_vision -------------------------------


def without_big_vision_prefix(flat: Tensors) -> dict:
  """big_vision saves `params/...` beside the optimizer state: its parameters with the prefix dropped."""
  if any(k.startswith('params/') for k in flat):
    return {k[len('params/') :]: v for k, v in flat.items() if k.startswith('params/')}
  return dict(flat)
