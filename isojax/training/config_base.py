"""Every field a training config has, with defaults; config files start from `base()`.

Fields left as placeholders (None with a type) can still be set from the command line.
"""
from __future__ import annotations

import inspect
import typing

import ml_collections
from ml_collections import config_dict

# Set by the run, not the model section: config.dtype, config.remat, and pmap's axis name.
_RUN_LEVEL_OPTIONS = ('dtype', 'remat', 'axis_name')


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """`config.model`: the model's name and every field the name leaves open, spelled out.

  The name is the architecture (`ViT-S/16`, `ViT-384x6/4`, `ConvMixer-128/6`): width, depth,
  heads, patch... come from it, so `--config.model.name=ViT-B/16` changes all of them and
  nothing can disagree with it. The open fields (pooling, dropout, a ConvMixer's kernel)
  can be overridden from the command line (`--config.model.classifier=gap`).
  """
  from isojax import models  # configs know models; models know nothing of configs
  entry, _ = models.resolve(name, **overrides)
  hints = typing.get_type_hints(entry.factory)
  fields = {'name': entry.name}
  for option, parameter in inspect.signature(entry.factory).parameters.items():
    if option == 'num_classes' or option in _RUN_LEVEL_OPTIONS or option in entry.architecture:
      continue
    value = overrides.get(option, entry.defaults.get(option, parameter.default))
    if value is None:   # an optional field: typed, so the command line can still set it
      value = config_dict.placeholder(next(t for t in typing.get_args(hints[option]) if t is not type(None)))
    fields[option] = value
  return ml_collections.ConfigDict(fields)


def _evaluator(kind: str, **fields) -> ml_collections.ConfigDict:
  """Every field an evaluator has: unset ones (None) inherit the training config's (isojax.evaluation)."""
  spec = ml_collections.ConfigDict({'kind': kind})
  typed = {'dataset': str, 'data_dir': str, 'pp': str, 'image_size': int, 'batch_size': int, 'every': int,
           'cache': bool}
  for field, kind_of in typed.items():
    value = fields.pop(field, None)
    spec[field] = value if value is not None else config_dict.placeholder(kind_of)
  spec.update(fields)
  return spec


def classification_eval(split: str | None = None, **fields) -> ml_collections.ConfigDict:
  """Top-1/top-5/loss on `split` (default config.data.eval_split), every example exactly once."""
  return _evaluator('classification', split=split if split is not None else config_dict.placeholder(str), **fields)


