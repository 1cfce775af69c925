"""A small ViT on CIFAR-10 from scratch: ViT-S width, 6 blocks, 4x4 patches (64 tokens).

    python -m isojax.main --config=configs/cifar10_vit.py --workdir=workdirs/c10_vit

isojax's own recipe, not a published one (no source to match): in the spirit of "better plain
ViT baselines" (global average pooling, fixed sin-cos position embeddings) with DeiT-style
augmentation (timm RandAugment, mixup/CutMix, random erasing, label smoothing) and AdamW
(decay multiplied by the learning rate). Unmeasured estimate: ~90% test accuracy after 200
epochs (ViTs need heavy augmentation on CIFAR).
Use the CIFAR-100 variant with `--config=configs/cifar100.py:vit`.
"""

from isojax.core.config import base
from isojax.models import model_config


def get_config(arg=None):
  c = base()
  c.model = model_config('ViT-384x6/4', classifier='gap', posemb='sincos2d', dropout_rate=0.0, drop_path_rate=0.1)
  c.data.name = 'cifar10'
  c.data.image_size = 32
  c.data.train_pp = (
    'random_crop(size=32, padding=4)|flip|randaugment(num_ops=2, magnitude=9, flavour=timm)|normalize(cifar)'
  )
  c.data.eval_pp = 'normalize(cifar)'
  c.data.cache = True
  c.batch_size = 512
  c.eval_batch_size = 1000
  c.num_epochs = 200
  c.eval_every = 1000
  c.checkpoint.every = 1000
  c.mixup = dict(mixup_alpha=0.8, cutmix_alpha=1.0)
  c.random_erasing.prob = 0.25  # on the mixed batch, as timm's loader erases (--reprob 0.25 --remode pixel)
  c.label_smoothing = 0.1
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_fraction = 0.1
  c.optimizer.clip_norm = 1.0
  return c
