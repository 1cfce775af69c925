"""The reference implementations' own model code, vendored verbatim, importable without their repos.

Tests that claim "isojax reproduces X" run X's code from here, not isojax's reading of it.
Each file is a byte-for-byte copy (Apache-2.0; facebookresearch/ConvNeXt's: MIT); `SOURCES` records the git blob
hash of each at the commit it was taken from, and `load` refuses a file that no longer matches.
The few imports these files make of their own repositories (big_vision's `utils` and `common`,
used only by its checkpoint loader) are stubbed; the model code runs unchanged.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))

# file here: (repository, commit, path there, git blob hash)
SOURCES = {
    'vit_jax_models_vit.py': ('google-research/vision_transformer', 'c6de1e5378c9831a8477feb30994971bdc409e46',
                              'vit_jax/models_vit.py', '156e8a63c6e978f357b0ced0829c4747f1d0e62d'),
    'vit_jax_models_mixer.py': ('google-research/vision_transformer', 'c6de1e5378c9831a8477feb30994971bdc409e46',
                                'vit_jax/models_mixer.py', 'b33757189388528f418c6d74f177adeb182a64f6'),
    'vit_jax_models_resnet.py': ('google-research/vision_transformer', 'c6de1e5378c9831a8477feb30994971bdc409e46',
                                 'vit_jax/models_resnet.py', 'f9e005281941bb9b0dabb020cab6ba6e2d44e716'),
    'vit_jax_configs_models.py': ('google-research/vision_transformer', 'c6de1e5378c9831a8477feb30994971bdc409e46',
                                  'vit_jax/configs/models.py', '8e457b0f81442d7afb81fe02eb601a24faa66913'),
    # parsed, not run: tests read the training crop its `_pp` draws
  'vit_jax_input_pipeline.py': ('google-research/vision_transformer', 'c6de1e5378c9831a8477feb30994971bdc409e46',
                                'vit_jax/input_pipeline.py', 'b3079d8cc0b1b7a73ba22e106528f12c868592e2'),
  'big_vision_vit.py': ('google-research/big_vision', '0127fb6b337ee2a27bf4e54dea79cff176527356',
                          'big_vision/models/vit.py', '56360bdad58b848056395a5e06f385117f64a79f'),
    'big_vision_mlp_mixer.py': ('google-research/big_vision', '0127fb6b337ee2a27bf4e54dea79cff176527356',
                              'big_vision/models/mlp_mixer.py', '58bd4b99d21f061693da007b26dd24013e341851'),
  'big_vision_bit.py': ('google-research/big_vision', '0127fb6b337ee2a27bf4e54dea79cff176527356',
                        'big_vision/models/bit.py', 'cd4235df9ec87549590396deb69739e310e6770d'),
  'big_vision_pp_utils.py': ('google-research/big_vision', '0127fb6b337ee2a27bf4e54dea79cff176527356',
                          'big_vision/pp/utils.py', '3ee834560246549c71f0a6d9785694fd1507ca9b'),
    'big_vision_pp_registry.py': ('google-research/big_vision', '0127fb6b337ee2a27bf4e54dea79cff176527356',
                          'big_vision/pp/registry.py', 'f5c7d996d756be16ba68a5fcb143f23129e1249d'),
    'big_vision_pp_ops_image.py': ('google-research/big_vision', '0127fb6b337ee2a27bf4e54dea79cff176527356',
                          'big_vision/pp/ops_image.py', 'bdc55a5659c3e0df0c209edef798bbd5c6a7f623'),
    # torch code: run by tests/reference/make_timm_fixtures.py in a venv with torch and timm (MIT licence)
    'convnext_models_convnext.py': ('facebookresearch/ConvNeXt', '048efcea897d999aed302f2639b6270aedf8d4c8',
                                    'models/convnext.py', '74c1e9407bb4096a3b27127515573e32865b40f7'),
    'convnext_models_convnext_isotropic.py': ('facebookresearch/ConvNeXt', '048efcea897d999aed302f2639b6270aedf8d4c8',
                                              'models/convnext_isotropic.py', '50217b2e431e2862376034ae25969b19b704f6e2'),
    # parsed, not imported (it needs torch): tests read its registered models' arguments
    'timm_mlp_mixer.py': ('huggingface/pytorch-image-models', 'aa4b5850c1543fa488abf260f18390eda46cf85d',
                          'timm/models/mlp_mixer.py', 'd06402dfbc88a85ff596bce715e293efe5079f5f'),
    'timm_cait.py': ('huggingface/pytorch-image-models', 'aa4b5850c1543fa488abf260f18390eda46cf85d',
                     'timm/models/cait.py', 'c7b459b33ab0c32fa37d430735fe2eb8d9b1ca5a'),
  # TensorFlow, with tests/reference/tfa_image.py for tensorflow_addons.image
  'big_vision_pp_archive_autoaugment.py': ('google-research/big_vision', '0127fb6b337ee2a27bf4e54dea79cff176527356',
                                           'big_vision/pp/archive/autoaugment.py',
                                           'f1af14ec6a1125ee9c3ea426f9224153483fd8e6'),
  # PIL and numpy only: imported and run by tests/test_augmentation_fidelity.py
  'timm_auto_augment.py': ('huggingface/pytorch-image-models', 'aa4b5850c1543fa488abf260f18390eda46cf85d',
                           'timm/data/auto_augment.py', '36dd08fa05763841c1cce8e30419aabd30199222'),
}


def git_blob_hash(path: str) -> str:
  with open(path, 'rb') as f:
    data = f.read()
  return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def _stub(name: str) -> types.ModuleType:
  """An empty package `name` (and its parents), each an attribute of its parent."""
  parent = None
  for i, part in enumerate(name.split('.')):
    full = '.'.join(name.split('.')[:i + 1])
    if full not in sys.modules:
      sys.modules[full] = types.ModuleType(full)
      sys.modules[full].__path__ = []
      if parent is not None:
        setattr(parent, part, sys.modules[full])
    parent = sys.modules[full]
  return parent


def load(filename: str, module_name: str) -> types.ModuleType:
  """Imports the vendored `filename` as `module_name` (e.g. 'vit_jax.models_vit')."""
  path = os.path.join(HERE, filename)
  repository, commit, source_path, blob = SOURCES[filename]
  if git_blob_hash(path) != blob:
    raise AssertionError(f'{path} is no longer a verbatim copy of {repository}@{commit[:7]}:{source_path}.')
  if module_name in sys.modules:
    return sys.modules[module_name]
  package = module_name.rsplit('.', 1)[0]
  _stub(package)
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module
  setattr(sys.modules[package], module_name.rsplit('.', 1)[1], module)
  spec.loader.exec_module(module)
  return module


def vision_transformer() -> tuple[types.ModuleType, types.ModuleType]:
  """(models_vit, models_mixer) of google-research/vision_transformer."""
  load('vit_jax_models_resnet.py', 'vit_jax.models_resnet')
  return load('vit_jax_models_vit.py', 'vit_jax.models_vit'), load('vit_jax_models_mixer.py', 'vit_jax.models_mixer')


def vision_transformer_configs() -> types.ModuleType:
  """vit_jax/configs/models.py: the published models' configs (`get_r50_b16_config`, ...)."""
  return load('vit_jax_configs_models.py', 'vit_jax.configs.models')


