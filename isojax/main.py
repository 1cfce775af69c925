"""Train and evaluate from a config file.

    python -m isojax.main --config=configs/default.py --workdir=workdirs/default \
        [--config.optimizer.lr=3e-3 ...]

Running the same command on the same workdir resumes from its latest checkpoint. On SIGTERM or
SIGINT the run finishes its step, checkpoints it and exits with code 75 (isojax/training/preemption.py).
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file, optionally with :ARG.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for config.json, metrics.jsonl and checkpoints.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Resolve the config and print what the run would do (model, '
                             'parameters, GFLOPs, steps, learning rate over training, weight decay, '
                             'augmentation) as text and one JSON line; train nothing, write nothing.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from isojax import host_memory
  host_memory.keep_freed_memory()          # before JAX and TensorFlow start their threads
  logging.set_verbosity(logging.WARNING)   # Orbax and TFDS log every save and read at INFO
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')  # tf.data stays on the host; JAX owns the accelerators
  if _DRY_RUN.value:
    from isojax.training import config_base, plan
    config_base.validate(_CONFIG.value)
    plan.validate_model(_CONFIG.value)
    print(plan.format_dry_run(plan.dry_run(_CONFIG.value)), flush=True)
    return
  from isojax.training import preemption, loop
  try:
    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except preemption.Preempted as stopped:
    import jax
    if jax.process_index() == 0:
      print(str(stopped), file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_CODE)


def run() -> None:
  app.run(main)


if __name__ == '__main__':
  run()
