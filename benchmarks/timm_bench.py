"""timm/PyTorch side of the side-by-side benchmark; runs in its own venv (torch and timm only).

    /path/to/timm-venv/bin/python benchmarks/timm_bench.py --model ViT-S/16 --batch_size 16 --image_size 224

Times the same two things isojax.bench times, the way timm trains: a full training step
(forward, cross-entropy, backward, AdamW update) in train mode, and inference under
`torch.inference_mode()` in eval mode. Prints one JSON line.
"""

import argparse
import json
import statistics
import time

import timm
import torch
import torch.nn.functional as F
from timm.models.convmixer import ConvMixer

# isojax registry name -> timm constructor (same architecture, same parameter count).
MODELS = {
  'ViT-S/16': lambda n, s: timm.create_model('vit_small_patch16_224', num_classes=n, img_size=s),
  'ViT-B/16': lambda n, s: timm.create_model('vit_base_patch16_224', num_classes=n, img_size=s),
  'Mixer-S/16': lambda n, s: timm.create_model('mixer_s16_224', num_classes=n, img_size=s),
  'Mixer-B/16': lambda n, s: timm.create_model('mixer_b16_224', num_classes=n, img_size=s),
  'ConvMixer-768/32': lambda n, s: timm.create_model('convmixer_768_32', num_classes=n),
  'ConvMixer-1536/20': lambda n, s: timm.create_model('convmixer_1536_20', num_classes=n),
  'ConvMixer-256/8': lambda n, s: ConvMixer(dim=256, depth=8, kernel_size=5, patch_size=2, num_classes=n),
}


def median_seconds(fn, steps):
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--model', required=True, choices=sorted(MODELS))
  parser.add_argument('--batch_size', type=int, required=True)
  parser.add_argument('--image_size', type=int, required=True)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--num_classes', type=int, default=1000)
  parser.add_argument('--only', choices=('train', 'inference'))
  args = parser.parse_args()
  torch.manual_seed(0)
  model = MODELS[args.model](args.num_classes, args.image_size)
  images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
  labels = torch.randint(0, args.num_classes, (args.batch_size,))
  result = {
    'framework': 'timm',
    'model': args.model,
    'batch_size': args.batch_size,
    'image_size': args.image_size,
    'torch': torch.__version__,
    'timm': timm.__version__,
    'threads': torch.get_num_threads(),
  }

  if args.only != 'inference':
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    model.train()

    def train_step():
      optimizer.zero_grad(set_to_none=True)
      loss = F.cross_entropy(model(images), labels)
      loss.backward()
      optimizer.step()
      return loss.item()

    train_step()  # warm-up: allocations, lazy optimizer state
    result['train_seconds'] = median_seconds(train_step, args.steps)

  if args.only != 'train':
    model.eval()

    def infer():
      with torch.inference_mode():
        return model(images).sum().item()

    infer()
    result['inference_seconds'] = median_seconds(infer, args.steps)
  print(json.dumps(result))


if __name__ == '__main__':
  main()
