"""The config schema: every field a training config has, with its default; config files start from `base()`.

Fields left as placeholders (None with a type) can still be set from the command line. The model section is
a name here (`ViT-S/16`); `isojax.models.model_config(name)` spells out the fields that name leaves open, so
this module, at the bottom of the package, knows no model. Validation is `isojax.core.validation`, loading
and overrides `isojax.core.loading`.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from isojax.core.losses import LOSSES

DTYPES = ('float32', 'bfloat16', 'float16')
OPTIMIZERS = ('adamw', 'sgd', 'lamb')
SCHEDULES = ('cosine', 'linear', 'constant', 'onecycle')
# 'lr_scaled': param -= lr(t) * wd * param (optax.adamw, torch AdamW, timm);
# 'lr_independent': param -= lr(t) / lr * wd * param (big_vision's `wd`). See isojax/training/optim.py.
WEIGHT_DECAY_MODES = ('lr_scaled', 'lr_independent')
# 'auto': the CPU fast paths (isojax/kernels) when JAX computes on the CPU, else the reference ops;
# resolved once, when the model is built, never inside a layer.
KERNELS = ('auto', 'reference', 'cpu')
# 'pmap': the state replicated on every device (the default); 'jit': placed on config.mesh by
# config.sharding_strategy (isojax/core/sharding.py): data parallel, FSDP, tensor parallel.
PARALLELISMS = ('pmap', 'jit')
# What a rematerialised block keeps from its forward pass: the argument-free `jax.checkpoint_policies`.
REMAT_POLICIES = (
  'nothing_saveable',  # big_vision's default (models/vit.py l.122): only the block's input
  'dots_saveable',
  'dots_with_no_batch_dims_saveable',
  'checkpoint_dots',
  'checkpoint_dots_with_no_batch_dims',
  'everything_saveable',
)
ERASING_FILLS = ('noise', 'channel', 'zero')  # random erasing: N(0, 1) per pixel, per channel, or zeros
DEFAULT_DECAY_PARAMS = r'(.*/)?kernel'  # every kernel: not biases, norms, position embeddings, tokens, probes

__all__ = [
  'DEFAULT_DECAY_PARAMS',
  'DTYPES',
  'KERNELS',
  'LOSSES',
  'OPTIMIZERS',
  'PARALLELISMS',
  'SCHEDULES',
  'WEIGHT_DECAY_MODES',
  'base',
  'classification_eval',
  'fewshot_eval',
]


def _evaluator(kind: str, **fields) -> ml_collections.ConfigDict:
  """Every field an evaluator has: unset ones (None) inherit the training config's (isojax.evaluation)."""
  spec = ml_collections.ConfigDict({'kind': kind})
  typed = {
    'dataset': str,
    'data_dir': str,
    'pp': str,
    'image_size': int,
    'batch_size': int,
    'every': int,
    'cache': bool,
  }
  for field, kind_of in typed.items():
    value = fields.pop(field, None)
    spec[field] = value if value is not None else config_dict.placeholder(kind_of)
  spec.update(fields)
  return spec


def classification_eval(split: str | None = None, **fields) -> ml_collections.ConfigDict:
  """Top-1/top-5/loss on `split` (default config.data.eval_split), every example exactly once."""
  return _evaluator('classification', split=split if split is not None else config_dict.placeholder(str), **fields)


def fewshot_eval(
  train_split: str = 'train',
  test_split: str = 'test',
  shots: tuple = (1, 5, 10, 25),
  seeds: int = 3,
  l2_reg: float = 2.0**10,
  feature: str = 'pre_logits',
  **fields,
) -> ml_collections.ConfigDict:
  """big_vision's few-shot linear probe (evaluators/fewshot_lsr.py, configs/common_fewshot.py defaults)."""
  return _evaluator(
    'fewshot',
    train_split=train_split,
    test_split=test_split,
    shots=tuple(shots),
    seeds=seeds,
    l2_reg=float(l2_reg),
    feature=feature,
    **fields,
  )


def base() -> ml_collections.ConfigDict:
  """Every field of a training config, at its default."""
  c = _run()
  c.model = ml_collections.ConfigDict({'name': 'ViT-S/16'})  # models.model_config(name) adds the open fields
  c.data = _data()
  c.mixup = ml_collections.ConfigDict({'mixup_alpha': 0.0, 'cutmix_alpha': 0.0})
  # timm's random erasing of the mixed device batch (its prefetching loader's order); prob 0: off. The
  # per-image op before batching (torchvision's order) is data.train_pp's `random_erasing(...)`.
  c.random_erasing = ml_collections.ConfigDict(
    {'prob': 0.0, 'area_min': 0.02, 'area_max': 1 / 3, 'aspect_min': 0.3, 'fill': 'noise'}
  )
  c.optimizer = _optimizer()
  c.checkpoint = ml_collections.ConfigDict({'every': 1000, 'keep': 2, 'keep_best': True, 'async_save': True})
  c.distributed = _distributed()
  return c


