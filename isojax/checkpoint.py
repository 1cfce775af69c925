"""Orbax checkpoints of a TrainState in DIR/checkpoints: the last K plus the best by eval accuracy.

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames),
so a run killed mid-save restarts from the last finished checkpoint. Every process
restores on its own from host memory (no training mesh needed); only process 0 writes.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

BEST_METRIC = 'accuracy'


class Checkpointer:
  """Saves and restores TrainStates in `directory`."""

  def __init__(self, directory: str, keep: int = 2, keep_best: bool = True, async_save: bool = True,
               read_only: bool = False):
    process = jax.process_index()
    keepers = [policies.LatestN(n=keep)]
    if keep_best:
      keepers.append(policies.BestN(get_metric_fn=lambda m: m[BEST_METRIC], reverse=False, n=1,
                                    keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keepers),
        # best_fn also makes Orbax persist each step's metrics, so a resumed run still knows its best.
        best_fn=lambda m: m[BEST_METRIC], best_mode='max',
        enable_async_checkpointing=async_save and not read_only, read_only=read_only, create=False,
        # Every process reads for itself; only process 0 ever writes.
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=process,
                                                                   active_processes={process}))
    if not read_only:
      os.makedirs(directory, exist_ok=True)
    self.directory = directory
    self.writer = process == 0 and not read_only
    self._manager = ocp.CheckpointManager(directory, options=options)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def best_step(self) -> Optional[int]:
    """The kept step with the highest eval accuracy, or None if none was saved with metrics."""
    scored = [(m[BEST_METRIC], step) for step in self.all_steps()
              if (m := self._manager.metrics(step)) and BEST_METRIC in m]
    return max(scored)[1] if scored else None

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, metrics: Optional[dict] = None) -> None:
    """Saves host-side `state`; `metrics` (with 'accuracy') make it a candidate for best."""
    if not self.writer:
      return
    bad = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(state)
           if np.issubdtype(np.asarray(x).dtype, np.floating) and not np.isfinite(x).all()]
    if bad:
      raise FloatingPointError(f'Refusing to checkpoint step {step}: non-finite values in {bad[:3]}.')
    self._manager.save(step, args=ocp.args.StandardSave(state),
                       metrics={k: float(v) for k, v in (metrics or {}).items()} or None)

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """The state at `step` (default: latest), shaped like `target` (arrays or ShapeDtypeStructs)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self.directory}.')
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if not hasattr(x, 'dtype') else x.dtype),
        target)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def restore_raw(self, step: int) -> Any:
    """The state saved at `step` as nested dicts of host arrays, with no target needed."""
    return self._manager.restore(step, args=ocp.args.StandardRestore())

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
