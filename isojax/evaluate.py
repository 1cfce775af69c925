"""Evaluate without training: a finished run, or a published weight file.

    python -m isojax.evaluate --workdir=DIR [--step=N|best]        # the run's own evaluators
    python -m isojax.evaluate --weights=FILE [--model=NAME] --config=CONFIG.py [--config.evals...]
    ... [--dataset=NAME --split=SPLIT --pp=PP --image_size=N]      # or one classification evaluator

The evaluators are training's (isojax/evaluation): every example exactly once over all devices,
the few-shot probe on the host. Prints a table and writes one JSON file (`--out`; by default
DIR/evaluation_step{N}.json for a run, evaluation.json here for a weight file).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from isojax import data, evaluation, models  # noqa: E402
from isojax.core import command_line, devices  # noqa: E402
from isojax.core import workdir as workdir_lib  # noqa: E402
from isojax.core.config import classification_eval  # noqa: E402
from isojax.weights import pretrained, runs  # noqa: E402

FLAGS = flags.FlagValues()
_CONFIG = config_flags.DEFINE_config_file(
  'config',
  None,
  'Config whose data and evals to use (weights; optional for a run, whose own config is the default).',
  lock_config=False,
  flag_values=FLAGS,
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The --workdir of an isojax.main run.', flag_values=FLAGS)
_STEP = flags.DEFINE_string('step', None, "A checkpoint step, 'best', or empty for the latest.", flag_values=FLAGS)
_WEIGHTS = flags.DEFINE_string(
  'weights', None, 'A published weight file (.npz, timm .pth/.bin/.safetensors).', flag_values=FLAGS
)
_MODEL = flags.DEFINE_string(
  'model',
  None,
  'With --weights: the isojax model name to load them into; by '
  'default the architecture is read from the file (isojax.weights.pretrained.create).',
  flag_values=FLAGS,
)
_DATASET = flags.DEFINE_string(
  'dataset', None, 'Evaluate one classification evaluator on this TFDS dataset.', flag_values=FLAGS
)
_SPLIT = flags.DEFINE_string('split', None, "Its split (default: the config's eval split).", flag_values=FLAGS)
_PP = flags.DEFINE_string('pp', None, "Its preprocessing (default: the config's eval_pp).", flag_values=FLAGS)
_IMAGE_SIZE = flags.DEFINE_integer('image_size', None, "Its image size (default: the config's).", flag_values=FLAGS)
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir.', flag_values=FLAGS)
_OUT = flags.DEFINE_string('out', None, 'Where to write the JSON result.', flag_values=FLAGS)
_DISTRIBUTED = flags.DEFINE_bool(
  'distributed', False, 'Join a multi-host run (jax.distributed.initialize).', flag_values=FLAGS
)


def _apply_flags(config) -> None:
  """--dataset/--split/--pp/--image_size/--data_dir: one classification evaluator on that data."""
  data_flags = (_DATASET.value, _SPLIT.value, _PP.value, _IMAGE_SIZE.value, _DATA_DIR.value)
  if not any(v is not None for v in data_flags):
    return
  with config.unlocked():
    for field, flag in (
      ('name', _DATASET),
      ('eval_split', _SPLIT),
      ('eval_pp', _PP),
      ('image_size', _IMAGE_SIZE),
      ('data_dir', _DATA_DIR),
    ):
      if flag.value is not None:
        config.data[field] = flag.value
    config.evals = {_SPLIT.value or config.data.eval_split: classification_eval()}
    config.best_metric = ''


def _from_run() -> tuple:
  """(model, variables, config, source, out) of --workdir at --step."""
  workdir, step = str(_WORKDIR.value), command_line.checkpoint_step(_STEP.value)
  model, variables, run_config = runs.load(workdir, step=step)
  config = _CONFIG.value if _CONFIG.value is not None else run_config
  resolved_step = runs.checkpoint_step(workdir, step)
  source = {'workdir': os.path.abspath(workdir), 'step': resolved_step}
  return model, variables, config, source, _OUT.value or os.path.join(workdir, f'evaluation_step{resolved_step}.json')


def _from_weights() -> tuple:
  """(model, variables, config, source, out) of --weights under --config."""
  if _CONFIG.value is None:
    raise command_line.UsageError(
      '--weights needs --config (its data and evaluators; e.g. configs/cifar10_finetune.py)'
    )
  config, weights = _CONFIG.value, str(_WEIGHTS.value)
  if _MODEL.value:
    classes = (
      data.get_builder(config.data.name, config.data.get('data_dir'), config.data.get('download', True))
      .info.features['label']
      .num_classes
    )
    model = models.create(_MODEL.value, classes)
    variables = pretrained.load(weights, model, config.data.image_size)
  else:
    model, variables = pretrained.create(weights)
  source = {'weights': os.path.abspath(weights), 'model': _MODEL.value}
  return model, variables, config, source, _OUT.value or 'evaluation.json'


@command_line.command
def main(argv: Optional[Sequence[str]] = None) -> int:
  positional = command_line.parse(FLAGS, argv, __doc__)
  if positional:
    raise command_line.UsageError(f'unexpected arguments {positional}')
  if bool(_WORKDIR.value) == bool(_WEIGHTS.value):
    raise command_line.UsageError('give exactly one of --workdir (a run) or --weights (a weight file)')
  logging.set_verbosity(logging.ERROR)  # Orbax warns that a read-only checkpoint is read-only
  tf.config.set_visible_devices([], 'GPU')
  if _DISTRIBUTED.value:
    devices.initialize_distributed()
  model, variables, config, source, out = _from_run() if _WORKDIR.value else _from_weights()
  _apply_flags(config)
  num_classes = int(variables['params']['head']['bias'].shape[0])
  results = evaluation.evaluate(config, model, variables, num_classes)
  if jax.process_index() == 0:
    print(evaluation.table(results))
    workdir_lib.write_json(
      out,
      {
        **source,
        'devices': jax.device_count(),
        'processes': jax.process_count(),
        'evaluators': evaluation.specs(config),
        'results': results,
      },
    )
    print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
