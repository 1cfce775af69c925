"""Opening finished (or running) training runs: `isojax.load(workdir)`.

Needs neither the training mesh, nor the optimizer, nor the dataset: checkpoints hold
host arrays, so a run saved from 8 GPUs opens on a CPU laptop.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import ml_collections

from isojax import models
from isojax.core import checkpoint as checkpoint_lib
from isojax.core import workdir as workdir_lib

STEP_NAMES = ('latest', 'best')


def _check_step(step) -> None:
  if isinstance(step, str) and step not in STEP_NAMES:
    raise ValueError(f'step={step!r}: expected a checkpoint step (an int), {STEP_NAMES[0]!r} or {STEP_NAMES[1]!r}.')


def checkpoint_step(workdir: str, step: Optional[int | str] = None) -> int:
  """The step `load(workdir, step)` opens: the latest, a given one, or 'best'; nothing is restored."""
  _check_step(step)
  ckpt = checkpoint_lib.Checkpointer(workdir_lib.checkpoint_dir(workdir), read_only=True)
  return _pick(ckpt, workdir, None if isinstance(step, str) else step, step if isinstance(step, str) else 'latest')


def _pick(ckpt, workdir: str, step: Optional[int], which: str) -> int:
  if step is None:
    step = ckpt.best_step() if which == 'best' else ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(
      f'No checkpoint in {workdir_lib.checkpoint_dir(workdir)}; is {workdir!r} the --workdir of an isojax.main run?'
    )
  if step not in ckpt.all_steps():
    raise ValueError(f'No checkpoint for step {step} in {workdir!r}; kept steps: {ckpt.all_steps()}.')
  return step


def restore_raw(workdir: str, step: Optional[int] = None, which: str = 'latest') -> tuple[int, dict]:
  """(step, saved TrainState as nested dicts of host arrays) of `workdir`'s checkpoint.

  `which` is 'latest' or 'best' (by eval accuracy); an explicit `step` wins.
  """
  ckpt = checkpoint_lib.Checkpointer(workdir_lib.checkpoint_dir(workdir), read_only=True)
  picked = _pick(ckpt, workdir, step, which)
  # 'latest' means the newest readable checkpoint: a corrupt latest falls back to an older one, warned.
  return ckpt.restore_raw(None if step is None and which == 'latest' else picked)


def load(
  workdir: str, step: Optional[int | str] = None, ema: Optional[bool] = None
) -> tuple[nn.Module, dict, ml_collections.ConfigDict]:
  """(model, variables, config) of a run: latest checkpoint, a given step, or step='best'.

  `ema=None` uses the EMA parameters when the run kept and evaluated them.
  """
  _check_step(step)
  config = workdir_lib.read_config(workdir)
  which = step if isinstance(step, str) else 'latest'
  _, saved = restore_raw(workdir, None if isinstance(step, str) else step, which)
  use_ema = (config.get('ema_decay', 0) > 0 and config.get('eval_with_ema', True)) if ema is None else ema
  if use_ema and saved.get('ema_params') is None:
    raise ValueError(f'ema=True, but the run in {workdir!r} kept no EMA (ema_decay={config.get("ema_decay")}).')
  params = saved['ema_params'] if use_ema else saved['params']
  batch_stats = saved.get('batch_stats')
  if use_ema and saved.get('ema_batch_stats') is not None:  # runs saved before the EMA covered them lack it
    batch_stats = saved['ema_batch_stats']
  num_classes = int(params['head']['bias'].shape[0])
  model = models.from_config(config, num_classes)
  variables = {'params': params}
  if batch_stats:
    variables['batch_stats'] = batch_stats
  return model, variables, config
