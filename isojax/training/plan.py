"""A config resolved before anything trains: dataset sizes, steps, model, schedule, augmentation.

The training loop (`loop.py`) runs on the same resolution, and `python -m isojax.main ... --dry_run` prints it, so
a recipe can be checked before it spends accelerator hours.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from isojax import models
from isojax.core.validation import ConfigError
from isojax.data import input_pipeline, preprocess, published
from isojax.training import optim, placement


@dataclasses.dataclass(frozen=True)
class Durations:
  """How long a run is, in steps and epochs."""

  total_steps: int
  steps_per_epoch: float
  epochs: float


def durations(config: ml_collections.ConfigDict, num_train: int) -> Durations:
  """`num_steps` if set (> 0), else `num_epochs` over `num_train` examples, rounded up."""
  if num_train < 1:
    raise ConfigError(f'data.train_split={config.data.train_split!r} has no examples (a split with at least one).')
  steps_per_epoch = num_train / config.batch_size
  if config.get('num_steps'):
    if config.num_steps < 0:
      raise ValueError(f'num_steps={config.num_steps} must be positive (or 0 to use num_epochs).')
    steps = config.num_steps
  else:
    if not config.num_epochs or config.num_epochs <= 0:
      raise ValueError(f'num_epochs={config.num_epochs} must be positive (or set num_steps > 0).')
    steps = math.ceil(config.num_epochs * steps_per_epoch)
  return Durations(steps, steps_per_epoch, steps / steps_per_epoch)


def dataset_info(config: ml_collections.ConfigDict) -> tuple[input_pipeline.DatasetInfo, Optional[str]]:
  """(info, note): a prepared dataset's own metadata, else the TFDS catalog's published sizes.

  Downloads nothing. The note says what was assumed (None when the data was read).
  """
  name = config.data.name
  if name in input_pipeline.LOCAL_BUILDERS or name == input_pipeline.IMAGE_FOLDER:
    builder = input_pipeline.get_builder(name, config.data.data_dir, download=False)
    return input_pipeline.describe(builder, config.data.train_split, config.data.eval_split), None
  builder = input_pipeline.get_builder(name, config.data.data_dir, download=False)
  if builder.is_prepared():
    return input_pipeline.describe(builder, config.data.train_split, config.data.eval_split), None
  if name not in published.DATASETS:
    raise ValueError(
      f'{name!r} is not prepared in {builder.data_dir} and its split sizes are not in '
      f'isojax/data/published.py; prepare it once (a normal run downloads it) and retry.'
    )
  classes, channels, _ = published.DATASETS[name]
  sizes = {s: published.split_size(name, s) for s in (config.data.train_split, config.data.eval_split)}
  missing = [s for s, n in sizes.items() if not n]  # unknown, or no examples
  if missing:
    fields = [f'{field}={split!r}' for field, split in input_pipeline.split_fields(config)[:2] if split in missing]
    raise ConfigError(
      f'Unknown or empty split(s) {", ".join(fields)} of {name!r}; '
      f'published splits: {sorted(published.DATASETS[name][2])}.'
    )
  info = input_pipeline.DatasetInfo(
    num_classes=classes,
    channels=channels,
    class_names=(),
    num_train=int(sizes[config.data.train_split] or 0),
    num_eval=int(sizes[config.data.eval_split] or 0),
  )
  return info, (
    f'{name} is not downloaded here: assumed the TFDS catalog sizes '
    f'({config.data.train_split}: {info.num_train:,}, {config.data.eval_split}: {info.num_eval:,})'
  )


def model_cost(model: nn.Module, image_size: int, channels: int) -> tuple[int, Optional[float]]:
  """(parameters, GFLOPs per image of the forward pass, XLA's count: a multiply-add is 2 FLOPs)."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), images)
  params = sum(x.size for x in jax.tree_util.tree_leaves(variables['params']))
  analysis = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, images).cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  flops = float(analysis['flops']) / 1e9 if analysis and 'flops' in analysis else None
  return params, flops


def augmentation(config: ml_collections.ConfigDict) -> list[str]:
  """The training augmentation chain in the order it runs, host ops (each RandAugment with its flavour)
  then what the train step does on the device."""
  train_ops = [
    f'{name}({", ".join(f"{k}={v!r}" for k, v in kwargs.items())})'
    for name, kwargs in preprocess.parse(config.data.train_pp)
  ]
  if config.data.uint8_batches and preprocess.device_normalization(config.data.train_pp):
    train_ops[-1] += ' on device (uint8 batches)'
  mixup = config.mixup.to_dict()
  if any(mixup.values()):
    train_ops.append(f'mixup({", ".join(f"{k}={v}" for k, v in mixup.items())}) on device')
  erasing = config.get('random_erasing')
  if erasing and erasing.prob:
    fields = ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in erasing.to_dict().items())
    train_ops.append(f'random_erasing({fields}) on device, after mixup (timm)')
  if config.label_smoothing:
    train_ops.append(f'label_smoothing({config.label_smoothing})')
  return train_ops


