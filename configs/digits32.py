"""One recipe for every family on the offline digits upsampled to 32x32: the isotropic-vs-pyramid study's.

    python -m isojax.main --config=configs/digits32.py:ViT-128x4/4 --workdir=workdirs/digits32_vit
    python -m isojax.sweep experiments/isotropic_vs_pyramid.py --workdir=workdirs/isotropic_vs_pyramid

The argument is the model's name (any family, isotropic or pyramid). isojax's own recipe (no published
source): AdamW, cosine schedule, label smoothing, random 32x32 crops of the 4-padded image, 30 epochs.
The 8x8 digits are upsampled (bilinear) to 32x32 because the pyramids shrink their grid 32-fold: at 8x8
ResNet's last stages would pool a 1x1 map after its stem, while at 32x32 every stage sees a real grid
(8x8 after the stem, 1x1 at the end, as ImageNet's 224 gives 56 and 7). The isotropic models cut the same
32x32 image into 4x4 patches: an 8x8 grid of 64 tokens.
Expected (2026-11-30): 97.5-99.7% test accuracy on the 360 held-out digits for most families, CaiT 94% and
ResMLP 89% under this one recipe (README, "Isotropic vs pyramid"); 1-5 minutes per model on 2 CPU cores.
"""

from isojax.core.config import base, classification_eval
from isojax.models import model_config


def get_config(arg=None):
  c = base()
  c.model = model_config(arg or 'ViT-128x4/4')
  c.data.name = 'isojax_digits'
  c.data.image_size = 32
  c.data.train_pp = 'resize(32)|random_crop(size=32, padding=4)|normalize(half)'
  c.data.eval_pp = 'resize(32)|normalize(half)'
  c.data.cache = True
  c.data.uint8_batches = False  # as the study was measured: float pixels of the 8 -> 32 resize, unrounded
  c.batch_size = 128
  c.eval_batch_size = 360
  c.num_epochs = 30
  c.log_every = 20
  c.eval_every = 110  # about 10 epochs (1,437 training digits, 11.2 steps per epoch)
  c.checkpoint.every = 110
  c.optimizer.name = 'adamw'
  c.optimizer.lr = 2e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_fraction = 0.1
  c.label_smoothing = 0.1
  c.evals.val = classification_eval()
  c.best_metric = 'val/accuracy'
  return c
