"""The training loop: config + workdir in, checkpoints + metrics out.

Read top to bottom: `train_and_evaluate` validates, holds the workdir and calls `_train`, which builds the run
(`_set_up`: data, model, optimizer, evaluators), restores or initialises its state (`_initial_state`),
compiles the step (`_step_function`: the placement's step with the config's `StepOptions`), then steps;
after each step the `PeriodicActions` run in order (log, evaluate, checkpoint, stop on a signal), and the last
step ends with the final evaluations and the summary (`_summary`), all inside one try/finally shutdown path.
Metrics still on the devices wait in a `MetricsBuffer` until the next action reads them back.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from isojax import data, evaluation, models
from isojax.core import checkpoint as checkpoint_lib
from isojax.core import devices, sharding, validation
from isojax.core import workdir as workdir_lib
from isojax.training import optim, placement, plan, preemption, train_step
from isojax.training.metrics import MetricWriter, Progress, summary_line
from isojax.weights import pretrained  # init_from: published weights or a finished run


def validate(config: ml_collections.ConfigDict) -> None:
  """Errors a user can act on, raised before anything is compiled."""
  validation.validate(config)  # values that cannot be right, by field name
  count = jax.device_count()
  if config.batch_size % count:
    raise ValueError(
      f'batch_size={config.batch_size} is not divisible by the {count} devices; '
      f'use a multiple of {count} (e.g. {count * max(1, config.batch_size // count)}).'
    )
  per_device = config.batch_size // count
  if per_device % config.grad_accum_steps:
    raise ValueError(
      f'The per-device batch {per_device} is not divisible by grad_accum_steps={config.grad_accum_steps}.'
    )
  if config.eval_batch_size % count:
    raise ValueError(f'eval_batch_size={config.eval_batch_size} is not divisible by the {count} devices.')
  models.check_config(config)  # unknown names, and fields that contradict the name, fail here
  if config.get('parallelism', 'pmap') == 'jit':
    sharding.mesh_shape(config.mesh, count)  # a mesh that does not fit the devices fails here


class TrainResult(NamedTuple):
  summary: dict  # as written to metrics.jsonl (split='summary')
  state: train_step.TrainState  # the final state, on the host


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainResult:
  """Trains `config` in `workdir`, resuming from its latest checkpoint."""
  start_time = time.time()
  if config.distributed.enabled:
    devices.initialize_distributed(
      config.distributed.coordinator_address,
      config.distributed.num_processes,
      config.distributed.process_id,
      config.distributed.cpu_collectives,
    )
  is_writer = jax.process_index() == 0
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  # SIGTERM/SIGINT from here on: honoured where stopping loses nothing (preemption.py)
  with workdir_lib.exclusive(workdir, enabled=is_writer), preemption.StopSignals() as stop_signals:
    return _train(config, workdir, start_time, is_writer, stop_signals)


@dataclasses.dataclass
class Run:
  """What a run is made of once it is set up; training changes none of it."""

  config: ml_collections.ConfigDict
  workdir: str
  is_writer: bool
  builder: Any
  info: data.DatasetInfo
  steps: int
  steps_per_epoch: float
  model: nn.Module
  tx: optax.GradientTransformation
  learning_rate: Callable[[Any], Any]
  checkpointer: checkpoint_lib.Checkpointer
  placement: placement.Placement

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return (self.config.data.image_size, self.config.data.image_size, self.info.channels)

  @property
  def use_ema(self) -> bool:
    return self.config.ema_decay > 0 and self.config.eval_with_ema


def _set_up(config: ml_collections.ConfigDict, workdir: str, is_writer: bool) -> Run:
  """The workdir recorded, the dataset opened, the model, optimizer and checkpointer built."""
  workdir_lib.prepare(workdir, config, write=is_writer)
  # Processes sharing a disk take turns preparing the data (a file lock in get_builder).
  builder = data.get_builder(
    config.data.name, config.data.data_dir, config.data.download, config.data.get('skip_bad_files', False)
  )
  info = data.describe(builder, config.data.train_split, config.data.eval_split)
  if is_writer:
    workdir_lib.write_dataset_info(workdir, dataclasses.asdict(info))
  durations = plan.durations(config, info.num_train)
  jit = config.get('parallelism', 'pmap') == 'jit'  # the jit path's batch is global: BatchNorm needs no axis
  model = models.from_config(config, info.num_classes, axis_name=None if jit else devices.AXIS)
  tx, learning_rate = optim.create(config.optimizer, durations.total_steps, durations.steps_per_epoch)
  image_shape = (config.data.image_size, config.data.image_size, info.channels)
  checkpointer = checkpoint_lib.Checkpointer(
    workdir_lib.checkpoint_dir(workdir),
    keep=config.checkpoint.keep,
    keep_best=config.checkpoint.keep_best,
    async_save=config.checkpoint.async_save,
    collective=jit and jax.process_count() > 1,  # every process writes its own shards
  )
  return Run(
    config,
    workdir,
    is_writer,
    builder,
    info,
    durations.total_steps,
    durations.steps_per_epoch,
    model,
    tx,
    learning_rate,
    checkpointer,
    placement.create(config, model, tx, image_shape),
  )


def _initial_state(run: Run, rng_init: jax.Array) -> tuple[Any, int]:
  """(state, its step): the newest readable checkpoint's state, else a fresh one (from `init_from` weights if
  given), placed where the step takes it (`run.placement`: replicated for pmap, in its shardings for jit)."""
  init = functools.partial(
    train_step.init_state, run.model, run.tx, image_shape=run.image_shape, ema=run.config.ema_decay > 0
  )
  jax.eval_shape(init, rng_init)  # shape errors (e.g. patch size) surface here, before compiling
  resuming = run.checkpointer.latest_step() is not None
  if not resuming and not run.config.init_from:
    return run.placement.place(run.placement.fresh(init, rng_init)), 0  # jit: created in its shardings
  on_host = functools.partial(placement.on_host, init, rng_init)
  if resuming:  # the newest readable checkpoint (a corrupt one is skipped, warned), restored where it lives
    _, state = run.checkpointer.restore(run.placement.restore_target(on_host))
    return run.placement.place(state), int(state.step)
  state = on_host()  # the template the published weights load into
  if run.config.init_from:
    variables = pretrained.load(
      run.config.init_from,
      run.model,
      run.config.data.image_size,
      run.info.channels,
      allow_non_finite=run.config.init_allow_non_finite,
    )
    params, batch_stats, ema = variables['params'], variables.get('batch_stats', {}), state.ema_params is not None
    state = state.replace(
      params=params,
      batch_stats=batch_stats,
      opt_state=run.tx.init(params),
      ema_params=params if ema else None,
      ema_batch_stats=batch_stats if ema else None,
    )
  state = jax.device_get(state)
  return run.placement.place(state), int(state.step)


def _step_function(run: Run) -> Callable:
  """The placement's train step for this run's model, optimizer and `StepOptions`."""
  return run.placement.step_function(
    model=run.model, tx=run.tx, learning_rate=run.learning_rate, options=step_options(run.config, run.info.num_classes)
  )


def step_options(config: ml_collections.ConfigDict, num_classes: int) -> train_step.StepOptions:
  """The config's fields that the train step reads, as one value."""
  normalization = data.device_normalization(config.data.train_pp) if config.data.uint8_batches else None
  return train_step.StepOptions(
    num_classes=num_classes,
    label_smoothing=config.label_smoothing,
    mixup_alpha=config.mixup.mixup_alpha,
    cutmix_alpha=config.mixup.cutmix_alpha,
    accum_steps=config.grad_accum_steps,
    ema_decay=config.ema_decay,
    loss=config.get('loss', 'softmax_xent'),
    image_normalization=normalization,
    erasing=config.random_erasing.to_dict() if config.get('random_erasing') else None,
  )


