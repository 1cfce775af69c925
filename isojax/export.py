"""Export a trained run (or a published weight file) to ONNX or serialized StableHLO, parity checked.

python -m isojax.export --workdir=RUN [--step=best|latest|N] --format=onnx|stablehlo --output=FILE
python -m isojax.export --weights=FILE.npz|.pth|.safetensors --format=onnx --output=FILE

Writes FILE and FILE.json (input layout, image size, the run's evaluation preprocessing, class names, versions,
the parity measured against JAX). Needs the `export` extra for ONNX: pip install 'isojax[export]'.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import flags, logging  # noqa: E402

from isojax.core import command_line  # noqa: E402
from isojax.weights import export  # noqa: E402

FLAGS = flags.FlagValues()
_WORKDIR = flags.DEFINE_string('workdir', None, 'The --workdir of an isojax.main run.', flag_values=FLAGS)
_STEP = flags.DEFINE_string('step', None, "A checkpoint step, 'best', or empty for the latest.", flag_values=FLAGS)
_WEIGHTS = flags.DEFINE_string('weights', None, 'A published weight file, instead of --workdir.', flag_values=FLAGS)
_FORMAT = flags.DEFINE_enum('format', 'onnx', export.FORMATS, 'What to write.', flag_values=FLAGS)
_OUTPUT = flags.DEFINE_string('output', None, 'The file to write (and FILE.json beside it).', flag_values=FLAGS)
_TOLERANCE = flags.DEFINE_float(
  'tolerance', export.TOLERANCE, 'Max |logit difference| from JAX, times max(1, max |logit|).', flag_values=FLAGS
)
_IMAGE_SIZE = flags.DEFINE_integer(
  'image_size', None, "--weights only: another size than the file's.", flag_values=FLAGS
)
flags.mark_flag_as_required('output', flag_values=FLAGS)


def _exportable() -> export.Exportable:
  if bool(_WORKDIR.value) == bool(_WEIGHTS.value):
    given = f'--workdir={_WORKDIR.value!r}, --weights={_WEIGHTS.value!r}'
    raise command_line.UsageError(f'give exactly one of --workdir (a run) or --weights (a file); got {given}')
  if _WEIGHTS.value:
    return export.from_weights(_WEIGHTS.value, _IMAGE_SIZE.value)
  if _IMAGE_SIZE.value:
    raise command_line.UsageError('--image_size is for --weights; a run exports at the size it was trained at')
  return export.from_run(str(_WORKDIR.value), command_line.checkpoint_step(_STEP.value))


@command_line.command
def main(argv: Optional[Sequence[str]] = None) -> int:
  if command_line.parse(FLAGS, argv, __doc__):
    raise command_line.UsageError('unexpected arguments; every setting is a flag')
  logging.set_verbosity(logging.WARNING)
  output = str(_OUTPUT.value)  # a required flag
  try:
    meta = export.export(_exportable(), _FORMAT.value, output, _TOLERANCE.value)
  except export.ExportError as e:
    print(f'export failed: {e}', file=sys.stderr)
    return 1
  worst = max(m['max_abs_diff'] for k, m in meta['parity'].items() if k.startswith('batch_'))
  print(f'wrote {output} ({os.path.getsize(output):,} bytes) and {output}.json; max |logit difference| {worst:.3g}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
