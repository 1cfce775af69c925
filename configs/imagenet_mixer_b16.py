"""Mixer-B/16 on ImageNet-1k from scratch (Tolstikhin et al. 2021, Appendix B recipe).

    python -m isojax.main --config=configs/imagenet_mixer_b16.py --workdir=workdirs/i1k_mixer_b16

Batch 4096, AdamW (b1 0.9, b2 0.999, peak lr 3e-3), 10k
warmup steps then linear decay, weight decay 0.1, grad clip 1.0, RandAugment(2, 15),
mixup 0.5, stochastic depth 0.1, 300 epochs. Expected: 76.4% top-1 (paper, Table 2,
ImageNet from scratch with strong regularisation).
"""
from isojax.config_base import base, model_config


def get_config(arg=None):
  c = base()
  c.model = model_config('Mixer-B/16', drop_path_rate=0.1)
  c.data.name = 'imagenet2012'
  c.data.train_split = 'train[:99%]'
  c.data.eval_split = 'train[99%:]'
  c.data.image_size = 224
  c.data.train_pp = 'inception_crop(224)|flip|randaugment(num_ops=2, magnitude=15)|normalize(half)'
  c.data.eval_pp = 'resize_small(256)|central_crop(224)|normalize(half)'
  c.data.shuffle_buffer = 250_000
  c.batch_size = 4096
  c.eval_batch_size = 1024
  c.num_epochs = 300
  c.mixup = dict(mixup_alpha=0.5, cutmix_alpha=0.0)
  c.optimizer.lr = 3e-3
  c.optimizer.weight_decay = 0.1
  c.optimizer.warmup_steps = 10_000
  c.optimizer.schedule = 'linear'
  c.optimizer.clip_norm = 1.0
  c.log_every = 100
  c.eval_every = 5000
  c.checkpoint.every = 5000
  c.dtype = 'bfloat16'
  return c
