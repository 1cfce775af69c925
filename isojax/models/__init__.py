"""The model zoo: `create(name, num_classes, **overrides)`, `describe(name)`, `names()`, a config's model
section (`model_config`, `from_config`), and each family's weight readers (`reader_for`)."""

from isojax.models.convert import Reader, Weights
from isojax.models.family import Family
from isojax.models.isotropic import Isotropic, MixingBlock, PoolingHead, features
from isojax.models.layers import PRE_LOGITS
from isojax.models.registry import (
  build,
  check_config,
  config_fields,
  config_name,
  create,
  default_image_size,
  describe,
  family,
  family_names,
  from_config,
  input_channels,
  lookup,
  model_config,
  name_for,
  names,
  reader_for,
  register,
  resolve,
  unregister,
)
from isojax.models.vit import attention_heads

__all__ = [
  'Family',
  'Isotropic',
  'MixingBlock',
  'PRE_LOGITS',
  'PoolingHead',
  'Reader',
  'Weights',
  'attention_heads',
  'build',
  'check_config',
  'config_fields',
  'config_name',
  'create',
  'default_image_size',
  'describe',
  'family',
  'family_names',
  'features',
  'from_config',
  'input_channels',
  'lookup',
  'model_config',
  'name_for',
  'names',
  'reader_for',
  'register',
  'resolve',
  'unregister',
]
