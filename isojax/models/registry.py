"""Name -> model. Adding a family: a file in isojax/models/ ending with its `FAMILY = Family(...)`, and one
line in `FAMILIES` below (models/family.py says what a family declares).

The name is the architecture (`ViT-S/16`, `ViT-384x6/4`, `ConvMixer-128/6-k3-p2`): width, depth, heads,
patch... come from it, so changing the name changes all of them and nothing can disagree with it. The other
fields (pooling, dropout, a ConvMixer's kernel where the name leaves it open) are a config's to set.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util
from ml_collections import config_dict

from isojax import kernels as kernel_choices
from isojax.models import cait, convmixer, convnext_iso, deit3, gmlp, hybrid, mixer, resmlp, resnet, resnetv2, vit
from isojax.models.convert import FORMATS, Reader, Tensors
from isojax.models.family import Family

# One line per family, in the order names are tried and listed.
FAMILIES: list[Family] = [
  vit.FAMILY,
  deit3.FAMILY,
  hybrid.FAMILY,  # a ResNet stem under a ViT
  cait.FAMILY,
  mixer.FAMILY,
  resmlp.FAMILY,
  gmlp.FAMILY,
  convnext_iso.FAMILY,
  convmixer.FAMILY,
  resnet.FAMILY,  # the pyramid baselines (not an Isotropic)
  resnetv2.FAMILY,
]

# Set by the run, not by a config's model section: config.dtype, config.remat(_policy), config.kernels, pmap's axis.
RUN_LEVEL_OPTIONS = ('dtype', 'remat', 'remat_policy', 'kernels', 'axis_name')
# Model fields of older runs that a field of the run replaced: dropped when such a run's config is read.
RETIRED_FIELDS = {'depthwise_impl': 'config.kernels'}


def register(family: Family) -> Family:
  """Adds `family` to the registry (a family defined outside isojax, a test's toy family); its name must be new."""
  if any(f.name == family.name for f in FAMILIES):
    raise ValueError(f'A model family named {family.name!r} is registered already; registered: {family_names()}.')
  unknown = sorted(set(family.readers) - set(FORMATS))
  if unknown:
    raise ValueError(f'Family {family.name!r} has readers for unknown weight formats {unknown}; formats: {FORMATS}.')
  FAMILIES.append(family)
  return family


def unregister(name: str) -> None:
  """Removes the family `name` (what `register` added)."""
  FAMILIES[:] = [f for f in FAMILIES if f.name != name]


def family_names() -> list[str]:
  return [f.name for f in FAMILIES]


def family(name: str) -> Family:
  """The registered family called `name` ('vit', 'mixer', ...)."""
  for registered in FAMILIES:
    if registered.name == name:
      return registered
  raise ValueError(f'Unknown model family {name!r}; registered: {family_names()}.')


class Entry(NamedTuple):
  name: str  # canonical
  definition: Family  # what the family declared
  architecture: dict  # the fields the name fixes
  defaults: dict  # other fields' defaults for this name (a published model's)
  image_size: int

  @property
  def family(self) -> str:
    """The family's name: 'vit', 'mixer', 'convmixer', ..."""
    return self.definition.name

  @property
  def factory(self) -> Callable[..., nn.Module]:
    return self.definition.factory

  def options(self) -> list[str]:
    """Every keyword argument of the factory (the fixed ones accept only their fixed value)."""
    return self.definition.options()

  def free_options(self) -> list[str]:
    """The options the name leaves open (what a config's model section may set)."""
    return [p for p in self.options() if p not in self.architecture]


def _key(name: str) -> str:
  """'ViT-S/16', 'vit_s16' and 'vit-s-16' are the same model."""
  return re.sub(r'[^a-z0-9]', '', name.lower())


def _published() -> dict[str, tuple[Family, str]]:
  """{loose key: (family, published name)}; a name spelled exactly as published wins over a loose match. A loose
  key two published names share ('vitg14': ViT-g/14 and ViT-G/14) is left out: the family's parser tells them
  apart by the size letter's case."""
  loose: dict[str, list[tuple[Family, str]]] = {}
  for f in FAMILIES:
    for name in f.variants:
      loose.setdefault(_key(name), []).append((f, name))
  exact = {name: (f, name) for f in FAMILIES for name in f.variants}
  return {**{key: found[0] for key, found in loose.items() if len(found) == 1}, **exact}


def names() -> list[str]:
  """The published models, in registration order (any parametric name works too)."""
  return [name for f in FAMILIES for name in f.variants]


def _entry(family_: Family, name: str) -> Entry:
  arch = family_.parse_name(name)
  if arch is None:
    raise ValueError(f'{name!r} is not a name of family {family_.name!r} (its parse_name refuses it).')
  canonical = family_.format_name({**family_.variants.get(name, {}), **arch})
  base = family_.published_name(arch) or family_.format_name(arch)  # whose defaults the name inherits
  published = family_.variants.get(base, {})
  defaults = {k: v for k, v in published.items() if k not in arch}
  return Entry(canonical, family_, arch, defaults, family_.image_sizes.get(base, family_.image_size))


def lookup(name: str) -> Entry:
  """The entry for `name` (published or parametric), or a ValueError listing the closest names."""
  if not isinstance(name, str):
    raise ValueError(f'A model name is a string like "ViT-S/16", got {name!r}.')
  published = _published()
  found = published.get(name.strip()) or published.get(_key(name))
  if found:
    return _entry(*found)
  for registered in FAMILIES:
    if registered.parse_name(name) is not None:
      return _entry(registered, name)
  keys = {_key(n): n for n in names()}
  close = difflib.get_close_matches(_key(name), list(keys), n=5, cutoff=0.5)
  hint = ', '.join(keys[k] for k in close) or 'none'
  raise ValueError(
    f'Unknown model {name!r}. Closest names: {hint}. Names are parametric: '
    f'ViT-S/16, ViT-384x6/4 (width x depth / patch), Mixer-B/16, ResMLP-S12, gMLP-S/16, ConvMixer-256/8'
    f'[-k5-p2]; isojax.models.names() lists the {len(keys)} published ones.'
  )


def name_for(family_name: str, fields: dict) -> str:
  """The canonical name of the `family_name` ('vit', 'mixer', ...) model with these factory fields."""
  return family(family_name).format_name(fields)


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
      suggestion = entry.definition.format_name({k: wanted[k] for k in wanted if k in allowed})
      raise ValueError(
        f'The model name {entry.name!r} fixes {field}={fixed!r}, but {field}={overrides[field]!r} '
        f'was given; the name is the architecture: name the model {suggestion!r} instead.'
      )
  return entry, {**entry.defaults, **overrides, **entry.architecture}


def describe(name: str, **overrides: Any) -> str:
  """The canonical name of `name` with `overrides` (e.g. 'ConvMixer-128/6-k3-p2')."""
  entry, fields = resolve(name, **overrides)
  return entry.definition.format_name(fields)


def create(name: str, num_classes: int, **overrides: Any) -> nn.Module:
  """Builds the named model; `overrides` set the fields the name leaves open.

  `kernels` ('auto' by default, for the families that have CPU fast paths) is resolved here, once: the model
  computes the same whatever backend it is later traced on.
  """
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive int, got {num_classes!r}.')
  entry, fields = resolve(name, **overrides)
  if 'kernels' in entry.options():
    fields['kernels'] = kernel_choices.resolve(fields.get('kernels', 'auto'))
  return entry.factory(num_classes, **fields)


def build(
  name: str,
  num_classes: int,
  overrides: Optional[dict] = None,
  dtype: Optional[str] = None,
  remat: bool = False,
  axis_name: Optional[str] = None,
  kernels: str = 'auto',
  remat_policy: str = 'nothing_saveable',
) -> nn.Module:
  """`create` with the run-level options: compute dtype, rematerialised blocks (keeping what `remat_policy`
  saves), kernels, and under pmap the axis
  over which BatchNorm models average their statistics (models without batch statistics ignore it)."""
  overrides = dict(overrides or {})
  options = lookup(name).options()
  if dtype:
    overrides['dtype'] = jnp.dtype(dtype)
  if remat:
    overrides['remat'] = True
    if 'remat_policy' in options:
      overrides['remat_policy'] = remat_policy
  if 'axis_name' in options:
    overrides['axis_name'] = axis_name
  if 'kernels' in options:
    overrides['kernels'] = kernels
  return create(name, num_classes, **overrides)


# --- a config's model section -----------------------------------------------------------------------------------


def model_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
  """`config.model`: the model's name and every field the name leaves open, spelled out.

  `--config.model.name=ViT-B/16` changes the whole architecture; the open fields (pooling, dropout, a
  ConvMixer's kernel) can be overridden from the command line (`--config.model.classifier=gap`).
  """
  entry, _ = resolve(name, **overrides)
  hints = typing.get_type_hints(entry.factory)
  fields: dict[str, Any] = {'name': entry.name}
  for option, default in _open_fields(entry):
    value = overrides.get(option, entry.defaults.get(option, default))
    if value is None:  # an optional field: typed, so the command line can still set it
      value = config_dict.placeholder(next(t for t in typing.get_args(hints[option]) if t is not type(None)))
    fields[option] = value
  return ml_collections.ConfigDict(fields)


def _open_fields(entry: Entry) -> Iterable[tuple[str, Any]]:
  defaults = entry.definition.defaults()
  for option in entry.options():
    if option not in RUN_LEVEL_OPTIONS and option not in entry.architecture:
      yield option, defaults.get(option)


def config_fields(config: ml_collections.ConfigDict) -> dict:
  """The model section's fields beside the name, less fields a run-level option has since replaced."""
  return {k: v for k, v in config.model.to_dict().items() if k != 'name' and k not in RETIRED_FIELDS}


def from_config(config: ml_collections.ConfigDict, num_classes: int, axis_name: Optional[str] = None) -> nn.Module:
  """The model a run config describes, with its dtype, remat and kernels options."""
  return build(
    config.model.name,
    num_classes,
    config_fields(config),
    config.get('dtype'),
    config.get('remat', False),
    axis_name,
    config.get('kernels', 'auto'),
    config.get('remat_policy', 'nothing_saveable'),
  )


def config_name(config: ml_collections.ConfigDict) -> str:
  """The canonical name of the model a config describes ('ConvMixer-128/6-k3-p2')."""
  return describe(config.model.name, **config_fields(config))


def check_config(config: ml_collections.ConfigDict) -> None:
  """The name and the model fields agree (an unknown name or a contradiction fails here, before compiling)."""
  resolve(config.model.name, **config_fields(config))


def input_channels(variables: dict) -> int:
  """The image channels a model's variables take, from its first convolution's kernel [kh, kw, channels, width]:
  every isojax model begins with `stem` (the isotropic families, BiT) or `conv1` (ResNet), the hybrid's stem
  with its ResNet's `backbone/conv_root`."""
  params = variables['params']
  stem = params['stem'] if 'stem' in params else params['conv1']
  stem = traverse_util.flatten_dict(stem['backbone']['conv_root'] if 'backbone' in stem else stem)
  return int(next(np.shape(v)[2] for k, v in stem.items() if k[-1] == 'kernel' and np.ndim(v) == 4))


# --- weight files ---------------------------------------------------------------------------------------------


def reader_for(file_format: str, tensors: Tensors) -> Reader:
  """The reader of the one family that claims these tensors of a `file_format` file."""
  claiming = [
    (f.name, f.readers[file_format])
    for f in FAMILIES
    if file_format in f.readers and f.readers[file_format].claims(tensors)
  ]
  if len(claiming) != 1:
    readers = [f.name for f in FAMILIES if file_format in f.readers]
    found = 'no family' if not claiming else f'several families ({[n for n, _ in claiming]})'
    raise ValueError(
      f'{found} of the registry reads this {file_format} file (families with {file_format} readers: '
      f'{readers}; first keys: {sorted(tensors)[:5]}).'
    )
  return claiming[0][1]
