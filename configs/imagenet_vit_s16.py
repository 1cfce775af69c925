"""ViT-S/16 on ImageNet-1k: big_vision's "Better plain ViT baselines" recipe (Beyer et al. 2022).

    python -m isojax.main --config=configs/imagenet_vit_s16.py --workdir=workdirs/i1k_vit_s16
    python -m isojax.main --config=configs/imagenet_vit_s16.py --workdir=/tmp/x --dry_run   # check first

Source: google-research/big_vision big_vision/configs/vit_s16_i1k.py (commit 0127fb6), cited
per field below. Expected: 76.5% top-1 on ImageNet validation after 90 epochs (the config's
docstring, l.16-19; 79.6% after 300: `--config.num_epochs=300`). Needs TFDS `imagenet2012`.

Crops and resizes are big_vision's own defaults: `decode_jpeg_and_inception_crop` samples 5-100%
of the area at aspect ratios 0.75-1.33, bilinear without antialiasing; `resize_small` is method 'area'
without antialiasing
(big_vision/pp/ops_image.py l.199-201, l.108). isojax keeps float pixels between ops where
big_vision casts to uint8 after each resize and RandAugment op (rounding, not another augmentation);
it rounds once before `normalize`, which runs on the device (data.uint8_batches).

Differences, and why:
- mixup: big_vision mixes each batch with itself rolled by one, weight max(a, 1 - a) with
  a ~ Beta(0.2, 0.2) (utils.get_mixup); isojax pairs with the reversed batch and draws a
  ~ Beta(0.2, 0.2) without the max: the same distribution of pairs and weights.
- The learned-posemb initialiser is irrelevant here (sincos2d has no parameters).
"""

from isojax.core.config import base
from isojax.models import model_config


def get_config(arg=None):
  c = base()
  # config.model = dict(variant='S/16', rep_size=True, pool_type='gap', posemb='sincos2d'), l.66-71.
  # rep_size=True -> a tanh pre-logits layer as wide as the model (big_vision/models/vit.py l.259-265).
  c.model = model_config('ViT-S/16', classifier='gap', posemb='sincos2d', representation_size=384)
  c.data.name = 'imagenet2012'
  c.data.train_split = 'train[:99%]'  # l.40-43
  c.data.eval_split = 'train[99%:]'  # minival, l.98 (`validation` gives the reported number)
  c.data.image_size = 224
  # 'decode_jpeg_and_inception_crop(224)|flip_lr|randaug(2,10)|value_range(-1, 1)', l.53-56; randaug is
  # big_vision/pp/archive/randaug.py -> autoaugment.distort_image_with_randaugment.
  c.data.train_pp = (
    'inception_crop(224, area_min=0.05, ratio_max=1.33, antialias=False)|flip'
    '|randaugment(num_ops=2, magnitude=10, flavour=big_vision)'
    '|normalize(half)'
  )
  c.data.eval_pp = 'resize_small(256, method=area, antialias=False)|central_crop(224)|normalize(half)'  # pp_eval, l.57
  c.data.shuffle_buffer = 250_000  # l.46 (big_vision's is per host; isojax's is the run's, see README)
  c.batch_size = 1024  # l.44
  c.eval_batch_size = 1024
  c.num_epochs = 90  # total_epochs, l.36
  c.loss = 'softmax_xent'  # l.38
  c.mixup = dict(mixup_alpha=0.2, cutmix_alpha=0.0)  # mixup p=0.2, l.84
  c.optimizer.name = 'adamw'  # optax_name='scale_by_adam' (+ wd below), l.75
  c.optimizer.mu_dtype = 'bfloat16'  # optax=dict(mu_dtype='bfloat16'), l.76
  c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.999, 1e-8  # optax.scale_by_adam defaults
  c.optimizer.lr = 1e-3  # l.78
  c.optimizer.weight_decay = 1e-4  # wd, l.79
  c.optimizer.weight_decay_mode = 'lr_independent'  # big_vision/optax.py make(): wd after scale(lr)
  c.optimizer.decay_params = '.*/kernel$'  # wd_mults default [('.*/kernel$', 1.0)], matched with re.fullmatch
  c.optimizer.warmup_steps = 10_000  # schedule warmup_steps, l.80
  c.optimizer.schedule = 'cosine'  # decay_type='cosine', l.80
  c.optimizer.clip_norm = 1.0  # grad_clip_norm, l.74
  c.dtype = 'float32'  # the config sets no dtype_mm: float32 matmuls
  c.log_every = 50  # log_training_steps, l.62
  c.eval_every = 2500  # evals log_steps, l.92
  c.checkpoint.every = 1000  # ckpt_steps, l.63
  return c
