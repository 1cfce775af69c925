"""Prints timm's parameter count for every isojax model name (1000 classes, published image size).

Not part of the suite: timm and torch are not isojax dependencies. Run it in a venv with
`pip install torch timm` and compare with PUBLISHED_PARAMS in tests/test_models.py:

    python tests/reference/timm_param_counts.py
"""
import re

from timm.models.convmixer import ConvMixer
from timm.models.mlp_mixer import MlpMixer
from timm.models.vision_transformer import VisionTransformer

VIT = {'Ti': (192, 12, 3), 'S': (384, 12, 6), 'B': (768, 12, 12), 'L': (1024, 24, 16), 'H': (1280, 32, 16)}
MIXER = {'S': (512, 8), 'B': (768, 12), 'L': (1024, 24), 'H': (1280, 32)}
CONVMIXER = {'1536/20': (9, 7), '768/32': (7, 7), '1024/20': (9, 14), '256/8': (5, 2)}


def timm_model(name):
  family, size, patch = re.match(r'(\w+)-(\w+)/(\d+)', name).groups()
  patch = int(patch)
  if family == 'ViT':
    width, depth, heads = VIT[size]
    return VisionTransformer(img_size=224, patch_size=patch, embed_dim=width, depth=depth,
                             num_heads=heads, mlp_ratio=4, num_classes=1000)
  if family == 'Mixer':
    width, depth = MIXER[size]
    return MlpMixer(img_size=224, patch_size=patch, embed_dim=width, num_blocks=depth,
                    mlp_ratio=(0.5, 4.0), num_classes=1000)
  kernel, patch_size = CONVMIXER[f'{size}/{patch}']
  return ConvMixer(dim=int(size), depth=patch, kernel_size=kernel, patch_size=patch_size,
                   num_classes=1000)


if __name__ == '__main__':
  import sys
  sys.path.insert(0, '.')
  from tests.test_models import PUBLISHED_PARAMS
  for name, ours in PUBLISHED_PARAMS.items():
    theirs = sum(p.numel() for p in timm_model(name).parameters())
    print(f'{name:20s} timm {theirs:>12,d}  isojax {ours:>12,d}  {"OK" if theirs == ours else "DIFFERENT"}')
