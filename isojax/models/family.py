"""What a family declares to the registry: one `Family` value at the end of its file, one line in registry.py.

    FAMILY = Family.named('gmlp', gmlp, NAMES, VARIANTS, SOURCE, readers={TIMM: Reader(_is_timm_gmlp, from_timm)})

The factory `fn(num_classes, **fields) -> nn.Module` builds the model; its keyword arguments are the model's
fields (those a name fixes and those a config may set). `variants` are the published models ({name: fields},
their defaults for names of that shape); `readers` convert weight files of a format (models/convert.py) into
the family's parameter layout, next to the modules whose names they write.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Optional

import flax.linen as nn

from isojax.models.convert import Reader


def _no_published_name(fields: dict) -> Optional[str]:
  return None


@dataclasses.dataclass(frozen=True)
class Family:
  """One model family as the registry knows it."""

  name: str  # 'vit': how weight readers and sweeps name it
  factory: Callable[..., nn.Module]  # fn(num_classes, **fields) -> the model
  parse_name: Callable[[str], Optional[dict]]  # a name -> the fields it fixes, or None if not ours
  format_name: Callable[[Mapping[str, Any]], str]  # fields -> the canonical name (inverse of parse_name)
  variants: Mapping[str, dict]  # the published models: name -> fields
  source: str  # the codebase (and files) the family follows
  image_size: int = 224  # what the published models were trained at
  image_sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)  # published exceptions (CIFAR)
  # The published model whose defaults a name inherits (ConvMixer-768/32-k9-p7 keeps 768/32's ReLU); None:
  # the name's own canonical form.
  published_name: Callable[[dict], Optional[str]] = _no_published_name
  readers: Mapping[str, Reader] = dataclasses.field(default_factory=dict)  # weight-file format -> reader

  @classmethod
  def named(
    cls,
    name: str,
    factory: Callable[..., nn.Module],
    names: Any,
    variants: Mapping[str, dict],
    source: str,
    **declared: Any,
  ) -> Family:
    """A family whose names follow `names` (a `naming.SizedNames`, or anything with `parse` and `format`)."""
    return cls(name, factory, names.parse, names.format, variants, source, **declared)

  def options(self) -> list[str]:
    """Every keyword argument of the factory: the model's fields."""
    return [p for p in inspect.signature(self.factory).parameters if p != 'num_classes']

  def defaults(self) -> dict[str, Any]:
    """The factory's own default of every field that has one."""
    return {
      name: p.default
      for name, p in inspect.signature(self.factory).parameters.items()
      if name != 'num_classes' and p.default is not inspect.Parameter.empty
    }