def _train_batches(run: Run, start_step: int) -> Iterator[Any]:
  config = run.config
  return devices.prefetch(
    data.train_batches(
      run.builder,
      split=config.data.train_split,
      pp=config.data.train_pp,
      image_size=config.data.image_size,
      per_device_batch=config.batch_size // jax.device_count(),
      **devices.data_host(),
      seed=config.seed,
      start_step=start_step,
      shuffle_buffer=config.data.shuffle_buffer,
      cache=config.data.cache,
      uint8_batches=config.data.uint8_batches,
    ),
    place=run.placement.batch,
  )


class MetricsBuffer:
  """Step metrics still on the devices, read back (and checked for NaN) when an action needs them."""

  def __init__(self, run: Run, writer: MetricWriter, progress: Progress, start_step: int):
    self.run, self.writer, self.progress = run, writer, progress
    self.pending: list[tuple[int, Any]] = []
    self.log_time, self.log_step, self.paused = time.time(), start_step, 0.0

  def add(self, step: int, metrics: Any) -> None:
    self.pending.append((step, self.run.placement.metrics(metrics)))

  def pause(self, seconds: float) -> None:
    """Time spent outside training (evaluation) that is not training throughput."""
    self.paused += seconds

  def flush(self, step: int) -> None:
    """Reads back the pending step metrics: NaN check, averages, one log line."""
    if not self.pending:
      return
    host = jax.device_get([m for _, m in self.pending])
    for (s, _), m in zip(self.pending, host):
      if not np.isfinite(m['loss']):
        raise FloatingPointError(
          f'Loss became {m["loss"]} at step {s}; stopping. The last checkpoint '
          f'(step {self.run.checkpointer.latest_step()}) has finite parameters.'
        )
    mean = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    elapsed = max(time.time() - self.log_time - self.paused, 1e-9)
    mean['images_per_sec'] = (step - self.log_step) * self.run.config.batch_size / elapsed
    mean['steps_per_sec'] = (step - self.log_step) / elapsed
    self.writer.write(step, 'train', mean)
    self.progress.update(step, mean['loss'], mean['lr'], mean['images_per_sec'])
    self.pending, self.log_time, self.log_step, self.paused = [], time.time(), step, 0.0


