"""ConvMixer-1536/20 (kernel 9, patch 7) on ImageNet-1k: the paper's recipe.

    python -m isojax.main --config=configs/imagenet_convmixer_1536_20.py --workdir=workdirs/i1k_convmixer

Source: locuslab/convmixer README.md l.46-70 ("exactly the settings we used"), run with its
copy of timm (pytorch-image-models/train.py defaults for what the command leaves out).
Expected: 81.37% top-1 (README table / paper Table 1). Needs TFDS `imagenet2012`.

Differences, and why:
- `--amp` (float16 autocast) -> bfloat16 compute with float32 parameters (no loss scaling needed).
- `--train-interpolation random`: RandAugment's geometric ops pick bilinear or bicubic per op as timm's
  (`interpolation=random`); the RandomResizedCrop's own resize stays bilinear, antialiased.
- RandAugment `rand-m9-mstd0.5-inc1` with timm's grey fill 128; timm's loader fills with the
  ImageNet mean (124, 116, 104).
- Mixup/CutMix on the normalised float batch; timm's FastCollateMixup mixes the uint8 images and rounds.
- BatchNorm over each 64 examples as each of the source's 10 GPUs (`batch_norm_group=64`, no --sync-bn):
  the per-device batch must be a multiple of 64 or divide it (10 devices: 64 each); the running statistics
  average the groups' where DDP keeps rank 0's, and move with the biased variance (flax's; torch's running
  variance is unbiased).
- Evaluation: timm's convmixer cfg crops 0.96 with bicubic resizing; here resize_small(233) ->
  central_crop(224), bilinear.
"""

from isojax.core.config import base
from isojax.models import model_config


def get_config(arg=None):
  c = base()
  # --model convmixer_1536_20: kernel 9, patch 7, GELU. No --sync-bn: each GPU's BatchNorm sees its own 64 images.
  c.model = model_config('ConvMixer-1536/20', batch_norm_group=64)
  c.data.name = 'imagenet2012'
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'
  c.data.image_size = 224  # --input-size 3 224 224
  # RandomResizedCrop (train.py --scale 0.08 1.0, --ratio 3/4 4/3) | flip (--hflip 0.5) |
  # --aa rand-m9-mstd0.5-inc1 (with --train-interpolation random: bilinear or bicubic per op, auto_augment.py
  # _interpolation) | normalize (imagenet). With --aa set, timm's transforms_imagenet_train adds no colour jitter.
  c.data.train_pp = (
    'inception_crop(224)|flip|randaugment(num_ops=2, magnitude=9, magnitude_std=0.5, '
    'flavour=timm, increasing=True, interpolation=random)|normalize(imagenet)'
  )
  c.data.eval_pp = 'resize_small(233)|central_crop(224)|normalize(imagenet)'
  c.data.shuffle_buffer = 250_000
  c.batch_size = 640  # -b 64 on 10 GPUs
  c.eval_batch_size = 640
  c.num_epochs = 150  # --epochs 150
  c.mixup = dict(mixup_alpha=0.5, cutmix_alpha=0.5)  # --mixup 0.5 --cutmix 0.5 (switch prob 0.5, batch mode)
  # --reprob 0.25 --remode pixel: timm's PrefetchLoader erases the batch after FastCollateMixup mixed it
  c.random_erasing.prob = 0.25
  c.label_smoothing = 0.1  # train.py --smoothing default 0.1
  c.optimizer.name = 'adamw'  # --opt adamw (torch AdamW: decay times lr)
  c.optimizer.lr = 0.01  # --lr 0.01
  c.optimizer.eps = 1e-3  # --opt-eps=1e-3
  c.optimizer.weight_decay = 2e-5  # train.py --weight-decay default 2e-5
  c.optimizer.weight_decay_mode = 'lr_scaled'
  c.optimizer.schedule = 'onecycle'  # --sched onecycle (timm/scheduler/onecycle_lr.py)
  c.optimizer.warmup_steps = 0  # --warmup-epochs 0 (the schedule has its own)
  c.optimizer.clip_norm = 1.0  # --clip-grad 1.0
  c.log_every = 100
  c.eval_every = 2000  # timm evaluates every epoch
  c.checkpoint.every = 2000
  c.dtype = 'bfloat16'
  return c
