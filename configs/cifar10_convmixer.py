"""ConvMixer-256/8 (kernel 5, patch 2) on CIFAR-10, the paper's CIFAR recipe.

    python -m isojax.main --config=configs/cifar10_convmixer.py --workdir=workdirs/c10_convmixer

Follows locuslab/convmixer-cifar10: AdamW lr 0.05 (warmup 40%, then linear decay),
weight decay 0.005, RandAugment n=2 m=12, flip, random erasing 0.2, batch 512, grad
clip 1.0. Expected: ~94% test accuracy after 100 epochs (92.5% at 25: `--config.num_epochs=25`).
"""
from isojax.config_base import base, model_config


def get_config(arg=None):
  c = base()
  c.model = model_config('ConvMixer-256/8', kernel_size=5, patch_size=2, drop_path_rate=0.0)
  c.data.name = 'cifar10'
  c.data.train_split = 'train'
  c.data.eval_split = 'test'
  c.data.image_size = 32
  c.data.train_pp = ('random_crop(size=32, padding=0)|flip|randaugment(num_ops=2, magnitude=12)'
                     '|normalize(cifar)|random_erasing(0.2)')
  c.data.eval_pp = 'normalize(cifar)'
  c.data.cache = True
  c.batch_size = 512
  c.eval_batch_size = 1000
  c.num_epochs = 100
  c.eval_every = 1000
  c.checkpoint.every = 1000
  c.optimizer.name = 'adamw'
  c.optimizer.lr = 0.05
  c.optimizer.weight_decay = 0.005
  c.optimizer.warmup_steps = int(0.4 * 100 * 50_000 / 512)
  c.optimizer.schedule = 'linear'
  c.optimizer.clip_norm = 1.0
  return c
