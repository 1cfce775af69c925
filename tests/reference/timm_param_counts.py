"""Compares the reference's own parameter count (timm's; ConvNeXt-iso: facebookresearch/ConvNeXt's) with
PUBLISHED_PARAMS in tests/test_models.py for every name.

Not part of the suite: timm and torch are not isojax dependencies. In a venv with
`pip install torch==2.14.1 torchvision==0.29.1 timm` (no jax needed):

    python tests/reference/timm_param_counts.py     # 48 x OK with timm 1.0.31
"""

import ast
import os
import re

from timm.models.convmixer import ConvMixer
from timm.models.mlp_mixer import MlpMixer
from timm.models.vision_transformer import VisionTransformer

VIT = {'Ti': (192, 12, 3), 'S': (384, 12, 6), 'B': (768, 12, 12), 'L': (1024, 24, 16), 'H': (1280, 32, 16)}
MIXER = {'S': (512, 8), 'B': (768, 12), 'L': (1024, 24), 'H': (1280, 32)}
TIMM_NAMES = {
  'ResMLP-S12': 'resmlp_12_224',
  'ResMLP-S24': 'resmlp_24_224',
  'ResMLP-S36': 'resmlp_36_224',
  'ResMLP-B24': 'resmlp_big_24_224',
  'gMLP-Ti/16': 'gmlp_ti16_224',
  'gMLP-S/16': 'gmlp_s16_224',
  'gMLP-B/16': 'gmlp_b16_224',
  'DeiT3-S/16': 'deit3_small_patch16_224',
  'DeiT3-B/16': 'deit3_base_patch16_224',
  'CaiT-XXS24': 'cait_xxs24_224',
  'CaiT-S24': 'cait_s24_224',
  'BiT-R50x1': 'resnetv2_50x1_bit',
  'R50+ViT-B/16': 'vit_base_r50_s16_224',
  'R26+ViT-S/32': 'vit_small_r26_s32_224',
  'R26+ViT-B/32': 'vit_base_r26_s32_224',
  'R50+ViT-L/32': 'vit_large_r50_s32_224',
}
CONVMIXER = {'1536/20': (9, 7), '768/32': (7, 7), '1024/20': (9, 14), '256/8': (5, 2)}


def timm_model(name):
  if name.startswith('ConvNeXt-iso-'):  # not in timm: facebookresearch/ConvNeXt's own code, vendored
    from make_timm_fixtures import facebook_convnext_isotropic

    depth, width = {'S': (18, 384), 'B': (18, 768), 'L': (36, 1024)}[name[-1]]
    return facebook_convnext_isotropic()(depth=depth, dim=width)
  if name in TIMM_NAMES:
    import timm

    return timm.create_model(TIMM_NAMES[name], pretrained=False, num_classes=1000)
  if name.startswith('ResNet-'):
    import timm

    return timm.create_model(f'resnet{name.split("-")[1]}', pretrained=False, num_classes=1000)
  family, size, patch = re.match(r'(\w+)-(\w+)/(\d+)', name).groups()
  patch = int(patch)
  if family == 'ViT':
    width, depth, heads = VIT[size]
    return VisionTransformer(
      img_size=224, patch_size=patch, embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=4, num_classes=1000
    )
  if family == 'Mixer':
    width, depth = MIXER[size]
    return MlpMixer(
      img_size=224, patch_size=patch, embed_dim=width, num_blocks=depth, mlp_ratio=(0.5, 4.0), num_classes=1000
    )
  kernel, patch_size = CONVMIXER[f'{size}/{patch}']
  return ConvMixer(dim=int(size), depth=patch, kernel_size=kernel, patch_size=patch_size, num_classes=1000)


def published_params():
  """PUBLISHED_PARAMS from tests/test_models.py, read without importing jax."""
  path = os.path.join(os.path.dirname(__file__), '..', 'test_models.py')
  tree = ast.parse(open(path).read())
  node = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == 'PUBLISHED_PARAMS')
  return ast.literal_eval(node.value)


if __name__ == '__main__':
  mismatches = 0
  for name, ours in published_params().items():
    theirs = sum(p.numel() for p in timm_model(name).parameters())
    mismatches += theirs != ours
    print(f'{name:20s} timm {theirs:>12,d}  isojax {ours:>12,d}  {"OK" if theirs == ours else "DIFFERENT"}')
  raise SystemExit(mismatches)
