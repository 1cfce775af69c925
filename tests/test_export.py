"""Exported models compute what JAX computes: every family to ONNX and StableHLO, the default run end to end.

Each export measures itself against `jax.jit` of the same model at batch 1 and 7 and refuses to write a file that
differs; these tests re-measure the written files on other inputs, and run the default run's ONNX file on the
360 test digits in a process that never imports isojax or JAX.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isojax import models
from isojax.core import loading
from isojax.core import workdir as workdir_lib
from isojax.training import loop
from isojax.weights import export
from tests.test_models import tiny

pytest.importorskip('jax2onnx', reason="the `export` extra (pip install 'isojax[export]')")
onnx = pytest.importorskip('onnx')
onnxruntime = pytest.importorskip('onnxruntime')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small member of every registered family: the isotropic ones and the hybrid as tests.test_models.tiny shrinks
# them, and the pyramids by name.
SMALL = {
  'vit': 'ViT',
  'deit3': 'DeiT3',
  'cait': 'CaiT',
  'mixer': 'Mixer',
  'resmlp': 'ResMLP',
  'gmlp': 'gMLP',
  'convnext_iso': 'ConvNeXt',
  'convmixer': 'ConvMixer',
  'hybrid': 'R50+ViT',
  'resnet': 'ResNet-18-w16',
  'resnetv2': 'BiT-R26-w16-g8',
}


def small_model(family):
  """The family's small member with the reference kernels, as an export builds a model."""
  options = export.reference_kernels(models.registry.family(family))
  if family in ('resnet', 'resnetv2'):
    return models.create(SMALL[family], num_classes=5, **options)
  return tiny(SMALL[family], **options)


FAST = ()  # every family's round trip is slow (ConvMixer's: 40 s); the fast tier exports ConvMixer once, below


def test_every_registered_family_has_a_small_member_here():
  assert sorted(SMALL) == sorted(models.registry.family_names())


def exportable(module, size=16, channels=3):
  """A small model with random weights everywhere, heads scaled to logits of order one (a trained model's)."""
  images = jnp.zeros((1, size, size, channels))
  variables = module.init(jax.random.PRNGKey(0), images, train=False)
  keys = iter(jax.random.split(jax.random.PRNGKey(9), 10_000))

  def randomised(path, x):
    if 'head' not in jax.tree_util.keystr(path):
      return x
    return jax.random.normal(next(keys), x.shape) / np.sqrt(x.shape[0] if x.ndim > 1 else 1.0)

  variables = jax.tree_util.tree_map_with_path(randomised, variables)
  names = tuple(f'class_{i}' for i in range(5))
  return export.Exportable(module, variables, size, channels, names, None, {})


def assert_file_computes_what_jax_computes(path, model):
  run, meta = export.load_runner(str(path))
  reference = export.logits_function(model)
  for batch in (1, 7):
    images = np.asarray(jax.random.normal(jax.random.PRNGKey(batch), (batch, 16, 16, 3)))
    got, want = run(images), np.asarray(reference(images))
    assert np.abs(got - want).max() <= 1e-4, (meta['format'], batch, np.abs(got - want).max())
    assert (got.argmax(-1) == want.argmax(-1)).all()
  measured = [m for k, m in meta['parity'].items() if k.startswith('batch_')]
  assert all(m['top1_equal'] and m['max_abs_diff'] <= 1e-4 for m in measured), meta['parity']


@pytest.mark.parametrize(
  'family', [pytest.param(f, marks=() if f in FAST else pytest.mark.slow) for f in sorted(SMALL)]
)
def test_every_family_exports_to_onnx_and_stablehlo_computing_jax_logits_at_batch_1_and_7(family, tmp_path):
  model = exportable(small_model(family))
  for fmt in export.FORMATS:
    path = tmp_path / f'model.{fmt}'
    meta = export.export(model, fmt, str(path))
    assert meta['input']['shape'] == ['batch', 16, 16, 3] and meta['output']['shape'] == ['batch', 5]
    assert_file_computes_what_jax_computes(path, model)
  onnx.checker.check_model(onnx.load(tmp_path / 'model.onnx'), full_check=True)
  (batch,) = onnx.load(tmp_path / 'model.onnx').graph.input[0].type.tensor_type.shape.dim[:1]
  assert batch.dim_param == 'batch'  # symbolic: any batch size


def test_convmixer_exports_grouped_convolutions_and_batchnorm_folded_from_its_running_statistics(tmp_path):
  module = models.create('ConvMixer-32/2', num_classes=5, kernel_size=3, patch_size=4, kernels='reference')
  model = exportable(module)
  stats = jax.tree_util.tree_map(lambda x: x + 0.5, model.variables['batch_stats'])  # not the identity
  model = export.Exportable(module, {**model.variables, 'batch_stats': stats}, 16, 3, model.class_names, None, {})
  export.export(model, 'onnx', str(tmp_path / 'm.onnx'))
  graph = onnx.load(tmp_path / 'm.onnx').graph
  groups = [next((a.i for a in n.attribute if a.name == 'group'), 1) for n in graph.node if n.op_type == 'Conv']
  assert groups.count(32) == 2 and set(groups) == {1, 32}  # two depthwise (group = width) and the patch embedding
  # BatchNorm at inference is per-channel arithmetic on the running statistics, constants whose square root and
  # division onnxruntime folds when it loads the file.
  options = onnxruntime.SessionOptions()
  options.optimized_model_filepath = str(tmp_path / 'optimized.onnx')
  onnxruntime.InferenceSession(str(tmp_path / 'm.onnx'), options, providers=['CPUExecutionProvider'])
  folded = {n.op_type for n in onnx.load(tmp_path / 'optimized.onnx').graph.node}
  assert not {'Sqrt', 'BatchNormalization'} & folded, folded


