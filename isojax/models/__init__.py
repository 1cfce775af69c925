"""The isotropic model zoo: `create(name, num_classes, **overrides)`, `describe(name)`, `names()`."""
from isojax.models.isotropic import Isotropic, MixingBlock
from isojax.models.registry import create, default_image_size, describe, lookup, name_for, names, resolve

__all__ = ['Isotropic', 'MixingBlock', 'create', 'default_image_size', 'describe', 'lookup', 'name_for', 'names', 'resolve']
