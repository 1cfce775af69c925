"""Every field a training config has, with defaults; config files start from `base()`.

Fields left as placeholders (None with a type) can still be set from the command line.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 128                 # global, split over all devices of all hosts
  c.eval_batch_size = 256
  c.num_epochs = 10.0
  c.num_steps = 0                    # > 0 overrides num_epochs
  c.grad_accum_steps = 1             # micro-batches per optimizer step
  c.log_every = 50
  c.eval_every = 500
  c.label_smoothing = 0.0
  c.ema_decay = 0.0                  # > 0 keeps an EMA of the parameters
  c.eval_with_ema = True             # evaluate the EMA parameters when kept
  c.dtype = 'float32'                # 'bfloat16': matrix work in bf16, parameters stay float32
  c.remat = False                    # recompute block activations in the backward pass
  c.init_from = config_dict.placeholder(str)   # pretrained weights to start from

  c.model = ml_collections.ConfigDict({'name': 'ViT-S/16'})

  c.data = ml_collections.ConfigDict()
  c.data.name = 'isojax_digits'      # any TFDS name, 'isojax_digits' (offline) or 'image_folder'
  c.data.data_dir = config_dict.placeholder(str)   # TFDS data_dir, or the image_folder root
  c.data.download = True
  c.data.train_split = 'train'
  c.data.eval_split = 'test'
  c.data.image_size = 224
  c.data.train_pp = 'inception_crop(224)|flip|normalize(imagenet)'
  c.data.eval_pp = 'resize_small(256)|central_crop(224)|normalize(imagenet)'
  c.data.shuffle_buffer = 50_000
  c.data.cache = False

  c.mixup = ml_collections.ConfigDict({'mixup_alpha': 0.0, 'cutmix_alpha': 0.0})

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adamw'         # 'adamw', 'sgd', 'lamb'
  c.optimizer.lr = 1e-3
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.momentum = 0.9         # sgd
  c.optimizer.nesterov = False       # sgd
  c.optimizer.weight_decay = 1e-4
  c.optimizer.decay_params = r'(^|/)kernel$'   # regex over parameter paths that get weight decay
  c.optimizer.freeze = ''            # regex over parameter paths that do not train
  c.optimizer.clip_norm = 1.0        # global-norm gradient clipping; 0 disables
  c.optimizer.warmup_steps = 0
  c.optimizer.schedule = 'cosine'    # 'cosine', 'linear', 'constant'
  c.optimizer.end_lr_factor = 0.0

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 1000
  c.checkpoint.keep = 2              # the last K, plus the best by eval accuracy
  c.checkpoint.keep_best = True
  c.checkpoint.async_save = True

  c.distributed = ml_collections.ConfigDict()
  c.distributed.enabled = False      # call jax.distributed.initialize (multi-host)
  c.distributed.coordinator_address = config_dict.placeholder(str)
  c.distributed.num_processes = config_dict.placeholder(int)
  c.distributed.process_id = config_dict.placeholder(int)
  c.distributed.cpu_collectives = config_dict.placeholder(str)   # 'gloo' for CPU processes
  return c