def big_vision_vit() -> types.ModuleType:
  """big_vision/models/vit.py (its checkpoint helpers need big_vision.utils, stubbed: not used here)."""
  _stub('big_vision.utils')
  _stub('big_vision.models.common')
  return load('big_vision_vit.py', 'big_vision.models.vit')


def big_vision_mlp_mixer() -> types.ModuleType:
  """big_vision/models/mlp_mixer.py (its checkpoint loader's big_vision.utils and models.common stubbed)."""
  _stub('big_vision.utils')
  _stub('big_vision.models.common')
  return load('big_vision_mlp_mixer.py', 'big_vision.models.mlp_mixer')


def big_vision_bit() -> types.ModuleType:
  """big_vision/models/bit.py (its checkpoint helpers need big_vision.utils, stubbed: not used here)."""
  _stub('big_vision.utils')
  _stub('big_vision.models.common')
  return load('big_vision_bit.py', 'big_vision.models.bit')


def big_vision_ops_image() -> types.ModuleType:
  """big_vision/pp/ops_image.py (the preprocessing ops its ImageNet configs name), with its pp utils."""
  load('big_vision_pp_utils.py', 'big_vision.pp.utils')
  load('big_vision_pp_registry.py', 'big_vision.pp.registry')
  return load('big_vision_pp_ops_image.py', 'big_vision.pp.ops_image')


def timm_auto_augment() -> types.ModuleType:
  """timm/data/auto_augment.py: timm's RandAugment/AutoAugment ops on PIL images."""
  return load('timm_auto_augment.py', 'timm.data.auto_augment')


def big_vision_autoaugment(tfa_image: types.ModuleType) -> types.ModuleType:
  """big_vision/pp/archive/autoaugment.py, with `tfa_image` standing in for tensorflow_addons.image."""
  _stub('tensorflow_addons')
  sys.modules['tensorflow_addons.image'] = tfa_image
  sys.modules['tensorflow_addons'].image = tfa_image
  return load('big_vision_pp_archive_autoaugment.py', 'big_vision.pp.archive.autoaugment')


def text(filename: str) -> str:
  """The verbatim source text of a vendored file (for files that cannot be imported here)."""
  path = os.path.join(HERE, filename)
  repository, commit, source_path, blob = SOURCES[filename]
  if git_blob_hash(path) != blob:
    raise AssertionError(f'{path} is no longer a verbatim copy of {repository}@{commit[:7]}:{source_path}.')
  with open(path) as f:
    return f.read()