@dataclasses.dataclass
class Evaluations:
  """The evaluators, each one's latest metrics, and the best value of the metric that picks checkpoints."""

  evaluators: dict[str, evaluation.Evaluator]
  primary: str
  metric: str
  best: Optional[tuple[float, int]]
  results: dict[str, dict] = dataclasses.field(default_factory=dict)

  def run_due(
    self,
    step: int,
    last: bool,
    variables: Any,
    writer: MetricWriter,
    progress: Progress,
    shown: Optional[list[str]],
    evaluated: Callable[[Any], Any],
  ) -> bool:
    """Runs the evaluators due at `step` on `evaluated(variables)` (the placement's layout for them); True if any
    ran."""
    due = [e for e in self.evaluators.values() if e.due(step, last)]
    variables = evaluated(variables) if due else variables
    for evaluator in due:
      self.results[evaluator.name] = evaluator.evaluate(variables, step)
      writer.write(step, 'eval', self.results[evaluator.name], evaluator=evaluator.name)
    if due:
      progress.message(
        f'eval @ {step}: ' + evaluation.display({e.name: self.results[e.name] for e in due}, self.primary, shown)
      )
    if self.primary in (e.name for e in due) and (
      self.best is None or self.results[self.primary][self.metric] > self.best[0]
    ):
      self.best = (self.results[self.primary][self.metric], step)
    return bool(due)

  def checkpoint_metrics(self, step: int, last: bool) -> Optional[dict]:
    """What makes this step's checkpoint a candidate for best: the primary metric, if it was evaluated now."""
    if self.evaluators[self.primary].due(step, last):
      return {checkpoint_lib.BEST_METRIC: self.results[self.primary][self.metric]}
    return None


def _evaluations(run: Run) -> Evaluations:
  # Bad datasets, splits and features fail here; evaluators on the training data share its builder.
  evaluators = evaluation.create(
    run.config, run.model, run.info.num_classes, train_builder=run.builder, mesh=run.placement.mesh
  )
  primary, metric = evaluation.best_metric(run.config)
  return Evaluations(evaluators, primary, metric, _best_so_far(run.workdir, primary, metric))


