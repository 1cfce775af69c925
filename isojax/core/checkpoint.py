"""Orbax checkpoints of a TrainState in DIR/checkpoints: the last K plus the best by eval accuracy.

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames),
so a run killed mid-save restarts from the last finished checkpoint. A state is saved as it is handed over:
host arrays (pmap's one copy), or the jit path's sharded arrays, each written from its shards without being
gathered. A restore places every array where its target says: a target's sharding (the current mesh's, so a
run saved on `fsdp:8` resumes on 4 devices or on pmap), else this host's CPU; a checkpoint without a target
(`restore_raw`, `isojax.load`) is read onto the host whatever mesh wrote it. A host state is written by process 0
alone; a sharded state across processes (`collective=True`, the jit path on several hosts) is saved by every
process together, each writing its own shards, as Orbax's multi-host saves do.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

BEST_METRIC = 'accuracy'
_RELISTS = 20  # how often a reader lists the steps again when a live writer deletes the one it reads
ITEM = 'default'  # Orbax's name for a manager's single item: DIR/checkpoints/<step>/default/


class _quiet_orbax:
  """Holds back what a failing read prints: Orbax's logging and the hundreds of lines of
  "Event loop is closed" tracebacks TensorStore's threads print straight to file descriptor 2.
  The failure itself is raised and reported in one line; after a successful read anything
  printed is passed on unchanged."""

  def __enter__(self):
    self._loggers = [logging.getLogger(n) for n in ('absl', 'asyncio', 'orbax')]
    self._levels = [lg.level for lg in self._loggers]
    for lg in self._loggers:
      lg.setLevel(logging.CRITICAL)
    sys.stderr.flush()
    self._saved = os.dup(2)
    self._capture = tempfile.TemporaryFile()
    os.dup2(self._capture.fileno(), 2)

  def __exit__(self, exc_type, *exc):
    time.sleep(0.2 if exc_type else 0)  # let TensorStore's callbacks of a failed read finish printing
    sys.stderr.flush()
    os.dup2(self._saved, 2)
    os.close(self._saved)
    if exc_type is None:
      self._capture.seek(0)
      os.write(2, self._capture.read())
    self._capture.close()
    for lg, level in zip(self._loggers, self._levels):
      lg.setLevel(level)
    return False


class _OneLineOrbaxErrors(logging.Filter):
  """Orbax logs a failed background save with its whole traceback from three threads; isojax raises
  the failure itself in one line (Checkpointer._write_errors), so Orbax's records keep their message only."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.exc_info and f'{os.sep}orbax{os.sep}' in (record.pathname or ''):
      record.exc_info, record.exc_text = None, None
    return True


def _drop_closed_loop_callbacks(unraisable) -> None:
  """TensorStore threads finishing a failed read or write call back into an asyncio loop Orbax has
  already closed; Python reports each as an unraisable "Event loop is closed". Those say nothing
  the raised error does not; everything else is reported as usual."""
  if isinstance(unraisable.exc_value, RuntimeError) and 'Event loop is closed' in str(unraisable.exc_value):
    return
  sys.__unraisablehook__(unraisable)


def _while_steps_change(list_steps: Callable[[], Any]) -> Any:
  """`list_steps()`, again when a step vanished while Orbax listed the directory (a live run deleting its
  oldest checkpoint as a reader opens the directory)."""
  for _ in range(_RELISTS - 1):
    try:
      return list_steps()
    except FileNotFoundError:
      time.sleep(0.05)
  return list_steps()


def _has_entries(directory: str) -> bool:
  """Whether `directory` holds anything (a step, or one being written or deleted)."""
  try:
    return bool(os.listdir(directory))
  except FileNotFoundError:
    return False


def _abstract(leaf: Any) -> Any:
  """What Orbax restores `leaf` (an array, a shape or an array's metadata) as: its shape and dtype, in its
  sharding if it has a concrete one, else on this host's CPU."""
  placed = getattr(leaf, 'sharding', None)
  if not isinstance(placed, jax.sharding.Sharding):  # a host array, or metadata of the devices that wrote it
    placed = jax.sharding.SingleDeviceSharding(jax.local_devices(backend='cpu')[0])
  shape, dtype = (leaf.shape, leaf.dtype) if hasattr(leaf, 'dtype') else (np.shape(leaf), np.asarray(leaf).dtype)
  return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=placed)


def _processes(process: int, collective: bool) -> ocp.options.MultiprocessingOptions:
  """Orbax's processes for this checkpointer: all of them, process 0 finalising (a collective save of sharded
  arrays); else this process alone, which reads for itself and writes only when it is process 0."""
  if collective:
    return ocp.options.MultiprocessingOptions(primary_host=0)
  return ocp.options.MultiprocessingOptions(primary_host=process, active_processes={process})


