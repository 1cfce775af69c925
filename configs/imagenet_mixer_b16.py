"""Mixer-B/16 on ImageNet-1k from scratch: big_vision's MLP-Mixer recipe.

    python -m isojax.main --config=configs/imagenet_mixer_b16.py --workdir=workdirs/i1k_mixer_b16

Source: google-research/big_vision big_vision/configs/mlp_mixer_i1k.py (commit 0127fb6), cited
per field below. Expected: 76.4% top-1 on ImageNet validation (MLP-Mixer paper, Table 2,
Mixer-B/16 trained on ImageNet from scratch with this kind of regularisation); big_vision's
file states no figure. Needs TFDS `imagenet2012`.

Crops and resizes are big_vision's own defaults: `decode_jpeg_and_inception_crop` samples 5-100%
of the area at aspect ratios 0.75-1.33, bilinear without antialiasing; `resize_small` is method 'area'
without antialiasing
(big_vision/pp/ops_image.py l.199-201, l.108). isojax keeps float pixels between ops where
big_vision rounds to uint8 after each resize and RandAugment op (rounding, not another augmentation).

Differences, and why:
- mixup: big_vision rolls the batch by one and weights max(a, 1 - a); isojax pairs with the
  reversed batch (the same distribution of pairs and weights).
- RandAugment magnitude 15 is past the 0..10 scale; big_vision's ops extrapolate linearly
  and so do isojax's big_vision-flavour ops (its Solarize threshold int(1.5 * 256) = 384 wraps to 128 as
  a uint8, as in the source).
- None in stochastic depth: the Mixer family's is big_vision's `_stoch_depth_mask` (kept branches not
  divided by 1 - p, a linear ramp over blocks).
"""

from isojax.core.config import base
from isojax.models import model_config


def get_config(arg=None):
  c = base()
  # model.variant='B/16', stoch_depth=0.1; init_head_bias=-6.9 (for the sigmoid loss)
  c.model = model_config('Mixer-B/16', drop_path_rate=0.1, head_bias_init=-6.9)
  c.data.name = 'imagenet2012'
  c.data.train_split = 'train[:99%]'
  c.data.eval_split = 'train[99%:]'  # minival
  c.data.image_size = 224
  # 'decode_jpeg_and_inception_crop(224)|flip_lr|randaug(2,15)|value_range(-1, 1)'
  c.data.train_pp = (
    'inception_crop(224, area_min=0.05, ratio_max=1.33, antialias=False)|flip'
    '|randaugment(num_ops=2, magnitude=15, flavour=big_vision)'
    '|normalize(half)'
  )
  c.data.eval_pp = 'resize_small(256, method=area, antialias=False)|central_crop(224)|normalize(half)'
  c.data.shuffle_buffer = 250_000  # big_vision's is per host; isojax's is the run's (README, input pipeline)
  c.batch_size = 4096
  c.eval_batch_size = 1024
  c.num_epochs = 300  # total_epochs
  c.loss = 'sigmoid_xent'  # loss
  c.mixup = dict(mixup_alpha=0.5, cutmix_alpha=0.0)  # mixup p=0.5
  c.optimizer.name = 'adamw'  # optax_name='scale_by_adam' + wd
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 1e-4
  c.optimizer.weight_decay_mode = 'lr_independent'
  c.optimizer.warmup_steps = 10_000
  c.optimizer.schedule = 'linear'  # decay_type='linear', linear_end=1e-5 (a multiplier of lr)
  c.optimizer.end_lr_factor = 1e-5
  c.optimizer.clip_norm = 1.0  # grad_clip_norm
  c.dtype = 'float32'
  c.log_every = 50
  c.eval_every = 2500
  c.checkpoint.every = 1000  # ckpt_steps
  return c
