"""Name -> model. Adding a family: import its module and add it to FAMILIES.

A family module exposes `parse_name(name) -> fixed fields | None` and `format_name(fields)`
(the name is the architecture: parametric, e.g. `ViT-S/16`, `ViT-384x6/4`, `Mixer-B/16`,
`ConvMixer-128/6-k3-p2`), a factory `fn(num_classes, **fields) -> nn.Module`, VARIANTS
(the published models: {name: fields}, for tables and defaults), SOURCE, IMAGE_SIZE and
optionally IMAGE_SIZES and `published_name(fields)` (the published model whose defaults a
name inherits, when that is not simply `format_name`).
"""
from __future__ import annotations

import difflib
import inspect
import re
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax.numpy as jnp

from isojax.models import cait, convmixer, convnext_iso, deit3, gmlp, hybrid, mixer, resmlp, resnet, resnetv2, vit

# One line per family: (module, factory).
FAMILIES = (
    (vit, vit.vit),
    (deit3, deit3.deit3),
    (hybrid, hybrid.hybrid),        # a ResNet stem under a ViT
    (cait, cait.cait),
    (mixer, mixer.mixer),
    (resmlp, resmlp.resmlp),
    (gmlp, gmlp.gmlp),
    (convnext_iso, convnext_iso.convnext_iso),
    (convmixer, convmixer.convmixer),
    (resnet, resnet.resnet),        # the pyramid baselines (not an Isotropic)
    (resnetv2, resnetv2.resnetv2),
)


class Entry(NamedTuple):
  name: str                        # canonical
  factory: Callable[..., nn.Module]
  architecture: dict               # the fields the name fixes
  defaults: dict                   # other fields' defaults for this name (a published model's)
  image_size: int
  module: Any

  @property
  def family(self) -> str:
    """The family module's name: 'vit', 'mixer', 'convmixer', ..."""
    return self.module.__name__.rsplit('.', 1)[-1]

  def options(self) -> list[str]:
    """Every keyword argument of the factory (the fixed ones accept only their fixed value)."""
    return [p for p in inspect.signature(self.factory).parameters if p != 'num_classes']

  def free_options(self) -> list[str]:
    """The options the name leaves open (what a config's model section may set)."""
    return [p for p in self.options() if p not in self.architecture]


def _key(name: str) -> str:
  """'ViT-S/16', 'vit_s16' and 'vit-s-16' are the same model."""
  return re.sub(r'[^a-z0-9]', '', name.lower())


def _published() -> dict[str, tuple[Any, Callable, str]]:
  table = {}
  for module, factory in FAMILIES:
    for name in module.VARIANTS:
      table[_key(name)] = (module, factory, name)
  return table


_PUBLISHED = _published()


def names() -> list[str]:
  """The published models, in registration order (any parametric name works too)."""
  return [name for _, _, name in _PUBLISHED.values()]


def _entry(module, factory, name: str) -> Entry:
  arch = module.parse_name(name)
  canonical = module.format_name({**module.VARIANTS.get(name, {}), **arch})
  base = getattr(module, 'published_name', module.format_name)(arch)   # whose defaults the name inherits
  published = module.VARIANTS.get(base, {})
  defaults = {k: v for k, v in published.items() if k not in arch}
  sizes = getattr(module, 'IMAGE_SIZES', {})
  return Entry(canonical, factory, arch, defaults, sizes.get(base, module.IMAGE_SIZE), module)


def lookup(name: str) -> Entry:
  """The entry for `name` (published or parametric), or a ValueError listing the closest names."""
  if not isinstance(name, str):
    raise ValueError(f'A model name is a string like "ViT-S/16", got {name!r}.')
  if _key(name) in _PUBLISHED:
    module, factory, published = _PUBLISHED[_key(name)]
    return _entry(module, factory, published)
  for module, factory in FAMILIES:
    if module.parse_name(name) is not None:
      return _entry(module, factory, name)
  close = difflib.get_close_matches(_key(name), list(_PUBLISHED), n=5, cutoff=0.5)
  hint = ', '.join(_PUBLISHED[k][2] for k in close) or 'none'
  raise ValueError(f'Unknown model {name!r}. Closest names: {hint}. Names are parametric: '
                   f'ViT-S/16, ViT-384x6/4 (width x depth / patch), Mixer-B/16, ResMLP-S12, gMLP-S/16, ConvMixer-256/8[-k5-p2]; '
                   f'isojax.models.names() lists the {len(_PUBLISHED)} published ones.')


def name_for(family: str, fields: dict) -> str:
  """The canonical name of the `family` ('vit', 'mixer', ...) model with these factory fields."""
  for module, _ in FAMILIES:
    if module.__name__.rsplit('.', 1)[-1] == family:
      return module.format_name(fields)
  raise ValueError(f'Unknown model family {family!r}; registered: {[m.__name__.rsplit(".", 1)[-1] for m, _ in FAMILIES]}.')


def default_image_size(name: str) -> int:
  """The image size the published model was trained at (224, or 32 for CIFAR models)."""
  return lookup(name).image_size


def resolve(name: str, **overrides: Any) -> tuple[Entry, dict]:
  """(entry, every architecture field) for `name` with `overrides`, refusing contradictions."""
  entry = lookup(name)
  allowed = entry.options()
  unknown = sorted(set(overrides) - set(allowed))
  if unknown:
    raise ValueError(f'Unknown override(s) {unknown} for {entry.name}; allowed: {entry.free_options()}.')
  for field, fixed in entry.architecture.items():
    if field in overrides and overrides[field] != fixed:
      wanted = {**entry.architecture, **entry.defaults, **overrides}
      suggestion = entry.module.format_name({k: wanted[k] for k in wanted if k in allowed})
      raise ValueError(f'The model name {entry.name!r} fixes {field}={fixed!r}, but {field}={overrides[field]!r} '
                       f'was given; the name is the architecture: name the model {suggestion!r} instead.')
  return entry, {**entry.defaults, **overrides, **entry.architecture}


def describe(name: str, **overrides: Any) -> str:
  """The canonical name of `name` with `overrides` (e.g. 'ConvMixer-128/6-k3-p2')."""
  entry, fields = resolve(name, **overrides)
  return entry.module.format_name(fields)


def create(name: str, num_classes: int, **overrides: Any) -> nn.Module:
  """Builds the named model; `overrides` set the fields the name leaves open."""
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive int, got {num_classes!r}.')
  entry, fields = resolve(name, **overrides)
  return entry.factory(num_classes, **fields)


def build(name: str, num_classes: int, overrides: Optional[dict] = None, dtype: Optional[str] = None,
          remat: bool = False, axis_name: Optional[str] = None) -> nn.Module:
  """`create` with the run-level options: compute dtype, rematerialised blocks, and under pmap the axis over
  which BatchNorm models average their statistics (models without batch statistics ignore it)."""
  overrides = dict(overrides or {})
  if dtype:
    overrides['dtype'] = jnp.dtype(dtype)
  if remat:
    overrides['remat'] = True
  if 'axis_name' in lookup(name).options():
    overrides['axis_name'] = axis_name
  return create(name, num_classes, **overrides)
