"""Writes tests/data/timm/: small timm models' weights in each file format, inputs, and timm's logits.

Also `seeded.json` + `seeded_logits.npz`: timm's own registered models (`timm.create_model(name)`,
some made shallower, never narrower), with weights regenerated from a seed by
tests/reference/seeded.py, so a 21M-parameter ConvMixer-768/32 costs a few kB in the repository.

Run in a venv with timm and torch (not isojax dependencies), from the repository root:

    python tests/reference/make_timm_fixtures.py

tests/test_timm_weights.py then checks, without torch, that isojax reproduces these logits.
"""

import json
import os
import sys
from functools import partial

import numpy as np
import timm
import torch
from safetensors.torch import save_file
from timm.layers import GatedMlp
from timm.models.convmixer import ConvMixer
from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock, SpatialGatingBlock
from timm.models.vision_transformer import VisionTransformer

OUT = os.path.join('tests', 'data', 'timm')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__))))
from seeded import seeded_state  # noqa: E402

# timm name: (create_model keyword arguments, image size). Depth is cut to 2 where the published
# depth is not what the case is about; widths, heads, pooling, norms and activations stay published.
SEEDED = {
  'vit_small_patch16_224': (dict(img_size=32, depth=2), 32),
  'deit3_small_patch16_224': (dict(img_size=32, depth=2), 32),  # LayerScale, posemb before cls
  'vit_medium_patch16_gap_256': (dict(img_size=32, depth=2), 32),  # no class token, no qkv bias
  'mixer_s16_224': (dict(img_size=32), 32),  # timm fixes its 8 blocks
  'convmixer_768_32': (dict(), 28),  # ReLU: the full 32 blocks
  'resnet18': (dict(), 32),  # the pyramid baselines
  'resnet50': (dict(), 32),
  'cait_xxs24_224': (dict(img_size=32, depth=2), 32),  # talking heads, class attention
  'resnetv2_50x1_bit': (dict(), 32),  # weight standardisation, GroupNorm
}


def facebook_convnext_isotropic():
  """facebookresearch/ConvNeXt's ConvNeXtIsotropic, run from the verbatim copies in tests/reference/sources."""
  import importlib.util
  import types

  here = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'sources')
  sys.modules.setdefault('convnext_models', types.ModuleType('convnext_models')).__path__ = []
  for name in ('convnext', 'convnext_isotropic'):
    spec = importlib.util.spec_from_file_location(
      f'convnext_models.{name}', os.path.join(here, f'convnext_models_{name}.py')
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[f'convnext_models.{name}'] = module
    spec.loader.exec_module(module)
  return sys.modules['convnext_models.convnext_isotropic'].ConvNeXtIsotropic


# Models built from a constructor: name: (constructor, image size). ConvNeXt-iso (not in timm):
# ConvNeXt-iso-S's width, 2 of its 18 blocks, once as published (no LayerScale), once with the gamma.
REFERENCE = {
  # timm's resmlp_24_224 and gmlp_ti16_224 (mlp_mixer.py l.797-806, 833-842) with 2 blocks: their
  # registered functions fix num_blocks, so their MlpMixer arguments are repeated here.
  'resmlp_24_224_d2': (
    lambda: MlpMixer(
      patch_size=16,
      num_blocks=2,
      embed_dim=384,
      mlp_ratio=4,
      img_size=32,
      block_layer=partial(ResBlock, init_values=1e-5),
      norm_layer=Affine,
    ),
    32,
  ),
  'gmlp_ti16_224_d2': (
    lambda: MlpMixer(
      patch_size=16,
      num_blocks=2,
      embed_dim=128,
      mlp_ratio=6,
      img_size=32,
      block_layer=SpatialGatingBlock,
      mlp_layer=GatedMlp,
    ),
    32,
  ),
  'convnext_isotropic_small_d2': (lambda: facebook_convnext_isotropic()(depth=2, dim=384), 32),
  'convnext_isotropic_small_d2_gamma': (
    lambda: facebook_convnext_isotropic()(depth=2, dim=384, layer_scale_init_value=1e-6),
    32,
  ),
}

MODELS = {  # name: (timm model, file format)
  'vit_token': (
    lambda: VisionTransformer(
      img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2, num_classes=10
    ),
    'safetensors',
  ),
  'vit_gap_layerscale': (
    lambda: VisionTransformer(
      img_size=16,
      patch_size=4,
      embed_dim=32,
      depth=2,
      num_heads=4,
      mlp_ratio=2,
      num_classes=10,
      global_pool='avg',
      class_token=False,
      init_values=0.1,
    ),
    'pth',
  ),
  'mixer': (
    lambda: MlpMixer(img_size=16, patch_size=4, embed_dim=32, num_blocks=2, mlp_ratio=(0.5, 2.0), num_classes=10),
    'bin',
  ),
  'convmixer': (lambda: ConvMixer(dim=32, depth=2, kernel_size=3, patch_size=4, num_classes=10), 'pth'),
}


def randomise(model, generator):
  """Random weights everywhere (timm zero-initialises some heads), positive BatchNorm variances."""
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if tensor.dtype != torch.float32:
        continue
      noise = 0.2 * torch.randn(tensor.shape, generator=generator)
      if name.endswith('running_var'):
        tensor.copy_(noise.abs() + 0.5)
      elif name.endswith('.weight') and tensor.ndim == 1:  # norm scales
        tensor.copy_(1.0 + noise)
      else:
        tensor.copy_(noise)


def main():
  os.makedirs(OUT, exist_ok=True)
  generator = torch.Generator().manual_seed(0)
  images = np.random.RandomState(0).normal(size=(4, 16, 16, 3)).astype(np.float32)
  expected = {'images': images}
  for name, (make, extension) in MODELS.items():
    model = make().eval()
    randomise(model, generator)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = os.path.join(OUT, f'{name}.{extension}')
    save_file(state, path) if extension == 'safetensors' else torch.save(state, path)
    with torch.no_grad():
      expected[name] = model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    print(name, path, os.path.getsize(path), 'bytes')
  np.savez(os.path.join(OUT, 'expected_logits.npz'), **expected)

  specs, logits = {}, {}
  makers = {
    name: (lambda name=name, kwargs=kwargs: timm.create_model(name, pretrained=False, **kwargs), kwargs, size)
    for name, (kwargs, size) in SEEDED.items()
  }
  makers.update({name: (make, {}, size) for name, (make, size) in REFERENCE.items()})
  for seed, (name, (make, kwargs, size)) in enumerate(makers.items()):
    model = make().eval()
    shapes = {k: [list(v.shape), str(v.dtype).replace('torch.', '')] for k, v in model.state_dict().items()}
    state = seeded_state(shapes, seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    images = np.random.RandomState(100 + seed).normal(size=(2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
      logits[name] = model(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    logits[f'{name}/images'] = images
    specs[name] = dict(seed=seed, kwargs=kwargs, image_size=size, shapes=shapes)
    print(name, sum(np.prod(s) for s, _ in shapes.values()), 'parameters; logits', logits[name].shape)
  with open(os.path.join(OUT, 'seeded.json'), 'w') as f:
    json.dump(dict(timm=timm.__version__, torch=torch.__version__.split('+')[0], models=specs), f)
  np.savez(os.path.join(OUT, 'seeded_logits.npz'), **logits)


if __name__ == '__main__':
  main()
