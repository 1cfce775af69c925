"""Top-5 classes for image files with a trained run.

python -m isojax.predict --workdir=DIR [--step=best] IMAGE [IMAGE ...]
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import flags, logging  # noqa: E402

from isojax.core import command_line  # noqa: E402
from isojax.core import workdir as workdir_lib  # noqa: E402
from isojax.evaluation import inference  # noqa: E402
from isojax.weights import runs  # noqa: E402

FLAGS = flags.FlagValues()
_WORKDIR = flags.DEFINE_string('workdir', None, 'The --workdir of an isojax.main run.', flag_values=FLAGS)
_STEP = flags.DEFINE_string('step', None, "A checkpoint step, 'best', or empty for the latest.", flag_values=FLAGS)
_TOP = flags.DEFINE_integer('top', 5, 'How many classes to print per image.', flag_values=FLAGS)
flags.mark_flag_as_required('workdir', flag_values=FLAGS)


@command_line.command
def main(argv: Optional[Sequence[str]] = None) -> int:
  images = command_line.parse(FLAGS, argv, __doc__)
  if not images:
    raise command_line.UsageError('give one or more image files after the flags')
  logging.set_verbosity(logging.WARNING)
  workdir = str(_WORKDIR.value)  # a required flag
  model, variables, config = runs.load(workdir, step=command_line.checkpoint_step(_STEP.value))
  names = workdir_lib.read_dataset_info(workdir)['class_names']
  probabilities = inference.predict(model, variables, config, images)
  for path, p in zip(images, probabilities):
    top = p.argsort()[::-1][: _TOP.value]
    print(path + ': ' + ', '.join(f'{names[i]} {100 * p[i]:.1f}%' for i in top))
  return 0


if __name__ == '__main__':
  sys.exit(main())
