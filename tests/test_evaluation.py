"""Evaluators (isojax/evaluation): several per run, big_vision's few-shot probe, and isojax.evaluate."""

import json
import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from isojax import evaluation, models
from isojax.core import config as config_schema
from isojax.core import devices, loading, sharding
from isojax.core import workdir as workdir_lib
from isojax.evaluation import classification, evaluators, fewshot
from isojax.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def clustered_features(rng, per_class, num_classes, dim, spread):
  """(train, test) features around the same class centres, `spread` apart relative to unit noise."""
  centres = rng.normal(size=(num_classes, dim)) * spread

  def draw(n):
    labels = np.repeat(np.arange(num_classes), n)
    return centres[labels] + rng.normal(size=(len(labels), dim)), labels

  return draw(per_class), draw(30)


def direct_ridge_accuracy(train_x, train_y, test_x, test_y, num_classes, l2):
  """The same probe written the obvious way: standardise, bias column of 100, solve (X^T X + l2 I) W = X^T Y."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-5
  design = lambda x: np.hstack([(x - mean) / std, np.full((len(x), 1), 100.0)])
  x = design(train_x)
  targets = 2.0 * np.eye(num_classes)[train_y] - 1.0
  weights = np.linalg.solve(x.T @ x + l2 * np.eye(x.shape[1]), x.T @ targets)
  return float(np.mean((design(test_x) @ weights).argmax(1) == test_y))


@pytest.mark.parametrize('per_class,dim', [(10, 8), (2, 64)])  # N >= D and D > N: both Gram matrices
def test_the_probe_equals_a_direct_least_squares_solution(per_class, dim):
  rng = np.random.RandomState(0)
  (train_x, train_y), (test_x, test_y) = clustered_features(rng, per_class, 10, dim, spread=0.7)
  for l2 in (2.0**10, 1.0):
    ours = fewshot.probe_accuracy(train_x, train_y, test_x, test_y, 10, l2)
    direct = direct_ridge_accuracy(train_x, train_y, test_x, test_y, 10, l2)
    assert ours == direct and 0.2 < ours < 1.0  # informative, not trivially perfect


def test_shots_are_k_per_class_and_the_same_for_the_same_seed():
  labels = np.random.RandomState(1).randint(0, 4, 200)
  picked = fewshot.sample_shots(labels, 4, 5, seed=0)
  assert np.bincount(labels[picked], minlength=4).tolist() == [5, 5, 5, 5]
  np.testing.assert_array_equal(picked, fewshot.sample_shots(labels, 4, 5, seed=0))
  assert not np.array_equal(picked, fewshot.sample_shots(labels, 4, 5, seed=1))
  # big_vision's sampling: a default_rng(seed) permutation of each class, its first k.
  rng = np.random.default_rng(0)
  expected = np.concatenate([rng.permutation(np.where(labels == c)[0])[:5] for c in range(4)])
  np.testing.assert_array_equal(picked, expected)


def test_fewshot_metrics_report_each_shot_as_the_mean_over_seeds():
  rng = np.random.RandomState(2)
  (train_x, train_y), (test_x, test_y) = clustered_features(rng, 30, 5, 16, spread=0.6)
  metrics = fewshot.fewshot_metrics(train_x, train_y, test_x, test_y, 5, shots=(1, 10), seeds=3)
  assert set(metrics) == {'1shot', '1shot_seeds', '10shot', '10shot_seeds'}
  assert len(metrics['10shot_seeds']) == 3 and metrics['10shot'] == pytest.approx(np.mean(metrics['10shot_seeds']))
  assert metrics['10shot'] > metrics['1shot']


@pytest.mark.slow
def test_features_give_every_block_output_and_the_pre_logits():
  model = models.create('ViT-32x3/4-h2-m64', 10, representation_size=24)
  images = jnp.ones((2, 16, 16, 3))
  variables = model.init(jax.random.PRNGKey(0), images)
  assert set(variables) == {'params'}  # features are never stored as variables
  logits, found = models.features(model, variables, images)
  assert sorted(found) == ['block00', 'block01', 'block02', 'pre_logits']
  assert found['block02'].shape == (2, 17, 32) and found['pre_logits'].shape == (2, 24)
  np.testing.assert_array_equal(logits, model.apply(variables, images))


def short_config(tfds_dir, **overrides):
  return loading.load(
    os.path.join(ROOT, 'configs', 'default.py'),
    {
      'num_steps': 4,
      'eval_every': 2,
      'checkpoint.every': 2,
      'log_every': 2,
      'batch_size': 16,
      'eval_batch_size': 360,
      'model.name': 'ConvMixer-16/1',
      'data.data_dir': str(tfds_dir),
      **overrides,
    },
  )


@pytest.mark.slow
def test_several_evaluators_run_at_their_own_steps_and_one_picks_the_best(tmp_path):
  config = short_config(tmp_path / 'tfds')
  with config.unlocked():
    config.evals.train = config_schema.classification_eval(split='train[:200]', every=4)
    config.evals.fewshot.shots = (1, 5)
    config.best_metric = 'fewshot/5shot'
  result = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  records = workdir_lib.read_metrics(str(tmp_path / 'run'))
  steps = lambda name: [m['step'] for m in workdir_lib.eval_records(records, name)]
  assert steps('val') == [2, 4] and steps('fewshot') == [2, 4] and steps('train') == [4]
  assert workdir_lib.eval_records(records, 'train')[0]['num_examples'] == 200
  fewshot_rows = workdir_lib.eval_records(records, 'fewshot')
  assert result.summary['best_metric'] == 'fewshot/5shot'
  assert result.summary['best_accuracy'] == max(m['5shot'] for m in fewshot_rows)
  assert {'val/accuracy', 'train/top5', 'fewshot/1shot', 'fewshot/5shot'} <= set(result.summary['final'])


@pytest.mark.parametrize(
  'field,value,message',
  [
    ('dataset', 'no_such_dataset', r"Evaluator 'probe': .*'no_such_dataset' is not a dataset"),
    (
      'test_split',
      'validation',
      r"Evaluator 'probe': dataset 'isojax_digits' has no split 'validation' "
      r"\(splits: \['test', 'train'\]",
    ),
    (
      'feature',
      'block07',
      r"Evaluator 'probe': the model has no feature 'block07'; features: "
      r"\['block00', 'pre_logits'\]",
    ),
  ],
)
def test_an_evaluator_naming_what_does_not_exist_fails_before_training(tmp_path, field, value, message):
  config = short_config(tmp_path / 'tfds')
  with config.unlocked():
    config.evals.probe = config_schema.fewshot_eval(**{field: value})
  with pytest.raises(ValueError, match=message):
    loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not workdir_lib.read_metrics(str(tmp_path / 'run'))  # nothing trained


def test_best_metric_must_name_an_evaluator_and_a_metric_that_improves_upwards(tmp_path):
  config = short_config(tmp_path / 'tfds')
  for value, message in (
    ('test/accuracy', r"names no evaluator; evaluators: \['fewshot', 'val'\]"),
    (
      'val/loss',
      r"'val' has no metric 'loss' that improves upwards; choose one of "
      r"\['val/accuracy', 'val/top5'\]",
    ),
  ):
    with config.unlocked():
      config.best_metric = value
    with pytest.raises(ValueError, match=message):
      evaluation.best_metric(config)


@pytest.mark.slow
def test_an_evaluator_failing_mid_run_stops_the_run_naming_it_and_the_step(tmp_path, monkeypatch):
  calls = []

  def fail_second_time(self, variables):
    calls.append(1)
    if len(calls) == 2:
      raise OSError('disk went away')
    return {'1shot': 0.5, '1shot_seeds': [0.5], '5shot': 0.5, '5shot_seeds': [0.5]}

  monkeypatch.setattr(fewshot.FewshotEvaluator, 'run', fail_second_time)
  with pytest.raises(RuntimeError, match=r"Evaluator 'fewshot' \(fewshot\) failed at step 4: OSError: disk went away"):
    loop.train_and_evaluate(short_config(tmp_path / 'tfds'), str(tmp_path / 'run'))


def run_evaluate(*args):
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'}
  out = subprocess.run(
    [sys.executable, '-m', 'isojax.evaluate', *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


@pytest.mark.slow
def test_evaluate_reruns_a_finished_runs_evaluators_with_its_final_top1(tmp_path):
  config = short_config(tmp_path / 'tfds')
  result = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  stdout = run_evaluate(f'--workdir={tmp_path / "run"}', f'--out={tmp_path / "eval.json"}')
  written = json.loads((tmp_path / 'eval.json').read_text())
  assert written['step'] == 4 and set(written['results']) == {'val', 'fewshot'}
  assert written['results']['val']['accuracy'] == result.summary['final_accuracy']
  assert written['results']['fewshot']['10shot'] == result.summary['final']['fewshot/10shot']
  assert f'| val | accuracy | {100 * result.summary["final_accuracy"]:.2f}% |' in stdout


@pytest.mark.slow
def test_evaluate_a_weight_file_builds_the_model_from_the_file(tmp_path):
  # A vision_transformer ViT for 8x8 one-channel digits, exported as the published files are.
  from tests.reference import sources

  models_vit, _ = sources.vision_transformer()
  reference = models_vit.VisionTransformer(
    num_classes=10,
    patches=ml_collections.ConfigDict({'size': (2, 2)}),
    hidden_size=16,
    classifier='token',
    transformer=dict(num_layers=1, mlp_dim=32, num_heads=2, dropout_rate=0.0, attention_dropout_rate=0.0),
  )
  params = reference.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)['params']
  np.savez(
    tmp_path / 'vit.npz', **{'/'.join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params).items()}
  )
  run_evaluate(
    f'--weights={tmp_path / "vit.npz"}',
    '--config=configs/default.py',
    f'--config.data.data_dir={tmp_path / "tfds"}',
    f'--out={tmp_path / "eval.json"}',
  )
  written = json.loads((tmp_path / 'eval.json').read_text())
  assert written['results']['val']['num_examples'] == 360 and 0 <= written['results']['val']['accuracy'] <= 1
  assert set(written['results']['fewshot']) >= {'1shot', '5shot', '10shot', '25shot'}


@pytest.mark.slow
def test_classification_on_another_dataset_runs_when_the_label_spaces_match(tmp_path):
  import tensorflow_datasets as tfds

  config = short_config(tmp_path / 'tfds', num_steps=2)
  with config.unlocked():
    config.evals.mnist = config_schema.classification_eval(
      dataset='mnist', split='test', pp='resize(8)|normalize(half)'
    )
    config.evals.fewshot.shots = (1,)
  with tfds.testing.mock_data(num_examples=16):  # no download: TFDS's mock MNIST, 10 classes like the digits
    loop.train_and_evaluate(config, str(tmp_path / 'run'))
    rows = workdir_lib.eval_records(workdir_lib.read_metrics(str(tmp_path / 'run')), 'mnist')
    assert [m['step'] for m in rows] == [2] and rows[0]['num_examples'] > 0  # mock splits: 16 per shard
    with config.unlocked():
      config.evals.mnist.dataset = 'cifar100'
    with pytest.raises(
      ValueError,
      match=r"Evaluator 'mnist': 'cifar100' has 100 classes, the model 10; "
      r'classification needs the same label space',
    ):
      loop.train_and_evaluate(config, str(tmp_path / 'run2'))


def test_an_evaluations_loss_is_the_runs_training_objective(tmp_path):
  # big_vision passes loss_name=config.loss to its classification evaluator; isojax's evaluators inherit config.loss
  # and compute it with the train step's own function (isojax/core/losses.py).
  logits = jax.random.normal(jax.random.PRNGKey(0), (6, 7))
  batch = {'label': jnp.arange(6) % 7, 'mask': jnp.array([1.0, 1, 1, 1, 1, 0])}
  one_hot = jax.nn.one_hot(batch['label'], 7)
  sigmoid = optax.sigmoid_binary_cross_entropy(logits, one_hot).sum(-1)
  softmax = optax.softmax_cross_entropy(logits, one_hot)
  for loss, expected in (('sigmoid_xent', sigmoid), ('softmax_xent', softmax)):
    sums = classification.batch_sums(logits, batch, 7, loss)
    np.testing.assert_allclose(sums['loss'], (expected * batch['mask']).sum(), rtol=1e-6)
  config = short_config(tmp_path / 'tfds')
  with config.unlocked():
    config.loss = 'sigmoid_xent'
  assert {spec['loss'] for spec in evaluation.specs(config).values()} == {'sigmoid_xent'}


def test_a_progress_metric_that_no_evaluator_reports_is_refused_naming_the_choices():
  import glob

  for path in sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py'))):  # every shipped config's choice is real
    evaluators.check_progress_metrics(loading.load(path))
  config = loading.load(os.path.join(ROOT, 'configs', 'default.py'), {'progress_metrics': ('val/accuracyy',)})
  with pytest.raises(ValueError, match=r"progress_metrics has 'val/accuracyy'.*choose from \[.*'val/accuracy'"):
    evaluators.check_progress_metrics(config)


def test_on_a_mesh_the_evaluators_read_the_sharded_variables_and_report_what_pmap_reports(tmp_path):
  """The jit path's evaluators run under jit on the variables as the run placed them (split over fsdp:8, never
  gathered), with global batches: every example once, and the metrics pmap's evaluators give."""
  config = short_config(tmp_path / 'tfds')
  with config.unlocked():
    config.evals.fewshot.shots = (1, 5)
  size, model = config.data.image_size, models.from_config(config, 10)
  variables = jax.device_get(model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 1)), train=False))
  want = {n: e.evaluate(devices.replicate(variables)) for n, e in evaluation.create(config, model, 10).items()}
  mesh = sharding.make_mesh('fsdp:8')
  placed = jax.device_put(variables, sharding.shardings(variables, (('.*', 'fsdp(min_size_mb=0)'),), mesh))
  assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree_util.tree_leaves(placed))
  got = {n: e.evaluate(placed) for n, e in evaluation.create(config, model, 10, mesh=mesh).items()}
  assert set(got) == set(want) == {'val', 'fewshot'}
  for name in want:
    for metric, value in want[name].items():
      if metric != 'images_per_sec':
        np.testing.assert_allclose(got[name][metric], value, rtol=1e-5, err_msg=f'{name}/{metric}')
  assert got['val']['num_examples'] == want['val']['num_examples'] == 360  # the digits' test split, each once
