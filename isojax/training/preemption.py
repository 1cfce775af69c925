"""Stopping cleanly on SIGTERM or SIGINT: finish the step, checkpoint it, exit with EXIT_CODE.

Schedulers preempt with SIGTERM (Slurm, Kubernetes, TPU maintenance); people press Ctrl-C. Either
way the run finishes the step it is on, saves a checkpoint of it, prints "stopped at step N on
SIGTERM; checkpoint saved; run the same command to resume" and exits with EXIT_CODE. A signal at any
other moment (start-up, data preparation, compilation, evaluation, a save in flight, the final summary)
is recorded (isojax/core/signals.py) and honoured at the next point where stopping loses nothing.

Across processes every one must stop at the same step, or the collectives of the others hang: a
multi-process run uses JAX's preemption sync point (`multihost_utils.reached_preemption_sync_point`,
which the coordination service agrees on after any process receives SIGTERM); SIGINT there is
turned into SIGTERM for the same agreement.
"""

from __future__ import annotations

import os
import signal
from typing import Optional, Self

import jax
from jax.experimental import multihost_utils

from isojax.core import signals

EXIT_CODE = 75  # EX_TEMPFAIL: "try again later" — resubmit the same command to resume


class Preempted(Exception):
  """Raised by the train loop once stopping loses nothing: after the checkpoint of `step` is saved, or
  before training started (`saved=False`: no step since the last checkpoint; `step=None`: during start-up)."""

  def __init__(self, step: Optional[int], signal_name: str, saved: bool = True):
    self.step, self.signal_name = step, signal_name
    if step is None:
      what = f'on {signal_name} during start-up'
    elif saved:
      what = f'at step {step} on {signal_name}; checkpoint saved'
    else:
      what = f'on {signal_name} before step {step + 1}'
    super().__init__(f'stopped {what}; run the same command to resume')


class StopSignals(signals.Recorder):
  """While active, SIGTERM/SIGINT request a stop; `requested(step)` says when to honour it (same step everywhere)."""

  def __init__(self) -> None:
    super().__init__()
    self._multi = False

  def install(self) -> Self:
    self._multi = jax.process_count() > 1
    super().install()
    return self

  def signals(self) -> tuple[signal.Signals, ...]:
    # With several processes JAX's coordination agent already listens for SIGTERM; SIGINT joins it.
    return (signal.SIGINT,) if self._multi else signals.SIGNALS

  def inherit(self, name: str) -> None:
    super().inherit(name)
    if self._multi:  # heard before JAX's agent listened: tell it, so that every process agrees on a step
      os.kill(os.getpid(), signal.SIGTERM)

  def _handle(self, signum, frame) -> None:
    super()._handle(signum, frame)
    if self._multi:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's notifier hears it and agrees a step with the others

  def requested(self, step: int) -> Optional[str]:
    """The signal to stop for at this step, or None; with several processes, True on all at the same step."""
    if self._multi:
      if multihost_utils.reached_preemption_sync_point(step):
        return self.received or 'SIGTERM'
      return None
    return self.received

  def before_training(self, start_step: Optional[int]) -> None:
    """Stops now if a signal came during start-up, data preparation or compilation: nothing is lost. Several
    processes instead stop together at the first step's sync point (one of them alone would leave the others
    waiting at the next collective)."""
    if self.received and not self._multi:
      raise Preempted(start_step, self.received, saved=False)
