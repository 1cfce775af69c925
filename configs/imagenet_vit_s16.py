"""ViT-S/16 on ImageNet-1k: "Better plain ViT baselines for ImageNet-1k" (Beyer et al. 2022).

    python -m isojax.main --config=configs/imagenet_vit_s16.py --workdir=workdirs/i1k_vit_s16

Global average pooling, fixed 2D sin-cos position embeddings, batch 1024, AdamW
(lr 1e-3, wd 1e-4, 10k warmup steps, cosine), Inception crop, RandAugment(2, 10),
mixup 0.2, 90 epochs, no dropout or stochastic depth. Expected: 76.5% top-1 after 90
epochs (79.6% after 300: `--config.num_epochs=300`). Needs the TFDS `imagenet2012` data.
"""
from isojax.config_base import base, model_config


def get_config(arg=None):
  c = base()
  c.model = model_config('ViT-S/16', classifier='gap', posemb='sincos2d')
  c.data.name = 'imagenet2012'
  c.data.train_split = 'train[:99%]'
  c.data.eval_split = 'train[99%:]'     # minival; use 'validation' for the reported number
  c.data.image_size = 224
  c.data.train_pp = 'inception_crop(224)|flip|randaugment(num_ops=2, magnitude=10)|normalize(half)'
  c.data.eval_pp = 'resize_small(256)|central_crop(224)|normalize(half)'
  c.data.shuffle_buffer = 250_000
  c.batch_size = 1024
  c.eval_batch_size = 1024
  c.num_epochs = 90
  c.mixup = dict(mixup_alpha=0.2, cutmix_alpha=0.0)
  c.optimizer.lr = 1e-3
  c.optimizer.b2 = 0.999
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_steps = 10_000
  c.optimizer.clip_norm = 1.0
  c.log_every = 100
  c.eval_every = 5000
  c.checkpoint.every = 5000
  c.dtype = 'bfloat16'
  return c
