"""Where metrics go: JSON lines and TensorBoard in the workdir, and a progress line for people."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from isojax.core import workdir as workdir_lib


def _json_value(value):
  """Scalars (Python or numpy, 0-d arrays) as floats; None, strings, dicts and lists as they are."""
  if value is None or isinstance(value, (str, dict)):
    return value
  return float(value) if np.ndim(value) == 0 else value


class MetricWriter:
  """Appends records to metrics.jsonl and TensorBoard; inert on processes other than 0."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._path = workdir_lib.metrics_path(workdir)
    self._tb: Any = None
    if enabled:
      self._tb = tf.summary.create_file_writer(workdir_lib.tensorboard_dir(workdir))

  def write(self, step: int, split: str, values: dict, evaluator: Optional[str] = None) -> None:
    """One line `{"step", "split", ["evaluator"], **values}`; TensorBoard tags `split[/evaluator]/key`."""
    if not self.enabled:
      return
    record = {
      'step': int(step),
      'split': split,
      **({'evaluator': evaluator} if evaluator else {}),
      **{k: _json_value(v) for k, v in values.items()},
    }
    with open(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    with self._tb.as_default(step=int(step)):
      prefix = f'{split}/{evaluator}' if evaluator else split
      for k, v in record.items():
        if k not in ('step', 'split', 'evaluator') and isinstance(v, float):
          tf.summary.scalar(f'{prefix}/{k}', v)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class Progress:
  """`step 120/1000 [12%] loss 0.412 lr 1.0e-03 1,234 img/s ETA 0:01:05`: redrawn on a
  terminal, one line per update in logs."""

  def __init__(self, total_steps: int, start_step: int, enabled: bool = True, stream=sys.stderr):
    self.total, self.enabled, self.stream = total_steps, enabled, stream
    self._tty = hasattr(stream, 'isatty') and stream.isatty()
    self._t0, self._s0 = time.time(), start_step

  def update(self, step: int, loss: float, lr: float, images_per_sec: float) -> None:
    if not self.enabled:
      return
    done = step - self._s0
    elapsed = time.time() - self._t0
    eta = elapsed / done * (self.total - step) if done > 0 else 0.0
    line = (
      f'step {step}/{self.total} [{100 * step // max(self.total, 1)}%] loss {loss:.4f} '
      f'lr {lr:.2e} {images_per_sec:,.0f} img/s ETA {_hms(eta)}'
    )
    self.stream.write(('\r' + line.ljust(90)) if self._tty else line + '\n')
    self.stream.flush()

  def message(self, text: str) -> None:
    if self.enabled:
      self.stream.write(('\n' if self._tty else '') + text + '\n')
      self.stream.flush()


def _hms(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def summary_line(best_accuracy: Optional[float], best_step: Optional[int], final: dict, wall: float) -> str:
  best = f'{100 * best_accuracy:.2f}% at step {best_step}' if best_accuracy is not None else 'n/a'
  return (
    f'done: best eval accuracy {best}; final eval accuracy {100 * final.get("accuracy", 0):.2f}% '
    f'loss {final.get("loss", float("nan")):.4f}; wall time {_hms(wall)} ({wall:.1f}s)'
  )