_UNCONVERTIBLE = jax.extend.core.Primitive('isojax_test_unconvertible')
_UNCONVERTIBLE.def_impl(lambda x: x)
_UNCONVERTIBLE.def_abstract_eval(lambda x: x)


@pytest.mark.slow  # 19 s: an export traced to its failure
def test_a_primitive_the_exporter_cannot_convert_fails_naming_it_and_its_module(tmp_path):
  import flax.linen as nn

  class Odd(nn.Module):
    @nn.compact
    def __call__(self, x):
      return _UNCONVERTIBLE.bind(nn.Dense(5, name='proj')(x))

  class Net(nn.Module):
    @nn.compact
    def __call__(self, images, train=False):
      return Odd(name='block_3')(images.mean((1, 2)))

  model = exportable(Net())
  with pytest.raises(export.ExportError, match=r"'isojax_test_unconvertible' in module Net/block_3.*stablehlo"):
    export.export(model, 'onnx', str(tmp_path / 'm.onnx'))
  assert os.listdir(tmp_path) == []


@pytest.mark.slow  # 17 s: a whole export, then the refusal
def test_an_export_beyond_the_tolerance_fails_with_the_measured_difference_and_writes_nothing(tmp_path, monkeypatch):
  convert, runner = export.CONVERTERS['stablehlo']
  off_by = lambda data: lambda images: runner(data)(images) + 1e-3  # noqa: E731
  monkeypatch.setitem(export.CONVERTERS, 'stablehlo', (convert, off_by))
  with pytest.raises(
    export.ExportError, match=r'max \|logit difference\| 0\.001 \(allowed 0\.0001.*nothing was written'
  ):
    export.export(exportable(small_model('vit')), 'stablehlo', str(tmp_path / 'm.stablehlo'))
  assert os.listdir(tmp_path) == []


def test_a_published_weight_file_exports_with_the_architecture_it_carries(tmp_path):
  path = os.path.join(ROOT, 'tests', 'data', 'timm', 'convmixer.pth')
  model = export.from_weights(path)
  meta = export.export(model, 'onnx', str(tmp_path / 'w.onnx'))
  assert meta['source'] == {'weights': path} and meta['preprocessing'] is None
  assert meta['parity']['batch_7']['top1_equal'] and meta['parity']['batch_7']['max_abs_diff'] <= 1e-4


# The consumer: numpy, json and onnxruntime only. It applies the sidecar's preprocessing to uint8 digits.
CONSUMER = textwrap.dedent(
  """
  import json, sys
  import numpy as np, onnxruntime
  model, digits = sys.argv[1], np.load(sys.argv[2])
  meta = json.load(open(model + '.json'))
  pp = meta['preprocessing']
  assert [op['op'] for op in pp['ops']] == ['normalize'], pp  # the default run's eval_pp
  images = (digits['images'].astype(np.float32) - np.float32(pp['mean'])) / np.float32(pp['std'])
  session = onnxruntime.InferenceSession(model, providers=['CPUExecutionProvider'])
  logits = session.run(None, {meta['input']['name']: images})[0]
  assert not any(m.split('.')[0] in ('isojax', 'jax', 'tensorflow') for m in sys.modules), 'imported isojax or JAX'
  print(json.dumps({'correct': int((logits.argmax(-1) == digits['labels']).sum()), 'count': len(images)}))
  """
)


@pytest.mark.slow
def test_the_default_run_exported_classifies_the_test_digits_without_isojax_as_its_final_evaluation(tmp_path):
  import tensorflow_datasets as tfds

  from isojax import data

  tfds_dir, workdir = tmp_path / 'tfds', tmp_path / 'run'
  config = loading.load(os.path.join(ROOT, 'configs', 'default.py'), {'num_steps': 60, 'data.data_dir': str(tfds_dir)})
  loop.train_and_evaluate(config, str(workdir))
  out = subprocess.run(
    [sys.executable, '-m', 'isojax.export', f'--workdir={workdir}', f'--output={tmp_path / "digits.onnx"}'],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0 and 'max |logit difference|' in out.stdout, out.stderr[-3000:]
  test = list(tfds.as_numpy(data.get_builder('isojax_digits', str(tfds_dir)).as_dataset(split='test')))
  labels = np.array([ex['label'] for ex in test])
  np.savez(tmp_path / 'digits.npz', images=np.stack([ex['image'] for ex in test]), labels=labels)
  run = subprocess.run(
    [sys.executable, '-c', CONSUMER, str(tmp_path / 'digits.onnx'), str(tmp_path / 'digits.npz')],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  measured = json.loads(run.stdout.strip().splitlines()[-1])
  (summary,) = [m for m in workdir_lib.read_metrics(str(workdir)) if m.get('split') == 'summary']
  assert measured['count'] == 360 and measured['correct'] / 360 == pytest.approx(summary['final_accuracy'], abs=1e-9)
  # isojax.predict reads the exported file the same way.
  tfds_png = tmp_path / 'digit.png'
  import tensorflow as tf

  tf.io.write_file(str(tfds_png), tf.io.encode_png(test[0]['image']))
  predicted = subprocess.run(
    [sys.executable, '-m', 'isojax.predict', f'--model_file={tmp_path / "digits.onnx"}', str(tfds_png)],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert predicted.returncode == 0 and predicted.stdout.count('%') == 5, predicted.stderr[-3000:]


def test_export_takes_exactly_one_of_a_run_or_a_weight_file(tmp_path, capsys):
  from isojax import export as command

  with pytest.raises(SystemExit) as stopped:
    command.main([f'--output={tmp_path / "m.onnx"}'])
  assert stopped.value.code == 2 and 'exactly one of --workdir (a run) or --weights' in capsys.readouterr().err