def fewshot_eval(train_split: str = 'train', test_split: str = 'test', shots: tuple = (1, 5, 10, 25),
                 seeds: int = 3, l2_reg: float = 2.0 ** 10, feature: str = 'pre_logits',
                 **fields) -> ml_collections.ConfigDict:
  """big_vision's few-shot linear probe (evaluators/fewshot_lsr.py, configs/common_fewshot.py defaults)."""
  return _evaluator('fewshot', train_split=train_split, test_split=test_split, shots=tuple(shots), seeds=seeds,
                    l2_reg=float(l2_reg), feature=feature, **fields)


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
  c.loss = 'softmax_xent'            # or 'sigmoid_xent' (big_vision's Mixer recipe)
  c.ema_decay = 0.0                  # > 0 keeps an EMA of the parameters
  c.eval_with_ema = True             # evaluate the EMA parameters when kept
  c.dtype = 'float32'                # 'bfloat16': matrix work in bf16, parameters stay float32
  c.remat = False                    # recompute block activations in the backward pass
  c.init_from = config_dict.placeholder(str)   # pretrained weights to start from

  # Named evaluators (isojax/evaluation): their unset fields come from config.data and eval_*.
  c.evals = ml_collections.ConfigDict({'val': classification_eval()})
  c.best_metric = ''                 # 'evaluator/metric' picking the best checkpoint; '' = first evaluator's accuracy
  c.progress_metrics = ()            # extra 'evaluator/metric' on the eval line; () = each evaluator's headline

  c.model = model_config('ViT-S/16')

  c.data = ml_collections.ConfigDict()
  c.data.name = 'isojax_digits'      # any TFDS name, 'isojax_digits' (offline) or 'image_folder'
  c.data.data_dir = config_dict.placeholder(str)   # TFDS data_dir, or the image_folder root
  c.data.download = True
  c.data.train_split = 'train'
  c.data.eval_split = 'test'
  c.data.image_size = 224
  c.data.train_pp = 'inception_crop(224)|flip|normalize(imagenet)'
  c.data.eval_pp = 'resize_small(256)|central_crop(224)|normalize(imagenet)'
  c.data.shuffle_buffer = 50_000     # the run's whole buffer: each device's shard shuffles with 1/devices of it
  c.data.cache = False
  c.data.uint8_batches = True        # a train_pp ending in normalize(...) ships uint8 images; the step normalises
  c.data.skip_bad_files = False      # image_folder: skip (and count) unreadable files instead of failing

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
  # 'lr_scaled': param -= lr(t) * wd * param (optax.adamw, torch AdamW, timm);
  # 'lr_independent': param -= lr(t) / lr * wd * param (big_vision's `wd`). See isojax/training/optim.py.
  c.optimizer.weight_decay_mode = 'lr_scaled'
  c.optimizer.mu_dtype = config_dict.placeholder(str)   # Adam's first moment dtype ('bfloat16': big_vision)
  c.optimizer.decay_params = r'(^|/)kernel$'   # regex over parameter paths that get weight decay
  c.optimizer.freeze = ''            # regex over parameter paths that do not train
  c.optimizer.clip_norm = 1.0        # global-norm gradient clipping; 0 disables
  # Warmup: exactly one of steps, epochs or a fraction of training (resolved at run time).
  c.optimizer.warmup_steps = 0
  c.optimizer.warmup_epochs = config_dict.placeholder(float)
  c.optimizer.warmup_fraction = config_dict.placeholder(float)
  c.optimizer.schedule = 'cosine'    # 'cosine', 'linear', 'constant', 'onecycle' (locuslab)
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


DTYPES = ('float32', 'bfloat16', 'float16')
OPTIMIZERS = ('adamw', 'sgd', 'lamb')
SCHEDULES = ('cosine', 'linear', 'constant', 'onecycle')
WEIGHT_DECAY_MODES = ('lr_scaled', 'lr_independent')
LOSSES = ('softmax_xent', 'sigmoid_xent')


def _check(errors: list, config, field: str, ok, allowed: str) -> None:
  node, *_ = [config]
  for key in field.split('.'):
    if node is None or key not in node:
      return   # an older or trimmed config: nothing to check
    node = node[key]
  try:
    good = ok(node)
  except TypeError:
    good = False
  if not good:
    errors.append(f'{field}={node!r} ({allowed})')


