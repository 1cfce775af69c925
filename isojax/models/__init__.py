"""The isotropic model zoo: `create(name, num_classes, **overrides)` and `names()`."""
from isojax.models.isotropic import Isotropic, MixingBlock
from isojax.models.registry import create, default_image_size, lookup, names

__all__ = ['Isotropic', 'MixingBlock', 'create', 'default_image_size', 'lookup', 'names']