def _best_so_far(workdir: str, evaluator: str, metric: str) -> Optional[tuple[float, int]]:
  """The best value of `evaluator/metric` recorded by earlier (interrupted) parts of this run."""
  evals = [m for m in workdir_lib.eval_records(workdir_lib.iter_metrics(workdir), evaluator) if metric in m]
  if not evals:
    return None
  top = max(evals, key=lambda m: m[metric])
  return top[metric], top['step']


def _compiled(
  run: Run, step_fn: Any, evals: Evaluations, placed: Any, batches: Iterator[Any], rng: jax.Array, progress: Progress
) -> Iterator[Any]:
  """Compiles the step and the evaluators ahead of time, then meets the other processes: the first collective
  of a multi-process run must not wait on another process's compilation. Returns the batches, rewound."""
  compile_start = time.time()
  first_batch = next(batches)
  step_fn.lower(placed, first_batch, rng).compile()  # fills the call's cache
  for evaluator in evals.evaluators.values():
    evaluator.compile(run.placement.evaluated(placed.variables(run.use_ema)))
  progress.message(
    f'compiled the train step and {len(evals.evaluators)} evaluator(s) in {time.time() - compile_start:.1f}s'
  )
  devices.wait_for_all_processes('compiled')
  return itertools.chain([first_batch], batches)


def _train(
  config: ml_collections.ConfigDict,
  workdir: str,
  start_time: float,
  is_writer: bool,
  stop_signals: preemption.StopSignals,
) -> TrainResult:
  stop_signals.before_training(None)  # a signal during start-up: stop before preparing anything
  run = _set_up(config, workdir, is_writer)
  rng_init, rng_train = jax.random.split(jax.random.PRNGKey(config.seed))
  placed, start_step = _initial_state(run, rng_init)
  stop_signals.before_training(start_step)  # ... during data preparation or restoring
  if is_writer:  # metrics past the restored checkpoint (or of deleted checkpoints) are not this run's
    workdir_lib.discard_metrics_after(workdir, start_step)
  devices.wait_for_all_processes('metrics_trimmed')
  writer = MetricWriter(workdir, enabled=is_writer)
  progress = Progress(run.steps, start_step, enabled=is_writer)
  progress.message(
    f'{models.config_name(config)} on {config.data.name}: {run.info.num_train} train / '
    f'{run.info.num_eval} eval examples, {run.info.num_classes} classes; {run.steps} steps of '
    f'{config.batch_size} on {jax.device_count()} device(s)'
    + (f'; resuming at step {start_step}' if start_step else '')
  )
  step_fn, evals = _step_function(run), _evaluations(run)
  batches = _train_batches(run, start_step)
  batches = _compiled(run, step_fn, evals, placed, batches, rng_train, progress)
  buffer = MetricsBuffer(run, writer, progress, start_step)
  finished = False
  try:
    stop_signals.before_training(start_step)  # ... during compilation: stop, nothing to lose
    actions = PeriodicActions(run, evals, buffer, stop_signals)
    placed = _steps(run, step_fn, placed, batches, rng_train, actions, start_step)
    run.checkpointer.wait()
    result = _summary(run, evals, placed, writer, progress, start_time)
    finished = True
    return result
  finally:  # the one shutdown path: normal end, preemption (Preempted) or a failure
    _shut_down(run, writer, failing=not finished)


def _shut_down(run: Run, writer: MetricWriter, failing: bool) -> None:
  """Waits for the last background save and closes the checkpointer and the writer. While another error is
  propagating, an error here is logged instead of replacing it."""
  try:
    run.checkpointer.wait()
    run.checkpointer.close()
  except Exception as e:
    if not failing:
      raise
    logging.warning('While stopping on an error, closing the checkpoints failed too: %s: %s', type(e).__name__, e)
  finally:
    writer.close()