def validate(config: ml_collections.ConfigDict) -> None:
  """Refuses values that cannot be right, naming each field, its value and what is allowed.

  Called before anything is compiled or downloaded (isojax.main, --dry_run, sweeps).
  """
  errors: list[str] = []
  positive = lambda v: v > 0 and v == v and v != float('inf')
  at_least_one = lambda v: isinstance(v, int) and v >= 1
  non_negative = lambda v: v >= 0 and v == v
  rules = [
      ('batch_size', at_least_one, 'an integer >= 1'),
      ('eval_batch_size', at_least_one, 'an integer >= 1'),
      ('grad_accum_steps', at_least_one, 'an integer >= 1'),
      ('num_steps', lambda v: isinstance(v, int) and v >= 0, 'an integer >= 0; 0 means use num_epochs'),
      ('log_every', at_least_one, 'an integer >= 1 (steps between train log lines)'),
      ('eval_every', at_least_one, 'an integer >= 1 (steps between evaluations; the last step always evaluates)'),
      ('checkpoint.every', at_least_one, 'an integer >= 1 (steps between checkpoints)'),
      ('checkpoint.keep', at_least_one, 'an integer >= 1'),
      ('label_smoothing', lambda v: 0 <= v < 1, 'in [0, 1)'),
      ('ema_decay', lambda v: 0 <= v < 1, 'in [0, 1); 0 disables the EMA'),
      ('dtype', lambda v: v in DTYPES, f'one of {DTYPES}'),
      ('loss', lambda v: v in LOSSES, f'one of {LOSSES}'),
      ('data.image_size', at_least_one, 'an integer >= 1 (pixels)'),
      ('data.shuffle_buffer', at_least_one, 'an integer >= 1'),
      ('mixup.mixup_alpha', non_negative, '>= 0; 0 disables mixup'),
      ('mixup.cutmix_alpha', non_negative, '>= 0; 0 disables cutmix'),
      ('optimizer.name', lambda v: v in OPTIMIZERS, f'one of {OPTIMIZERS}'),
      ('optimizer.lr', positive, 'a finite learning rate > 0'),
      ('optimizer.weight_decay', non_negative, '>= 0'),
      ('optimizer.weight_decay_mode', lambda v: v in WEIGHT_DECAY_MODES, f'one of {WEIGHT_DECAY_MODES}'),
      ('optimizer.clip_norm', non_negative, '>= 0; 0 disables clipping'),
      ('optimizer.b1', lambda v: 0 <= v < 1, 'in [0, 1)'),
      ('optimizer.b2', lambda v: 0 <= v < 1, 'in [0, 1)'),
      ('optimizer.eps', non_negative, '>= 0'),
      ('optimizer.momentum', lambda v: 0 <= v < 1, 'in [0, 1)'),
      ('optimizer.warmup_steps', lambda v: isinstance(v, int) and v >= 0, 'an integer >= 0'),
      ('optimizer.warmup_epochs', lambda v: v is None or v >= 0, '>= 0'),
      ('optimizer.warmup_fraction', lambda v: v is None or 0 <= v < 1, 'in [0, 1)'),
      ('optimizer.schedule', lambda v: v in SCHEDULES, f'one of {SCHEDULES}'),
      ('optimizer.end_lr_factor', lambda v: 0 <= v <= 1, 'in [0, 1]'),
      ('optimizer.mu_dtype', lambda v: v is None or v in DTYPES, f'None or one of {DTYPES}'),
  ]
  for field, ok, allowed in rules:
    _check(errors, config, field, ok, allowed)
  if config.get('num_steps', 0) == 0 and not (isinstance(config.get('num_epochs'), (int, float))
                                             and config.num_epochs > 0):
    errors.append(f'num_epochs={config.get("num_epochs")!r} (> 0, or set num_steps >= 1)')
  if errors:
    raise ValueError('Invalid config value(s): ' + '; '.join(errors) + '.')


def load(spec: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:ARG]` and applies dotted overrides {'optimizer.lr': 1e-3}.

  Overrides follow the command line's rules: the field must exist and keep its type.
  """
  import importlib.util
  import os
  path, _, arg = spec.partition(':')
  if not os.path.exists(path):
    raise FileNotFoundError(f'No config file {path!r}.')
  module_spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  for dotted, value in (overrides or {}).items():
    override(config, dotted, value)
  return config


def override(config: ml_collections.ConfigDict, dotted: str, value) -> None:
  """Sets one dotted field, refusing unknown fields with the names that do exist."""
  *parents, leaf = dotted.split('.')
  node = config
  for i, key in enumerate(parents):
    if key not in node:
      raise ValueError(f"Config has no field {'.'.join(parents[:i + 1])!r} (in {dotted!r}); "
                     f'fields there: {sorted(node.keys())}.')
    node = node[key]
  if leaf not in node:
    raise ValueError(f'Config has no field {dotted!r}; fields there: {sorted(node.keys())}.')
  try:
    node[leaf] = value
  except (TypeError, KeyError) as e:   # ml_collections refuses a value of another type
    raise ValueError(f'Config field {dotted!r} cannot be set to {value!r}: {e}') from None


def model_name(config: ml_collections.ConfigDict) -> str:
  """The canonical name of the model a config describes ('ConvMixer-128/6-k3-p2')."""
  from isojax import models
  return models.describe(config.model.name, **{k: v for k, v in config.model.to_dict().items() if k != 'name'})


def create_model(config: ml_collections.ConfigDict, num_classes: int, axis_name: str | None = None):
  """The model a config describes, with its dtype and remat options."""
  from isojax import models
  overrides = {k: v for k, v in config.model.to_dict().items() if k != 'name'}
  return models.build(config.model.name, num_classes, overrides, config.get('dtype'), config.get('remat', False),
                      axis_name)
