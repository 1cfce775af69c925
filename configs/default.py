"""The offline default: a small ConvMixer on scikit-learn's 8x8 handwritten digits.

    python -m isojax.main --config=configs/default.py --workdir=workdirs/default

isojax's own recipe (no published source). Needs no internet: the digits ship with scikit-learn and are
prepared as the TFDS dataset `isojax_digits` on first use, then read through the same pipeline as CIFAR-10.
Expected: >= 97% test accuracy on the 360 held-out digits (99% typical) in under
3 minutes on a 2-core CPU, compile included. Two evaluators: `val` (top-1/top-5/loss on the
test split; picks the best checkpoint) and `fewshot` (big_vision's closed-form linear probe on
the frozen pre-logits: 1, 5, 10, 25 training digits per class, 3 seeds, accuracy on the test split).
"""

from isojax.core.config import base, classification_eval, fewshot_eval
from isojax.models import model_config


def get_config(arg=None):
  c = base()
  # A ConvMixer 128 wide and 6 deep for an 8x8 image: 2x2 patches -> a 4x4 grid of tokens.
  c.model = model_config('ConvMixer-128/6', kernel_size=3, patch_size=2)
  c.data.name = 'isojax_digits'
  c.data.image_size = 8
  c.data.train_pp = 'random_crop(size=8, padding=1)|normalize(half)'
  c.data.eval_pp = 'normalize(half)'
  c.data.cache = True
  c.batch_size = 128
  c.eval_batch_size = 360
  c.num_epochs = 40
  c.log_every = 50
  c.eval_every = 150
  c.checkpoint.every = 150
  c.optimizer.lr = 5e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.warmup_fraction = 1 / 15  # 30 of the 450 steps
  c.label_smoothing = 0.1
  c.evals.val = classification_eval()  # config.data.eval_split with eval_pp
  c.evals.fewshot = fewshot_eval(train_split='train', test_split='test')
  c.best_metric = 'val/accuracy'
  return c
