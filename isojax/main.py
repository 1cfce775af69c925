"""Train and evaluate from a config file.

    python -m isojax.main --config=configs/default.py --workdir=workdirs/default \
        [--config.optimizer.lr=3e-3 ...] [--dry_run]

Running the same command on the same workdir resumes from its latest checkpoint. On SIGTERM or SIGINT at any
moment (start-up, data preparation, compilation, training, evaluation, a save, the summary) the run stops where
nothing is lost, checkpointing the step it is on, and exits with code 75 (isojax/training/preemption.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Optional

from isojax.core import host_memory, signals

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
host_memory.keep_freed_memory()  # before JAX and TensorFlow start their threads (isojax/core/host_memory.py)
START_UP = signals.Recorder()  # a signal while JAX and TensorFlow import (seconds) is kept for the run to honour
if __name__ == '__main__':  # as a command only: imported (tests, notebooks), the caller's handlers stay
  START_UP.install()

import jax  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from isojax import models  # noqa: E402
from isojax.core import command_line, validation  # noqa: E402
from isojax.data import input_pipeline  # noqa: E402
from isojax.training import loop, plan, preemption  # noqa: E402

FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Path to a config file, optionally with :ARG.', lock_config=True, flag_values=FLAGS
)
_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Directory for config.json, metrics.jsonl and checkpoints.', flag_values=FLAGS
)
_DRY_RUN = flags.DEFINE_bool(
  'dry_run',
  False,
  'Resolve the config and print what the run would do (model, '
  'parameters, GFLOPs, steps, learning rate over training, weight decay, '
  'augmentation) as text and one JSON line; train nothing, write nothing.',
  flag_values=FLAGS,
)
flags.mark_flags_as_required(['config', 'workdir'], flag_values=FLAGS)


@command_line.command
def main(argv: Optional[Sequence[str]] = None) -> int:
  with signals.Recorder() as stop:  # takes over what START_UP heard; hears what the training loop heard
    code = _main(argv)
  # A signal after the last step's checkpoint: exit 75 all the same; the rerun rewrites the summary.
  if code == 0 and stop.received and not _DRY_RUN.value:
    print(f'stopped on {stop.received} after the run finished; run the same command to confirm', file=sys.stderr)
    return preemption.EXIT_CODE
  return code


def _main(argv: Optional[Sequence[str]]) -> int:
  positional = command_line.parse(FLAGS, argv, __doc__)
  if positional:
    raise command_line.UsageError(f'unexpected arguments {positional}; every setting is a flag')
  logging.set_verbosity(logging.WARNING)  # Orbax and TFDS log every save and read at INFO
  tf.config.set_visible_devices([], 'GPU')  # tf.data stays on the host; JAX owns the accelerators
  config = _CONFIG.value
  try:  # a value that cannot be right is the command line's error: one line, exit code 2
    validation.validate(config)
    models.check_config(config)
    input_pipeline.check_config(config)
  except ValueError as e:
    raise command_line.UsageError(str(e)) from None
  try:
    if _DRY_RUN.value:
      print(plan.format_dry_run(plan.dry_run(config)), flush=True)
      return 0
    loop.train_and_evaluate(config, str(_WORKDIR.value))  # a required flag
  except validation.ConfigError as e:  # found when the dataset opened (a split it lacks)
    raise command_line.UsageError(str(e)) from None
  except preemption.Preempted as stopped:
    if jax.process_index() == 0:
      print(str(stopped), file=sys.stderr, flush=True)
    return preemption.EXIT_CODE
  return 0


if __name__ == '__main__':
  sys.exit(main())