@dataclasses.dataclass
class PeriodicActions:
  """What runs after every step, in this order: log, evaluate, checkpoint, stop on a signal. Each is due on its
  own schedule (config.log_every, the evaluators' `due`, config.checkpoint.every, a signal) and at the last step."""

  run: Run
  evals: Evaluations
  buffer: MetricsBuffer
  stop_signals: preemption.StopSignals

  def after(self, step: int, placed: Any, metrics: Any) -> None:
    last = step == self.run.steps
    self.buffer.add(step, metrics)
    self.log(step, last)
    self.evaluate(step, last, placed)
    saved = self.checkpoint(step, last, placed)
    self.stop_if_asked(step, last, placed, saved)

  def log(self, step: int, last: bool) -> None:
    """One log line per config.log_every steps, and before any evaluation: never evaluate past an unnoticed NaN."""
    due_eval = any(e.due(step, last) for e in self.evals.evaluators.values())
    if step % self.run.config.log_every == 0 or last or due_eval:
      self.buffer.flush(step)

  def evaluate(self, step: int, last: bool, placed: Any) -> None:
    """The evaluators due now; their time is not training throughput."""
    start, buffer = time.time(), self.buffer
    variables = placed.variables(self.run.use_ema)
    shown = list(self.run.config.progress_metrics) or None
    if self.evals.run_due(step, last, variables, buffer.writer, buffer.progress, shown, self.run.placement.evaluated):
      buffer.pause(time.time() - start)

  def checkpoint(self, step: int, last: bool, placed: Any) -> bool:
    """A checkpoint every config.checkpoint.every steps and at the last; True if one was saved."""
    if not (step % self.run.config.checkpoint.every == 0 or last):
      return False
    self.buffer.flush(step)  # never checkpoint past an unnoticed NaN
    metrics = self.evals.checkpoint_metrics(step, last)
    self.run.checkpointer.save(step, self.run.placement.checkpointed(placed), metrics=metrics)
    return True

  def stop_if_asked(self, step: int, last: bool, placed: Any, saved: bool) -> None:
    """A stop requested during a step, an evaluation or a save is honoured once this step's checkpoint is saved."""
    stop = self.stop_signals.requested(step)
    if not stop or last:
      return
    self.buffer.flush(step)
    if not saved:
      self.run.checkpointer.save(step, self.run.placement.checkpointed(placed))
    self.run.checkpointer.wait()  # a failed save raises here: "checkpoint saved" must be true
    raise preemption.Preempted(step, stop)


def _steps(
  run: Run, step_fn: Any, placed: Any, batches: Iterator[Any], rng: jax.Array, actions: PeriodicActions, start_step: int
) -> Any:
  """Steps `start_step + 1 .. run.steps`, each followed by the periodic actions; the final placed state."""
  for step in range(start_step + 1, run.steps + 1):
    batch = next(batches)  # placed on the devices by the prefetcher
    with devices.no_host_transfers():  # the step's inputs are all on the devices already: nothing copied unseen
      placed, metrics = step_fn(placed, batch, rng)
    run.checkpointer.check_for_errors()  # a failed background save (disk full) stops the run now
    actions.after(step, placed, metrics)
  return placed


def _summary(
  run: Run, evals: Evaluations, placed: Any, writer: MetricWriter, progress: Progress, start_time: float
) -> TrainResult:
  """The final evaluation of every evaluator (rerun if this invocation had none), the summary line and record."""
  for evaluator in evals.evaluators.values():  # resumed a finished run: report its last evaluation
    if evaluator.name not in evals.results:
      variables = run.placement.evaluated(placed.variables(run.use_ema))
      evals.results[evaluator.name] = evaluator.evaluate(variables, run.steps)
  final, best, wall = evals.results[evals.primary], evals.best, time.time() - start_time
  summary = {
    'best_accuracy': best[0] if best else None,
    'best_step': best[1] if best else None,
    'best_metric': f'{evals.primary}/{evals.metric}',
    'final_accuracy': final[evals.metric],
    'final_loss': final.get('loss'),
    'final_top5': final.get('top5'),
    'final': {f'{name}/{k}': v for name, r in evals.results.items() for k, v in r.items() if not isinstance(v, list)},
    'steps': run.steps,
    'wall_time_sec': wall,
  }
  writer.write(run.steps, 'summary', summary)
  progress.message(
    summary_line(
      summary['best_accuracy'],
      summary['best_step'],
      {'accuracy': final[evals.metric], 'loss': final.get('loss', float('nan'))},
      wall,
    )
  )
  return TrainResult(summary, run.placement.host(placed))
