"""A small MLP-Mixer on CIFAR-10 from scratch: Mixer-S width, 8 blocks, 4x4 patches.

    python -m isojax.main --config=configs/cifar10_mixer.py --workdir=workdirs/c10_mixer

AdamW, RandAugment, mixup/cutmix, label smoothing, stochastic depth. Expected: ~85-88%
test accuracy after 200 epochs (Mixers overfit small data without strong augmentation).
"""
from isojax.config_base import base, model_config


def get_config(arg=None):
  c = base()
  c.model = model_config('Mixer-S/16', patch_size=4, tokens_mlp_dim=128, drop_path_rate=0.1)
  c.data.name = 'cifar10'
  c.data.image_size = 32
  c.data.train_pp = ('random_crop(size=32, padding=4)|flip|randaugment(num_ops=2, magnitude=9)'
                     '|normalize(cifar)|random_erasing(0.25)')
  c.data.eval_pp = 'normalize(cifar)'
  c.data.cache = True
  c.batch_size = 512
  c.eval_batch_size = 1000
  c.num_epochs = 200
  c.eval_every = 1000
  c.checkpoint.every = 1000
  c.mixup = dict(mixup_alpha=0.8, cutmix_alpha=1.0)
  c.label_smoothing = 0.1
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_steps = 2000
  c.optimizer.clip_norm = 1.0
  return c