def _run() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 128  # global, split over all devices of all hosts
  c.eval_batch_size = 256
  c.num_epochs = 10.0
  c.num_steps = 0  # > 0 overrides num_epochs
  c.grad_accum_steps = 1  # micro-batches per optimizer step
  c.log_every = 50
  c.eval_every = 500
  c.label_smoothing = 0.0
  c.loss = 'softmax_xent'  # or 'sigmoid_xent' (big_vision's Mixer recipe); evaluators report it too
  c.ema_decay = 0.0  # > 0 keeps an EMA of the parameters
  c.eval_with_ema = True  # evaluate the EMA parameters when kept
  c.dtype = 'float32'  # 'bfloat16': matrix work in bf16, parameters stay float32
  c.remat = False  # recompute block activations in the backward pass
  c.remat_policy = 'nothing_saveable'  # with remat: what each block keeps (one of REMAT_POLICIES)
  c.kernels = 'auto'  # 'reference' (what export and accelerators use) or 'cpu' (isojax/kernels)
  c.parallelism = 'pmap'  # one of PARALLELISMS
  c.mesh = 'data:-1'  # jit: axis sizes over data, fsdp, model ('fsdp:8', 'data:2,fsdp:4'); -1 takes the rest
  # jit: (regex over state paths, tactic) pairs, first match wins (big_vision's); () = fsdp over `fsdp` and the
  # tensor-parallel rules over `model`, for the axes the mesh has (isojax.core.sharding.default_strategy)
  c.sharding_strategy = ()
  c.init_from = config_dict.placeholder(str)  # pretrained weights to start from
  c.init_allow_non_finite = False  # True: accept init_from tensors holding NaN or inf (refused by default)
  # Named evaluators (isojax/evaluation): their unset fields come from config.data and eval_*.
  c.evals = ml_collections.ConfigDict({'val': classification_eval()})
  c.best_metric = ''  # 'evaluator/metric' picking the best checkpoint; '' = first evaluator's accuracy
  c.progress_metrics = ()  # extra 'evaluator/metric' on the eval line; () = each evaluator's headline
  return c


def _data() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.name = 'isojax_digits'  # any TFDS name, 'isojax_digits' (offline) or 'image_folder'
  d.data_dir = config_dict.placeholder(str)  # TFDS data_dir, or the image_folder root
  d.download = True
  d.train_split = 'train'
  d.eval_split = 'test'
  d.image_size = 224
  d.train_pp = 'inception_crop(224)|flip|normalize(imagenet)'
  d.eval_pp = 'resize_small(256)|central_crop(224)|normalize(imagenet)'
  d.shuffle_buffer = 50_000  # the run's whole buffer: each device's shard shuffles with 1/devices of it
  d.cache = False
  d.uint8_batches = True  # a train_pp ending in normalize(...) ships uint8 images; the step normalises
  d.skip_bad_files = False  # image_folder: skip (and count) unreadable files instead of failing
  return d


def _optimizer() -> ml_collections.ConfigDict:
  o = ml_collections.ConfigDict()
  o.name = 'adamw'  # one of OPTIMIZERS
  o.lr = 1e-3
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-8
  o.momentum = 0.9  # sgd
  o.nesterov = False  # sgd
  o.weight_decay = 1e-4
  o.weight_decay_mode = 'lr_scaled'  # one of WEIGHT_DECAY_MODES
  o.mu_dtype = config_dict.placeholder(str)  # Adam's first moment dtype ('bfloat16': big_vision)
  o.decay_params = DEFAULT_DECAY_PARAMS  # regex matching whole parameter paths (re.fullmatch) that get weight decay
  o.freeze = ''  # regex matching whole parameter paths that do not train ('' : none)
  o.clip_norm = 1.0  # global-norm gradient clipping; 0 disables
  # Warmup: exactly one of steps, epochs or a fraction of training (resolved at run time).
  o.warmup_steps = 0
  o.warmup_epochs = config_dict.placeholder(float)
  o.warmup_fraction = config_dict.placeholder(float)
  o.schedule = 'cosine'  # one of SCHEDULES; 'onecycle' is locuslab's
  o.end_lr_factor = 0.0
  return o


def _distributed() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.enabled = False  # call jax.distributed.initialize (multi-host)
  d.coordinator_address = config_dict.placeholder(str)
  d.num_processes = config_dict.placeholder(int)
  d.process_id = config_dict.placeholder(int)
  d.cpu_collectives = config_dict.placeholder(str)  # 'gloo' for CPU processes
  return d
