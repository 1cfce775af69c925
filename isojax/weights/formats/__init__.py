"""Readers that turn published weight files into isojax's parameter layout.

Each reader returns a `Weights`: the variables in isojax's layout plus the architecture the file
itself describes (family and factory fields, class count, image size), so that
`isojax.weights.pretrained.create(path)` needs no hand-set flags. Readers are strict: a tensor they have
no place for is an error naming it, never silently dropped.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, NamedTuple, Optional


class Weights(NamedTuple):
  variables: dict                 # {'params': ..., ['batch_stats': ...]} in isojax's layout
  family: str                     # 'vit', 'mixer', 'convmixer' (a registry family)
  fields: dict                    # the family factory's keyword arguments the file determines
  num_classes: Optional[int]      # None: the file has no head
  image_size: Optional[int]       # None: the weights work at any size (sin-cos or no position embedding)
  assumed: dict                   # fields the file cannot show, with why they were chosen


class KeyTracker(dict):
  """A dict that remembers which keys were read, so a converter can refuse what it left unread."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.read: set = set()

  def __getitem__(self, key):
    self.read.add(key)
    return super().__getitem__(key)

  def unread(self, ignore=lambda key: False) -> list:
    return sorted(k for k in self if k not in self.read and not ignore(k))


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