def _non_finite(state: Any) -> list[str]:
  """The paths of floating arrays with a NaN or an infinity: host arrays checked on the host, placed ones on
  their devices (one boolean each comes back, nothing is gathered)."""
  leaves = [(p, x) for p, x in jax.tree_util.tree_leaves_with_path(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  placed = [x for _, x in leaves if isinstance(x, jax.Array)]
  finite_placed = iter(jax.device_get(_all_finite(placed)) if placed else [])
  return [
    jax.tree_util.keystr(p)
    for p, x in leaves
    if not (next(finite_placed) if isinstance(x, jax.Array) else np.isfinite(x).all())
  ]


@jax.jit
def _all_finite(arrays: list) -> list:
  return [jnp.isfinite(x).all() for x in arrays]


class Checkpointer:
  """Saves and restores TrainStates in `directory`."""

  def __init__(
    self,
    directory: str,
    keep: int = 2,
    keep_best: bool = True,
    async_save: bool = True,
    read_only: bool = False,
    collective: bool = False,
  ):
    """`collective`: every process saves and restores together (arrays sharded across processes); otherwise
    process 0 writes and each process reads for itself."""
    process = jax.process_index()
    keepers = [policies.LatestN(n=keep)]
    if keep_best:
      keepers.append(
        policies.BestN(
          get_metric_fn=lambda m: m[BEST_METRIC], reverse=False, n=1, keep_checkpoints_without_metrics=False
        )
      )
    options = ocp.CheckpointManagerOptions(
      preservation_policy=policies.AnyPreservationPolicy(keepers),
      # best_fn also makes Orbax persist each step's metrics, so a resumed run still knows its best.
      best_fn=lambda m: m[BEST_METRIC],
      best_mode='max',
      enable_async_checkpointing=async_save and not read_only,
      read_only=read_only,
      create=False,
      multiprocessing_options=_processes(process, collective and not read_only),
    )
    if not read_only:
      os.makedirs(directory, exist_ok=True)
    self.directory = directory
    self.writer = (process == 0 or collective) and not read_only
    if not any(isinstance(f, _OneLineOrbaxErrors) for f in logging.getLogger('absl').filters):
      logging.getLogger('absl').addFilter(_OneLineOrbaxErrors())
    sys.unraisablehook = _drop_closed_loop_callbacks
    self._manager = _while_steps_change(lambda: ocp.CheckpointManager(directory, options=options))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def best_step(self) -> Optional[int]:
    """The kept step with the highest eval accuracy, or None if none was saved with metrics."""
    scored = [
      (m[BEST_METRIC], step) for step in self.all_steps() if (m := self._manager.metrics(step)) and BEST_METRIC in m
    ]
    return max(scored)[1] if scored else None

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, metrics: Optional[dict] = None) -> None:
    """Saves `state` (host arrays, or placed and sharded ones: written shard by shard); `metrics` (with
    'accuracy') make it a candidate for best."""
    if not self.writer:
      return
    bad = _non_finite(state)
    if bad:
      raise FloatingPointError(f'Refusing to checkpoint step {step}: non-finite values in {bad[:3]}.')
    self._state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(state) if hasattr(x, 'nbytes'))
    self._saving = step
    with self._write_errors():
      self._manager.save(
        step, args=ocp.args.StandardSave(state), metrics={k: float(v) for k, v in (metrics or {}).items()} or None
      )

  def check_for_errors(self) -> None:
    """Raises now if a background save has failed (disk full, permissions), instead of at the next save."""
    if not self.writer:
      return
    with self._write_errors():
      self._manager.check_for_errors()
      # Orbax keeps a failed background finalisation in its finalize thread until the next save or
      # wait; look at it directly (private, hence the guards) so the run stops at the next step.
      finalize = getattr(self._manager, '_finalize_thread', None)
      thread = finalize.map(lambda t: t) if finalize is not None and hasattr(finalize, 'map') else None
      if thread is not None and not thread.is_alive() and getattr(thread, 'exception', None) is not None:
        self._manager.wait_until_finished()  # raises the background error

  @contextlib.contextmanager
  def _write_errors(self):
    """A failed write becomes one short error naming the directory, the bytes needed and what is kept;
    the save's temporary folder is removed so it does not hold the space."""
    try:
      yield
    except Exception as e:
      step = getattr(self, '_saving', None)
      for leftover in glob.glob(os.path.join(self.directory, '*.orbax-checkpoint-tmp*')):
        shutil.rmtree(leftover, ignore_errors=True)
      free = shutil.disk_usage(self.directory).free
      needed = getattr(self, '_state_bytes', 0)
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      kept = [s for s in self._manager.all_steps() if s != step]
      raise OSError(
        f'Saving the checkpoint of step {step} to {self.directory} failed ({type(e).__name__}: '
        f'{reason}). It needs about {needed:,} bytes; {free:,} are free there. Earlier checkpoints '
        f'are intact ({kept}); free some space (or set --workdir elsewhere) and run the same '
        f'command to resume.'
      ) from None

  def _newest_readable(self, read: Callable[[int], Any], step: Optional[int]) -> tuple[int, Any]:
    """(step, read(step)) for `step`, or else the newest step that reads; bad ones are warned about once each.

    A live run deletes old steps as it saves new ones: a step that vanished while it was being read was
    removed by the writer, not damaged, so the steps are listed again instead of warning."""
    if step is not None:
      return step, read(step)
    failures: list[str] = []
    for _ in range(_RELISTS):
      steps = self._steps_on_disk()
      if not steps and not failures:
        raise FileNotFoundError(f'No checkpoint in {self.directory}.')
      found, vanished = self._first_readable(read, steps, failures)
      if found is not None:
        return found
      if not vanished:
        break
    raise RuntimeError(
      f'No readable checkpoint in {self.directory}:\n  '
      + '\n  '.join(failures)
      + '\nDelete the directory to start afresh, or restore it from a backup.'
    )

  def _steps_on_disk(self) -> list[int]:
    """The steps on disk now, newest first (a live writer adds and removes them). A listing can come back
    empty from a directory that is not: with keep=1 the new step is renamed in after the listing began and the
    old one deleted before it was checked. So only a directory with nothing in it lists empty at once; one
    with entries is listed again first."""
    for _ in range(_RELISTS - 1):
      _while_steps_change(self._manager.reload)
      steps = sorted(self.all_steps(), reverse=True)
      if steps or not _has_entries(self.directory):
        return steps
      time.sleep(0.05)
    _while_steps_change(self._manager.reload)
    return sorted(self.all_steps(), reverse=True)

  def _first_readable(
    self, read: Callable[[int], Any], steps: list[int], failures: list[str]
  ) -> tuple[Optional[tuple[int, Any]], bool]:
    """((step, value) of the first of `steps` that reads, or None; whether a step vanished while read)."""
    for candidate in steps:
      try:
        with _quiet_orbax():
          return (candidate, read(candidate)), False
      except Exception as e:  # Orbax/TensorStore raise many types for missing, empty or truncated files
        if not os.path.exists(os.path.join(self.directory, str(candidate))):
          return None, True  # deleted by the run that is writing this directory: list again
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        failures.append(f'step {candidate}: {type(e).__name__}: {reason}')
        warnings.warn(
          f'Checkpoint step {candidate} in {self.directory} is unreadable ({type(e).__name__}: '
          f'{reason}); falling back to an older one.',
          stacklevel=3,
        )
    return None, False

  def restore(self, target: Any, step: Optional[int] = None) -> tuple[int, Any]:
    """(step, state) at `step`, or by default the newest readable checkpoint, shaped like `target`: each array
    in the sharding of its target leaf (a placed array or a ShapeDtypeStruct with one), else on the host."""
    abstract = jax.tree_util.tree_map(_abstract, target)
    return self._newest_readable(lambda s: self._read(s, ocp.args.StandardRestore(abstract)), step)

  def restore_raw(self, step: Optional[int] = None) -> tuple[int, Any]:
    """(step, state saved at `step` or the newest readable one) as nested dicts of host arrays, whatever mesh
    saved it (a run sharded over 8 devices opens on a 1-device laptop)."""

    def read(s: int) -> Any:
      with ocp.StandardCheckpointer() as reader:  # the arrays' shapes and dtypes, not the devices that wrote them
        saved = reader.metadata(self._item(s)).item_metadata.tree
      on_host = jax.tree_util.tree_map(_abstract, saved)
      return jax.device_get(self._read(s, ocp.args.StandardRestore(on_host)))

    return self._newest_readable(read, step)

  def _item(self, step: int) -> str:
    """The step's item folder; checked before Orbax reads: a step without its item confuses Orbax about every
    later step."""
    item = os.path.join(self.directory, str(step), ITEM)
    if not os.path.isdir(item) or not os.listdir(item):
      raise FileNotFoundError(f'{item} is missing or empty')
    return item

  def _read(self, step: int, args: Any) -> Any:
    self._item(step)
    return self._manager.restore(step, args=args)

  def wait(self) -> None:
    with self._write_errors():
      self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
