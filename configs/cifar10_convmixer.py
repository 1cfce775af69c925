"""ConvMixer-256/8 (kernel 5, patch 2) on CIFAR-10: locuslab/convmixer-cifar10's 100-epoch recipe.

    python -m isojax.main --config=configs/cifar10_convmixer.py --workdir=workdirs/c10_convmixer

Source: locuslab/convmixer-cifar10 (commit 2d3d9b7) README.md l.47-51,
`python train.py --lr-max=0.05 --ra-n=2 --ra-m=12 --wd=0.005 --scale=1.0 --jitter=0.2 --reprob=0.2
--epochs=100`, with train.py's defaults for the rest (cited per field below). Expected: "more
than 94%" test accuracy (README l.47). The 25-epoch command (92.5%) is
`--config.num_epochs=25` with `--jitter=0 --reprob=0`: drop `color_jitter` and `random_erasing`
from `data.train_pp`.

Differences, and why:
- AMP float16 autocast (train.py l.118) -> float32 here (CPU-friendly; set dtype=bfloat16 on GPUs).
- The source's DataLoader keeps a last partial batch (98 steps per epoch); isojax runs
  ceil(100 * 50000 / 512) = 9,766 full batches, and the schedule spans exactly those steps.
"""

from isojax.core.config import base
from isojax.models import model_config


def get_config(arg=None):
  c = base()
  # --hdim 256 --depth 8 --psize 2 --conv-ks 5 (train.py l.22-25): nn.GELU, BatchNorm2d, PyTorch init.
  c.model = model_config('ConvMixer-256/8', kernel_size=5, patch_size=2)
  c.data.name = 'cifar10'
  c.data.train_split = 'train'
  c.data.eval_split = 'test'
  c.data.image_size = 32
  # train_transform, l.69-77: RandomResizedCrop(32, scale=(1.0, 1.0), ratio=(1.0, 1.0)) keeps the
  # whole 32x32 image (omitted); RandomHorizontalFlip; RandAugment(num_ops=2, magnitude=12) on
  # torchvision's 31 bins; ColorJitter(0.2, 0.2, 0.2); Normalize(cifar10 mean/std, l.66-67);
  # RandomErasing(p=0.2): torchvision scale (0.02, 0.33), ratio (0.3, 3.3), value=0, per image before batching.
  c.data.train_pp = (
    'flip|randaugment(num_ops=2, magnitude=12, flavour=torchvision)'
    '|color_jitter(brightness=0.2, contrast=0.2, saturation=0.2)'
    '|normalize(cifar)|random_erasing(0.2, area_min=0.02, area_max=0.33, fill=zero, aspect_max=3.3)'
  )
  c.data.eval_pp = 'normalize(cifar)'  # test_transform, l.79-82
  c.data.cache = True
  c.batch_size = 512  # --batch-size 512
  c.eval_batch_size = 1000
  c.num_epochs = 100  # --epochs=100
  c.label_smoothing = 0.0  # nn.CrossEntropyLoss()
  c.optimizer.name = 'adamw'  # optim.AdamW (l.102): betas (0.9, 0.999), eps 1e-8
  c.optimizer.eps = 1e-8
  c.optimizer.lr = 0.05  # --lr-max=0.05
  c.optimizer.weight_decay = 0.005  # --wd=0.005, multiplied by lr as in torch AdamW
  c.optimizer.weight_decay_mode = 'lr_scaled'
  c.optimizer.decay_params = '.*'  # torch AdamW decays every parameter (model.parameters())
  c.optimizer.schedule = 'onecycle'  # lr_schedule, l.99-100, at epoch + (i + 1) / len
  c.optimizer.warmup_steps = 0
  c.optimizer.clip_norm = 0.0  # --clip-norm not given: no clipping
  c.eval_every = 1000
  c.checkpoint.every = 1000
  return c
