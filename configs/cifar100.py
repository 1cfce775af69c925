"""CIFAR-100 with any of the CIFAR-10 recipes: `:convmixer` (default), `:vit` or `:mixer`.

    python -m isojax.main --config=configs/cifar100.py:vit --workdir=workdirs/c100_vit

Same models and augmentation as the CIFAR-10 configs, 100 classes. Expected (200 epochs):
ConvMixer-256/8 ~75%, the small ViT ~68%, the small Mixer ~62% test accuracy.
"""

import importlib.util
import os


def _load(name):
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f'cifar10_{name}.py')
  spec = importlib.util.spec_from_file_location(f'cifar10_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  family = arg or 'convmixer'
  if family not in ('convmixer', 'vit', 'mixer'):
    raise ValueError(f"configs/cifar100.py takes ':convmixer', ':vit' or ':mixer', got {arg!r}.")
  c = _load(family).get_config()
  c.data.name = 'cifar100'
  # CIFAR-100's own mean and std (preprocess._STATS['cifar100']), not CIFAR-10's
  c.data.train_pp = c.data.train_pp.replace('normalize(cifar)', 'normalize(cifar100)')
  c.data.eval_pp = c.data.eval_pp.replace('normalize(cifar)', 'normalize(cifar100)')
  c.num_epochs = 200
  return c
