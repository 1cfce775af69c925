"""Name -> model factory. Adding a family: import its module and add it to FAMILIES.

A family module exposes VARIANTS ({name: architecture kwargs}), a factory
`fn(num_classes, **kwargs) -> nn.Module`, IMAGE_SIZE and optionally IMAGE_SIZES.
"""
from __future__ import annotations

import difflib
import inspect
import re
from typing import Any, Callable, NamedTuple

import flax.linen as nn

from isojax.models import convmixer, mixer, vit

# One line per family: (module, factory).
FAMILIES = (
    (vit, vit.vit),
    (mixer, mixer.mixer),
    (convmixer, convmixer.convmixer),
)


class Entry(NamedTuple):
  name: str
  factory: Callable[..., nn.Module]
  architecture: dict
  image_size: int

  @property
  def family(self) -> str:
    """The family module's name: 'vit', 'mixer', 'convmixer', ..."""
    return self.factory.__module__.rsplit('.', 1)[-1]

  def options(self) -> list[str]:
    """The keyword arguments `create` accepts as overrides for this model."""
    return [p for p in inspect.signature(self.factory).parameters if p != 'num_classes']


def _key(name: str) -> str:
  """'ViT-S/16', 'vit_s16' and 'vit-s-16' are the same model."""
  return re.sub(r'[^a-z0-9]', '', name.lower())


def _build_registry() -> dict[str, Entry]:
  registry = {}
  for module, factory in FAMILIES:
    sizes = getattr(module, 'IMAGE_SIZES', {})
    for name, arch in module.VARIANTS.items():
      registry[_key(name)] = Entry(name, factory, arch, sizes.get(name, module.IMAGE_SIZE))
  return registry


_REGISTRY = _build_registry()


def names() -> list[str]:
  """All registered model names, in registration order."""
  return [entry.name for entry in _REGISTRY.values()]


def lookup(name: str) -> Entry:
  """The registry entry for `name`, or a ValueError that lists the closest names."""
  try:
    return _REGISTRY[_key(name)]
  except KeyError:
    close = difflib.get_close_matches(_key(name), list(_REGISTRY), n=5, cutoff=0.5)
    hint = ', '.join(_REGISTRY[k].name for k in close) or 'none'
    raise ValueError(f'Unknown model {name!r}. Closest names: {hint}. '
                     f'isojax.models.names() lists all {len(_REGISTRY)}.') from None


def default_image_size(name: str) -> int:
  """The image size the published model was trained at (224, or 32 for CIFAR models)."""
  return lookup(name).image_size


def create(name: str, num_classes: int, **overrides: Any) -> nn.Module:
  """Builds the named model; `overrides` replace architecture or regularisation fields."""
  entry = lookup(name)
  allowed = entry.options()
  unknown = sorted(set(overrides) - set(allowed))
  if unknown:
    raise ValueError(f'Unknown override(s) {unknown} for {entry.name}; allowed: {allowed}.')
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive int, got {num_classes!r}.')
  return entry.factory(num_classes, **{**entry.architecture, **overrides})
