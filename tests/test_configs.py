"""Every shipped config loads, documents its run command, and describes a model and pipeline that build."""

import glob
import os

import jax
import jax.numpy as jnp
import pytest

from isojax import models
from isojax.core import loading
from isojax.data import preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))]
SPECS += ['configs/cifar100.py:vit', 'configs/cifar100.py:mixer', 'configs/cifar10_finetune.py:mixer']


@pytest.mark.parametrize('spec', SPECS)
def test_config_builds_its_model_and_pipeline(spec):
  path = os.path.join(ROOT, spec.split(':')[0])
  assert 'python -m isojax.main --config=configs/' in open(path).read().split('"""')[1]
  config = loading.load(os.path.join(ROOT, spec))
  preprocess.parse(config.data.train_pp)
  preprocess.parse(config.data.eval_pp)
  model = models.from_config(config, num_classes=10)
  size = config.data.image_size
  logits = jax.eval_shape(
    lambda: model.apply(model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3))), jnp.zeros((2, size, size, 3)))
  )
  assert logits.shape == (2, 10)
