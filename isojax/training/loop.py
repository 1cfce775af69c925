"""The training loop: config + workdir in, checkpoints + metrics out.

Read top to bottom: validate -> data -> model -> optimizer -> state (fresh or resumed)
-> pmap steps with periodic eval/checkpoint -> final eval, checkpoint and summary.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import time
from typing import Any, NamedTuple, Optional

import jax
import ml_collections
import numpy as np

from isojax import data, evaluation
from isojax.training import checkpoint as checkpoint_lib
from isojax.training import config_base, optim, parallel, plan, preemption, train_step
from isojax.training import workdir as workdir_lib
from isojax.training.metrics import MetricWriter, Progress, summary_line
from isojax.weights import pretrained  # init_from: published weights or a finished run


def validate(config: ml_collections.ConfigDict) -> None:
  """Errors a user can act on, raised before anything is compiled."""
  config_base.validate(config)   # values that cannot be right, by field name
  devices = jax.device_count()
  if config.batch_size % devices:
    raise ValueError(f'batch_size={config.batch_size} is not divisible by the {devices} devices; '
                     f'use a multiple of {devices} (e.g. {devices * max(1, config.batch_size // devices)}).')
  per_device = config.batch_size // devices
  if per_device % config.grad_accum_steps:
    raise ValueError(f'The per-device batch {per_device} is not divisible by grad_accum_steps='
                     f'{config.grad_accum_steps}.')
  if config.eval_batch_size % devices:
    raise ValueError(f'eval_batch_size={config.eval_batch_size} is not divisible by the {devices} devices.')
  plan.validate_model(config)  # unknown names, and fields that contradict the name, fail here


class TrainResult(NamedTuple):
  summary: dict                   # as written to metrics.jsonl (split='summary')
  state: train_step.TrainState    # the final state, on the host


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  """Trains `config` in `workdir`, resuming from its latest checkpoint."""
  start_time = time.time()
  if config.distributed.enabled:
    parallel.initialize_distributed(config.distributed.coordinator_address, config.distributed.num_processes,
                                    config.distributed.process_id, config.distributed.cpu_collectives)
  is_writer = jax.process_index() == 0
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  with workdir_lib.exclusive(workdir, enabled=is_writer):   # one run per workdir
    return _train_and_evaluate(config, workdir, start_time, is_writer)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, start_time: float,
                        is_writer: bool) -> TrainResult:
  workdir_lib.prepare(workdir, config, write=is_writer)

  # Processes sharing a disk take turns preparing the data (a file lock in get_builder).
  builder = data.get_builder(config.data.name, config.data.data_dir, config.data.download,
                             config.data.get('skip_bad_files', False))
  info = data.describe(builder, config.data.train_split, config.data.eval_split)
  if is_writer:
    workdir_lib.write_dataset_info(workdir, dataclasses.asdict(info))
  durations = plan.durations(config, info.num_train)
  steps = durations.total_steps
  image_shape = (config.data.image_size, config.data.image_size, info.channels)

  model = config_base.create_model(config, info.num_classes, axis_name=train_step.AXIS)
  tx, learning_rate = optim.create(config.optimizer, steps, durations.steps_per_epoch)
  init = functools.partial(train_step.init_state, model, tx, image_shape=image_shape,
                           ema=config.ema_decay > 0)
  rng_init, rng_train = jax.random.split(jax.random.PRNGKey(config.seed))
  jax.eval_shape(init, rng_init)  # shape errors (e.g. patch size) surface here, before compiling

  checkpointer = checkpoint_lib.Checkpointer(
      workdir_lib.checkpoint_dir(workdir), keep=config.checkpoint.keep,
      keep_best=config.checkpoint.keep_best, async_save=config.checkpoint.async_save)
  with jax.default_device(jax.local_devices(backend='cpu')[0]):   # fresh state on the host, not the accelerator
    state = jax.jit(init)(rng_init)
  if checkpointer.latest_step() is not None:
    _, state = checkpointer.restore(state)   # the newest readable checkpoint; a corrupt one is skipped, warned
  elif config.init_from:
    variables = pretrained.load(config.init_from, model, config.data.image_size, info.channels)
    ema = state.ema_params is not None
    state = state.replace(params=variables['params'], batch_stats=variables.get('batch_stats', {}),
                          opt_state=tx.init(variables['params']),
                          ema_params=variables['params'] if ema else None,
                          ema_batch_stats=variables.get('batch_stats', {}) if ema else None)
  state = jax.device_get(state)
  start_step = int(state.step)
  if is_writer:   # metrics past the restored checkpoint (or of deleted checkpoints) are not this run's
    workdir_lib.discard_metrics_after(workdir, start_step)
  parallel.wait_for_all_processes('metrics_trimmed')

  writer = MetricWriter(workdir, enabled=is_writer)
  progress = Progress(steps, start_step, enabled=is_writer)
  progress.message(f'{config_base.model_name(config)} on {config.data.name}: {info.num_train} train / {info.num_eval} eval '
                   f'examples, {info.num_classes} classes; {steps} steps of {config.batch_size} on '
                   f'{jax.device_count()} device(s)' + (f'; resuming at step {start_step}' if start_step else ''))

  step_fn = train_step.pmapped_train_step(
      model=model, tx=tx, learning_rate=learning_rate, num_classes=info.num_classes,
      label_smoothing=config.label_smoothing, mixup_alpha=config.mixup.mixup_alpha,
      cutmix_alpha=config.mixup.cutmix_alpha, accum_steps=config.grad_accum_steps, ema_decay=config.ema_decay,
      loss=config.get('loss', 'softmax_xent'),
      image_normalization=data.device_normalization(config.data.train_pp) if config.data.uint8_batches else None)
  # Bad datasets, splits and features fail here; evaluators on the training data share its builder.
  evaluators = evaluation.create(config, model, info.num_classes, train_builder=builder)
  primary, best_metric = evaluation.best_metric(config)
  use_ema = config.ema_decay > 0 and config.eval_with_ema
  batches = parallel.prefetch(data.train_batches(
      builder, split=config.data.train_split, pp=config.data.train_pp, image_size=config.data.image_size,
      per_device_batch=config.batch_size // jax.device_count(), **parallel.data_host(), seed=config.seed,
      start_step=start_step, shuffle_buffer=config.data.shuffle_buffer, cache=config.data.cache,
      uint8_batches=config.data.uint8_batches))

  # Compile ahead of time, then start together: the first collective of a multi-process run must
  # not wait on another process's compilation.
  compile_start = time.time()
  replicated = parallel.replicate(state)
  del state
  first_batch = next(batches)
  step_fn.lower(replicated, first_batch, rng_train).compile()   # fills the call's cache
  for evaluator in evaluators.values():
    evaluator.compile(replicated.variables(use_ema))
  progress.message(f'compiled the train step and {len(evaluators)} evaluator(s) in {time.time() - compile_start:.1f}s')
  parallel.wait_for_all_processes('compiled')
  batches = itertools.chain([first_batch], batches)

  best = _best_so_far(workdir, primary, best_metric)
  results: dict[str, dict] = {}               # each evaluator's latest metrics
  pending: list[tuple[int, Any]] = []        # (step, device metrics) not yet read back
  log_time, log_step, paused = time.time(), start_step, 0.0

  def flush_train_metrics(step):
    """Reads back the pending step metrics: NaN check, averages, log line."""
    nonlocal log_time, log_step, pending, paused
    if not pending:
      return
    host = jax.device_get([m for _, m in pending])
    for (s, _), m in zip(pending, host):
      if not np.isfinite(m['loss']):
        raise FloatingPointError(f'Loss became {m["loss"]} at step {s}; stopping. The last checkpoint '
                                 f'(step {checkpointer.latest_step()}) has finite parameters.')
    mean = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    elapsed = time.time() - log_time - paused   # evaluation time is not training throughput
    mean['images_per_sec'] = (step - log_step) * config.batch_size / max(elapsed, 1e-9)
    mean['steps_per_sec'] = (step - log_step) / max(elapsed, 1e-9)
    writer.write(step, 'train', mean)
    progress.update(step, mean['loss'], mean['lr'], mean['images_per_sec'])
    pending, log_time, log_step, paused = [], time.time(), step, 0.0

  with preemption.StopSignals() as stop_signals:   # SIGTERM/SIGINT: finish the step, checkpoint, stop
    for step in range(start_step + 1, steps + 1):
      replicated, metrics = step_fn(replicated, next(batches), rng_train)   # batches arrive on device
      checkpointer.check_for_errors()   # a failed background save (disk full) stops the run now
      pending.append((step, parallel.first_local(metrics)))
      last = step == steps
      if step % config.log_every == 0 or last:
        flush_train_metrics(step)
      due = [e for e in evaluators.values() if e.due(step, last)]
      if due:
        flush_train_metrics(step)   # never evaluate past an unnoticed NaN
        eval_start = time.time()
        variables = replicated.variables(use_ema)
        for evaluator in due:
          results[evaluator.name] = evaluator.evaluate(variables, step)
          writer.write(step, 'eval', results[evaluator.name], evaluator=evaluator.name)
        progress.message(f'eval @ {step}: ' + evaluation.display({e.name: results[e.name] for e in due}, primary,
                                                                 list(config.progress_metrics) or None))
        if primary in (e.name for e in due) and (best is None or results[primary][best_metric] > best[0]):
          best = (results[primary][best_metric], step)
        paused += time.time() - eval_start
      if step % config.checkpoint.every == 0 or last:
        flush_train_metrics(step)   # never checkpoint past an unnoticed NaN
        evaluated_now = evaluators[primary].due(step, last)
        checkpointer.save(step, parallel.unreplicate(replicated),
                          metrics={'accuracy': results[primary][best_metric]} if evaluated_now else None)

      stop = stop_signals.requested(step)
      if stop and not last:
        flush_train_metrics(step)
        if not step % config.checkpoint.every == 0:   # not saved above
          checkpointer.save(step, parallel.unreplicate(replicated))
        checkpointer.wait()
        checkpointer.close()
        writer.close()
        raise preemption.Preempted(step, stop)

  checkpointer.wait()
  checkpointer.close()
  for evaluator in evaluators.values():   # resumed a finished run: report its last evaluation
    if evaluator.name not in results:
      results[evaluator.name] = evaluator.evaluate(replicated.variables(use_ema), steps)
  final = results[primary]
  wall = time.time() - start_time
  summary = {'best_accuracy': best[0] if best else None, 'best_step': best[1] if best else None,
             'best_metric': f'{primary}/{best_metric}',
             'final_accuracy': final[best_metric], 'final_loss': final.get('loss'), 'final_top5': final.get('top5'),
             'final': {f'{name}/{k}': v for name, r in results.items() for k, v in r.items() if not isinstance(v, list)},
             'steps': steps, 'wall_time_sec': wall}
  writer.write(steps, 'summary', summary)
  writer.close()
  progress.message(summary_line(summary['best_accuracy'], summary['best_step'],
                                {'accuracy': final[best_metric], 'loss': final.get('loss', float('nan'))}, wall))
  return TrainResult(summary, parallel.unreplicate(replicated))


def _best_so_far(workdir: str, evaluator: str, metric: str) -> Optional[tuple[float, int]]:
  """The best value of `evaluator/metric` recorded by earlier (interrupted) parts of this run."""
  evals = [m for m in workdir_lib.eval_records(workdir_lib.iter_metrics(workdir), evaluator) if metric in m]
  if not evals:
    return None
  top = max(evals, key=lambda m: m[metric])
  return top[metric], top['step']
