"""The isotropic model zoo: `create(name, num_classes, **overrides)`, `describe(name)`, `names()`."""
from isojax.models.isotropic import Isotropic, MixingBlock, features
from isojax.models.registry import create, default_image_size, describe, lookup, name_for, names, resolve

__all__ = ['Isotropic', 'MixingBlock', 'features', 'create', 'default_image_size', 'describe', 'lookup', 'name_for', 'names', 'resolve']