def regularisation(model: nn.Module, config: ml_collections.ConfigDict) -> list[str]:
  """Stochastic depth (rate, per-block schedule, and whether kept branches are rescaled: timm's convention
  or big_vision's Mixer's) and where BatchNorm takes its statistics from."""
  out = []
  rate = getattr(model, 'drop_path_rate', 0.0)
  if rate:
    block = getattr(model, 'block', None)
    scaled = getattr(block, 'keywords', {}).get('drop_path_scale', True)
    schedule = getattr(model, 'drop_path_schedule', 'linear')
    convention = 'kept branches / (1 - p), timm' if scaled else 'kept branches unscaled, big_vision'
    out.append(f'stochastic depth {rate} ({schedule} over blocks; {convention})')
  group = config.model.get('batch_norm_group')
  if group is not None:
    out.append(f'BatchNorm statistics over {f"groups of {group} examples" if group else "the whole global batch"}')
  return out


def dry_run(config: ml_collections.ConfigDict) -> dict:
  """Everything a run would do, resolved, with nothing trained: the `--dry_run` record."""
  info, note = dataset_info(config)
  steps = durations(config, info.num_train)
  model = models.from_config(config, info.num_classes)
  params, gflops = model_cost(model, config.data.image_size, info.channels)
  train_ops = augmentation(config)
  tx, _ = optim.create(config.optimizer, steps.total_steps, steps.steps_per_epoch)
  image_shape = (config.data.image_size, config.data.image_size, info.channels)
  return {
    'model': models.config_name(config),
    'parameters': params,
    'gflops_per_image': gflops,
    'dataset': config.data.name,
    'num_train': info.num_train,
    'num_eval': info.num_eval,
    'num_classes': info.num_classes,
    'dataset_note': note,
    'batch_size': config.batch_size,
    'steps': steps.total_steps,
    'epochs': steps.epochs,
    'steps_per_epoch': steps.steps_per_epoch,
    'warmup_steps': (
      0
      if config.optimizer.schedule == 'onecycle'
      else optim.warmup_steps(config.optimizer, steps.total_steps, steps.steps_per_epoch)
    ),
    'optimizer': config.optimizer.name,
    'weight_decay_mode': config.optimizer.get('weight_decay_mode', 'lr_scaled'),
    'lr_at': optim.lr_at_percent(config.optimizer, steps.total_steps, steps.steps_per_epoch),
    'weight_decay_per_step_at_peak': optim.decay_factor_at_peak(
      config.optimizer, steps.total_steps, steps.steps_per_epoch
    ),
    'augmentation': train_ops,
    'regularisation': regularisation(model, config),
    'eval_preprocessing': config.data.eval_pp,
    **placement.report(config, model, tx, image_shape),
  }


def _placement_line(record: dict) -> str:
  """Parameters + optimizer state + EMA: in all and on each device, under pmap or the jit path's mesh."""
  where = f'jit on mesh {record["mesh"]}' if record['parallelism'] == 'jit' else 'pmap (replicated)'
  gib = lambda n: f'{n / 2**30:.3f} GiB'
  line = (
    f'state (parameters + optimizer + EMA): {gib(record["state_bytes_total"])} in all, '
    f'{gib(record["state_bytes_per_device"])} per device; {where}'
  )
  whole = record['whole_on_every_device']
  return line + (f'; whole on every device: {", ".join(whole)}' if whole else '')


def format_dry_run(record: dict) -> str:
  """The human-readable report, ending with the record as one JSON line."""
  gflops = f'{record["gflops_per_image"]:.3f}' if record['gflops_per_image'] is not None else 'n/a'
  lines = [
    f'model: {record["model"]}: {record["parameters"]:,} parameters, {gflops} GFLOPs per image (forward)',
    f'data: {record["dataset"]}: {record["num_train"]:,} train / {record["num_eval"]:,} eval examples, '
    f'{record["num_classes"]} classes' + (f' ({record["dataset_note"]})' if record['dataset_note'] else ''),
    f'steps: {record["steps"]:,} of {record["batch_size"]} = {record["epochs"]:.2f} epochs '
    f'({record["steps_per_epoch"]:.1f} steps per epoch); warmup {record["warmup_steps"]:,} steps',
    f'optimizer: {record["optimizer"]}, weight decay {record["weight_decay_mode"]}: a decayed kernel shrinks by '
    f'{record["weight_decay_per_step_at_peak"]:.3g} per step at peak learning rate',
    'learning rate at % of training: ' + ', '.join(f'{p}%: {v:.3g}' for p, v in record['lr_at'].items()),
    'augmentation: ' + ' -> '.join(record['augmentation']),
    'regularisation: ' + ('; '.join(record['regularisation']) or 'none'),
    f'eval preprocessing: {record["eval_preprocessing"]}',
    _placement_line(record),
  ]
  return '\n'.join(lines + [json.dumps(record)])
