"""Top-5 classes for image files with a trained run.

    python -m isojax.predict --workdir=DIR [--step=best] IMAGE [IMAGE ...]
"""
from __future__ import annotations

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app, flags, logging  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'The --workdir of an isojax.main run.')
_STEP = flags.DEFINE_string('step', None, "A checkpoint step, 'best', or empty for the latest.")
_TOP = flags.DEFINE_integer('top', 5, 'How many classes to print per image.')
flags.mark_flag_as_required('workdir')


def main(argv: list[str]) -> None:
  images = argv[1:]
  if not images:
    raise app.UsageError('Give one or more image files after the flags.')
  logging.set_verbosity(logging.WARNING)
  import isojax
  from isojax.training import workdir as workdir_lib
  step = _STEP.value
  step = int(step) if step and step.isdigit() else step
  model, variables, config = isojax.load(_WORKDIR.value, step=step)
  names = workdir_lib.read_dataset_info(_WORKDIR.value)['class_names']
  probabilities = isojax.predict(model, variables, config, images)
  for path, p in zip(images, probabilities):
    top = p.argsort()[::-1][:_TOP.value]
    print(path + ': ' + ', '.join(f'{names[i]} {100 * p[i]:.1f}%' for i in top))


if __name__ == '__main__':
  app.run(main)
