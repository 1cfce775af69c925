"""The name grammar most families share: the name is the architecture.

    {prefix}-{size}[/{patch}][-{letter}{int}]...

`size` is a lettered size of the family's table (`ViT-S/16`, `CaiT-XXS24`, `ConvNeXt-iso-B`) or
`{width}x{depth}` for any other shape (`ViT-384x6/4`); each suffix sets one more field, written only where it
differs from its default (`ViT-32x2/4-h4-m64`: 4 heads, MLP 64 wide, where the defaults are width/64 and
4 x width). Separators are loose (`vit_s16`, `vit-s-16`); prefixes and suffix letters match in any case, a
lettered size matches its own case first (so two sizes that differ only in case, big_vision's ViT-g and ViT-G,
stay apart). Families whose names say something else (ConvMixer's `{width}/{depth}`, ResNet's depth, the
hybrid's stages) parse their own names and give the registry the same two functions.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any, Optional


@dataclasses.dataclass(frozen=True)
class Suffix:
  """`-{letter}{int}`: the field it sets and the default it takes when absent (from the other fields)."""

  letter: str
  field: str
  default: Callable[[dict], int]


# Where the patch size is written: after every size (`ViT-S/16`), only after `{width}x{depth}` because the
# lettered sizes fix it (`CaiT-XXS24`, `CaiT-192x24/16`), or not at all (a suffix or the family's constant).
PATCH_ALWAYS, PATCH_PARAMETRIC, PATCH_NEVER = 'always', 'parametric', 'never'


@dataclasses.dataclass(frozen=True)
class SizedNames:
  """A family's names: `parse` (name -> the fields it fixes, or None) and `format` (fields -> canonical name)."""

  prefix: str  # the canonical spelling, 'ViT'
  sizes: Mapping[str, dict]  # lettered size -> the fields it fixes
  suffixes: tuple[Suffix, ...] = ()
  patch: str = PATCH_ALWAYS
  sizes_fix_suffixes: bool = True  # `ViT-S/16-h3` is no name: the size fixes the heads
  prefix_pattern: Optional[str] = None  # a regex for other spellings ('convnext[-_]?iso(?:tropic)?')
  size_aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)  # 'small' -> 'S'

  def _pattern(self) -> re.Pattern:
    prefix = self.prefix_pattern or re.escape(self.prefix).replace(r'\-', '[-_]?')
    words = sorted({*self.sizes, *self.size_aliases}, key=len, reverse=True)
    size = '|'.join(re.escape(w) for w in words) or '(?!)'  # no lettered sizes: only {width}x{depth}
    patch = r'[/_-]?(?P<patch>\d+)'
    if self.patch == PATCH_ALWAYS:
      body = rf'(?:(?P<size>{size})|(?P<width>\d+)x(?P<depth>\d+)){patch}'
    elif self.patch == PATCH_PARAMETRIC:
      body = rf'(?:(?P<size>{size})|(?P<width>\d+)x(?P<depth>\d+){patch})'
    else:
      body = rf'(?:(?P<size>{size})|(?P<width>\d+)x(?P<depth>\d+))'
    suffixes = ''.join(rf'(?:[-_]{s.letter}(?P<s_{s.letter}>\d+))?' for s in self.suffixes)
    return re.compile(rf'^{prefix}[-_]?{body}{suffixes}$', re.IGNORECASE)

  def _size(self, written: str) -> Optional[str]:
    """The lettered size `written` names: its own case first, else the one size it matches in any case."""
    written = self.size_aliases.get(written, self.size_aliases.get(written.lower(), written))
    if written in self.sizes:
      return written
    matches = [s for s in self.sizes if s.lower() == written.lower()]
    return matches[0] if len(matches) == 1 else None

  def parse(self, name: str) -> Optional[dict]:
    """The fields `name` fixes, or None when it is not a name of this family."""
    match = self._pattern().match(name.strip())
    if not match:
      return None
    given = {s: int(match[f's_{s.letter}']) for s in self.suffixes if match[f's_{s.letter}']}
    if match['size']:
      size = self._size(match['size'])
      if size is None or (given and self.sizes_fix_suffixes):
        return None
      fields: dict[str, Any] = dict(self.sizes[size])
    else:
      fields = dict(hidden_size=int(match['width']), depth=int(match['depth']))
    if match.groupdict().get('patch'):
      fields['patch_size'] = int(match['patch'])
    for suffix in self.suffixes:
      fields.setdefault(suffix.field, given.get(suffix, suffix.default(fields)))
    return fields

  def _implied(self, size: str) -> dict:
    """Every field a lettered size fixes or implies (its suffix fields at their defaults)."""
    fields = dict(self.sizes[size])
    for suffix in self.suffixes:
      fields.setdefault(suffix.field, suffix.default(fields))
    return fields

  def format(self, fields: Mapping[str, Any]) -> str:
    """The canonical name of `fields` (inverse of `parse`): a lettered size where one fits exactly."""
    slash = f'/{fields["patch_size"]}' if self.patch != PATCH_NEVER else ''
    for size in self.sizes:
      if all(fields.get(k) == v for k, v in self._implied(size).items()):
        return f'{self.prefix}-{size}' + (slash if self.patch == PATCH_ALWAYS else '')
    plain = dict(fields)
    suffixes = ''.join(f'-{s.letter}{plain[s.field]}' for s in self.suffixes if plain[s.field] != s.default(plain))
    return f'{self.prefix}-{fields["hidden_size"]}x{fields["depth"]}{slash}{suffixes}'
