"""A small MLP-Mixer on CIFAR-10 from scratch: Mixer-S width, 8 blocks, 4x4 patches.

    python -m isojax.main --config=configs/cifar10_mixer.py --workdir=workdirs/c10_mixer

isojax's own recipe, not a published one: the small ViT's CIFAR recipe (configs/cifar10_vit.py: AdamW,
RandAugment, mixup/CutMix, random erasing, label smoothing, 200 epochs) with the Mixer in place of the ViT. Unmeasured
estimate: ~85-88% test accuracy (Mixers overfit small data without strong augmentation).
"""

import os

from isojax.core.loading import load
from isojax.models import model_config


def get_config(arg=None):
  c = load(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cifar10_vit.py'))
  # timm's DropPath (kept branches / (1 - rate)), as the ViT recipe this copies; the Mixer family's own is
  # big_vision's, unscaled
  c.model = model_config('Mixer-512x8/4-t128', drop_path_rate=0.1, drop_path_scale=True)
  return c
