"""The isotropic model zoo: `create(name, num_classes, **overrides)`, `describe(name)`, `names()`."""
from isojax.models.isotropic import Isotropic, MixingBlock, PoolingHead, features
from isojax.models.layers import PRE_LOGITS
from isojax.models.vit import attention_heads
from isojax.models.registry import build, create, default_image_size, describe, lookup, name_for, names, resolve

__all__ = ['Isotropic', 'attention_heads', 'MixingBlock', 'PoolingHead', 'PRE_LOGITS', 'features', 'build', 'create', 'default_image_size',
           'describe', 'lookup', 'name_for', 'names', 'resolve']
