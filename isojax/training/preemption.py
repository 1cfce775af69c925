"""Stopping cleanly on SIGTERM or SIGINT: finish the step, checkpoint it, exit with EXIT_CODE.

Schedulers preempt with SIGTERM (Slurm, Kubernetes, TPU maintenance); people press Ctrl-C. Either
way the run finishes the step it is on, saves a checkpoint of it, prints "stopped at step N on
SIGTERM; checkpoint saved; run the same command to resume" and exits with EXIT_CODE.

Across processes every one must stop at the same step, or the collectives of the others hang: a
multi-process run uses JAX's preemption sync point (`multihost_utils.reached_preemption_sync_point`,
which the coordination service agrees on after any process receives SIGTERM); SIGINT there is
turned into SIGTERM for the same agreement.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Optional

import jax
from jax.experimental import multihost_utils

EXIT_CODE = 75  # EX_TEMPFAIL: "try again later" — resubmit the same command to resume


class Preempted(Exception):
  """Raised by the train loop after the checkpoint of `step` is saved."""

  def __init__(self, step: int, signal_name: str):
    self.step, self.signal_name = step, signal_name
    super().__init__(f'stopped at step {step} on {signal_name}; checkpoint saved; run the same command to resume')


class StopSignals:
  """While active, SIGTERM/SIGINT request a stop; `requested(step)` says when to honour it (same step everywhere)."""

  def __init__(self):
    self._received: Optional[str] = None
    self._previous: dict = {}
    self._multi = False

  def __enter__(self) -> StopSignals:
    self._multi = jax.process_count() > 1
    if threading.current_thread() is not threading.main_thread():
      return self  # signal handlers live in the main thread only; an embedding thread keeps its own
    # With several processes JAX's coordination agent already listens for SIGTERM; SIGINT joins it.
    for sig in (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    self._received = self._received or signal.Signals(signum).name
    if self._multi:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier hears it and agrees a step with the others

  def requested(self, step: int) -> Optional[str]:
    """The signal to stop for at this step, or None; with several processes, True on all at the same step."""
    if self._multi:
      if multihost_utils.reached_preemption_sync_point(step):
        return self._received or 'SIGTERM'
      return None
    return self._received

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}
