"""ConvMixer-1536/20 (kernel 9, patch 7) on ImageNet-1k, the paper's recipe.

    python -m isojax.main --config=configs/imagenet_convmixer_1536_20.py --workdir=workdirs/i1k_convmixer

Trockman & Kolter (2022), trained with timm: batch 64 x 10 GPUs, AdamW lr 0.01, weight
decay 0.05, one-cycle schedule (approximated by warmup + linear decay), RandAugment
(m=9, n=2, noise 0.5), mixup 0.5, cutmix 0.5, random erasing 0.25, label smoothing 0.1,
150 epochs. Expected: 81.4% top-1.
"""
from isojax.config_base import base, model_config


def get_config(arg=None):
  c = base()
  c.model = model_config('ConvMixer-1536/20')
  c.data.name = 'imagenet2012'
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'
  c.data.image_size = 224
  c.data.train_pp = ('inception_crop(224)|flip|randaugment(num_ops=2, magnitude=9, magnitude_std=0.5)'
                     '|normalize(imagenet)|random_erasing(0.25)')
  c.data.eval_pp = 'resize_small(256)|central_crop(224)|normalize(imagenet)'
  c.data.shuffle_buffer = 250_000
  c.batch_size = 640
  c.eval_batch_size = 640
  c.num_epochs = 150
  c.mixup = dict(mixup_alpha=0.5, cutmix_alpha=0.5)
  c.label_smoothing = 0.1
  c.optimizer.lr = 0.01
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_steps = int(0.4 * 150 * 1_281_167 / 640)
  c.optimizer.schedule = 'linear'
  c.optimizer.clip_norm = 1.0
  c.log_every = 100
  c.eval_every = 5000
  c.checkpoint.every = 5000
  c.dtype = 'bfloat16'
  return c
