"""Isotropic vs pyramid at one parameter budget: one model of every family, one recipe, offline.

    python -m isojax.sweep experiments/isotropic_vs_pyramid.py --workdir=workdirs/isotropic_vs_pyramid
    python -m isojax.sweep --summarize workdirs/isotropic_vs_pyramid    # table + plots again

Every model has 0.70-0.84 M parameters (the budget, pinned by tests/test_study.py) and trains with the
recipe of configs/digits32.py (the digits upsampled to 32x32, 30 epochs). The isotropic models cut the
image into 4x4 patches (an 8x8 grid of tokens, 1x1 on the hybrid's /8 ResNet map); the pyramids shrink it
from 32x32 to 1x1. results.md lists parameters, GFLOPs per image and train / evaluation images/s beside
the accuracy; results_cost.png plots accuracy against GFLOPs and parameters, results_shapes.png each
model's tokens x width after every block or stage. About 32 minutes on 2 CPU cores, one trial at a time.
"""

from isojax.sweeps import Sweep

# family: model name, at 0.70-0.84 M parameters for 10 classes on 32x32 single-channel digits
MODELS = {
  'vit': 'ViT-128x4/4',
  'deit3': 'DeiT3-128x4/4',
  'cait': 'CaiT-128x2/4',  # 2 self-attention + 2 class-attention blocks
  'mixer': 'Mixer-144x4/4',
  'resmlp': 'ResMLP-152x4/4',
  'gmlp': 'gMLP-128x5/4',
  'convnext_iso': 'ConvNeXt-iso-128x6-p4',
  'convmixer': 'ConvMixer-256/10-k5-p4',
  'hybrid': 'Rs1.1-w32+ViT-128x3/1',  # a 2-stage ResNet (32x32 -> 4x4) under a ViT
  'resnet': 'ResNet-18-w16',  # pyramid: BatchNorm
  'resnetv2': 'BiT-R50-w12-g4',  # pyramid: GroupNorm, weight standardisation
}


def get_sweep():
  return Sweep('configs/digits32.py', [{'arg': name} for name in MODELS.values()])
