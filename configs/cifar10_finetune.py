"""Fine-tune pretrained weights on CIFAR-10: `:vit` (ViT-B/16, default) or `:mixer` (Mixer-B/16).

    python -m isojax.main --config=configs/cifar10_finetune.py:vit --workdir=workdirs/c10_ft \
        --config.init_from=PATH

Source: google-research/vision_transformer vit_jax/configs/common.py (batch 512, base_lr 0.03,
cosine, warmup_steps 500, grad_norm_clip 1.0, SGD with momentum 0.9, no weight decay) and its
cifar10 entry (total_steps 10_000, train[:98%] / test). Difference: 224 px instead of the
source's crop 384 (4x cheaper; expect a few tenths lower). Momentum in bfloat16 as the source's
optim_dtype (vit_jax/train.py l.140-143, optax.sgd(accumulator_dtype='bfloat16')).

PATH is a published checkpoint of the same architecture (google-research/vision_transformer
`ViT-B_16.npz` / `Mixer-B_16.npz`, a big_vision .npz) or the workdir of an isojax run. The head
is re-initialised for 10 classes and learned position embeddings are resized to the new grid.
For timm weights add `--config.model.approximate_gelu=False`. The ViT paper's fine-tuning recipe:
SGD momentum 0.9, no weight decay, batch 512, 10k steps with 500 warmup and cosine decay, grad clip 1.0,
224px. Expected, from ImageNet-21k weights: ~98.9% (ViT-B/16) / ~97.7% (Mixer-B/16) test accuracy.
"""

from isojax.core.config import base
from isojax.models import model_config


def get_config(arg=None):
  family = arg or 'vit'
  models = {'vit': ('ViT-B/16', {}), 'mixer': ('Mixer-B/16', {})}
  if family not in models:
    raise ValueError(f"configs/cifar10_finetune.py takes ':vit' or ':mixer', got {arg!r}.")
  name, overrides = models[family]
  c = base()
  c.model = model_config(name, **overrides)
  c.data.name = 'cifar10'
  c.data.train_split = 'train[:98%]'
  c.data.eval_split = 'test'
  c.data.image_size = 224
  # vit_jax/input_pipeline.py l.199-209: sample_distorted_bounding_box(area_range=(0.05, 1.0)) with TF's default
  # aspect range (0.75, 1.33), tf.image.resize (bilinear, no antialiasing), a random flip
  c.data.train_pp = 'inception_crop(224, area_min=0.05, ratio_max=1.33, antialias=False)|flip|normalize(half)'
  c.data.eval_pp = 'resize(224)|normalize(half)'
  c.batch_size = 512
  c.eval_batch_size = 1000
  c.num_steps = 10_000
  c.eval_every = 1000
  c.checkpoint.every = 1000
  c.optimizer.name = 'sgd'
  c.optimizer.lr = 0.03
  c.optimizer.momentum = 0.9
  c.optimizer.mu_dtype = 'bfloat16'  # configs/common.py optim_dtype
  c.optimizer.weight_decay = 0.0
  c.optimizer.warmup_steps = 500
  c.optimizer.clip_norm = 1.0
  return c
