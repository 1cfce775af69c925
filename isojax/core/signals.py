"""Remembering SIGTERM and SIGINT instead of dying of them, so that a stop is honoured where it is safe.

A `Recorder` replaces the two signals' handlers while it is installed and remembers the first signal. Recorders
nest: an inner one starts with what the outer one already heard and hands back what it heard when it is
removed, so a signal that arrives while JAX and TensorFlow are still importing (seconds) is honoured by the
training loop's handler later, and one heard by the loop is still known to the command after the loop returns.
The training loop's preemption handler (isojax/training/preemption.py) is a Recorder.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Optional, Self

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Recorder:
  """While installed, SIGTERM and SIGINT are recorded (`received`), not fatal."""

  def __init__(self) -> None:
    self.received: Optional[str] = None
    self._previous: dict = {}

  def signals(self) -> tuple[signal.Signals, ...]:
    """The signals this recorder takes over."""
    return SIGNALS

  def install(self) -> Self:
    if threading.current_thread() is not threading.main_thread():
      return self  # signal handlers live in the main thread only; an embedding thread keeps its own
    for sig in self.signals():
      self._previous[sig] = signal.signal(sig, self._handle)
      outer = _recorder_of(self._previous[sig])
      if outer is not None and outer.received and not self.received:
        self.inherit(outer.received)
    return self

  def inherit(self, name: str) -> None:
    """Takes over a signal an outer recorder heard before this one was installed."""
    self.received = name

  def _handle(self, signum: int, frame: Any) -> None:
    self.received = self.received or signal.Signals(signum).name

  def remove(self) -> None:
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
      outer = _recorder_of(previous)
      if outer is not None and self.received and not outer.received:
        outer.received = self.received
    self._previous = {}

  def __enter__(self) -> Self:
    return self.install()

  def __exit__(self, *exc: Any) -> None:
    self.remove()


def _recorder_of(handler: Any) -> Optional[Recorder]:
  owner = getattr(handler, '__self__', None)
  return owner if isinstance(owner, Recorder) else None
