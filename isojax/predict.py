"""Top-5 classes for image files with a trained run, or with a model exported by isojax.export.

python -m isojax.predict --workdir=DIR [--step=best] IMAGE [IMAGE ...]
python -m isojax.predict --model_file=MODEL.onnx IMAGE [IMAGE ...]   (or a StableHLO file; its sidecar beside it)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402

from isojax.core import command_line  # noqa: E402
from isojax.core import workdir as workdir_lib  # noqa: E402
from isojax.evaluation import inference  # noqa: E402
from isojax.weights import export, runs  # noqa: E402

FLAGS = flags.FlagValues()
_WORKDIR = flags.DEFINE_string('workdir', None, 'The --workdir of an isojax.main run.', flag_values=FLAGS)
_STEP = flags.DEFINE_string('step', None, "A checkpoint step, 'best', or empty for the latest.", flag_values=FLAGS)
_MODEL_FILE = flags.DEFINE_string(
  'model_file', None, 'A file isojax.export wrote (ONNX or StableHLO), instead of --workdir.', flag_values=FLAGS
)
_TOP = flags.DEFINE_integer('top', 5, 'How many classes to print per image.', flag_values=FLAGS)


def _with_run(workdir: str, images: list[str]) -> tuple[np.ndarray, list[str]]:
  model, variables, config = runs.load(workdir, step=command_line.checkpoint_step(_STEP.value))
  names = workdir_lib.read_dataset_info(workdir)['class_names']
  return inference.predict(model, variables, config, images), names


def _with_model_file(path: str, images: list[str]) -> tuple[np.ndarray, list[str]]:
  run, meta = export.load_runner(path)
  pp = meta['preprocessing']
  if pp is None:
    raise command_line.UsageError(f'{path!r} was exported from a weight file, whose sidecar has no preprocessing')
  batch = inference.preprocess_with(pp['spec'], pp['image_size'], images, meta['input']['shape'][-1])
  logits = run(batch)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True), meta['class_names']


@command_line.command
def main(argv: Optional[Sequence[str]] = None) -> int:
  images = command_line.parse(FLAGS, argv, __doc__)
  if not images:
    raise command_line.UsageError('give one or more image files after the flags')
  if bool(_WORKDIR.value) == bool(_MODEL_FILE.value):
    raise command_line.UsageError(
      f'give exactly one of --workdir or --model_file; got --workdir={_WORKDIR.value!r}, '
      f'--model_file={_MODEL_FILE.value!r}'
    )
  logging.set_verbosity(logging.WARNING)
  if _MODEL_FILE.value:
    probabilities, names = _with_model_file(_MODEL_FILE.value, images)
  else:
    probabilities, names = _with_run(str(_WORKDIR.value), images)
  for path, p in zip(images, probabilities):
    top = p.argsort()[::-1][: _TOP.value]
    print(path + ': ' + ', '.join(f'{names[i]} {100 * p[i]:.1f}%' for i in top))
  return 0


if __name__ == '__main__':
  sys.exit(main())
