"""Sweeps: deterministic expansion, and a launcher that resumes, skips failures and summarises."""

import csv
import os

import optuna
import pytest

from isojax import sweep as sweep_command
from isojax import sweeps
from isojax.core import workdir as workdir_lib
from isojax.sweeps import launcher, results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_product_takes_every_combination_in_order():
  axis = sweeps.product({'optimizer.lr': [1, 2]}, {'model.kernel_size': [3, 5, 7]})
  assert len(axis) == 6 and axis[0] == {'optimizer.lr': 1, 'model.kernel_size': 3}
  assert axis[-1] == {'optimizer.lr': 2, 'model.kernel_size': 7}


def test_zip_takes_values_together_and_rejects_unequal_lengths():
  assert sweeps.zip_axes({'a': [1, 2], 'b': [3, 4]}) == [{'a': 1, 'b': 3}, {'a': 2, 'b': 4}]
  with pytest.raises(ValueError, match='one length'):
    sweeps.zip_axes({'a': [1, 2], 'b': [3]})


def test_random_samples_are_deterministic_given_the_seed_and_inside_their_ranges():
  spec = {
    'optimizer.lr': sweeps.loguniform(1e-4, 1e-2),
    'model.depth': sweeps.choice([4, 8]),
    'mixup.mixup_alpha': sweeps.uniform(0.0, 1.0),
  }
  first, again, other = (
    sweeps.sample(20, spec, seed=3),
    sweeps.sample(20, spec, seed=3),
    sweeps.sample(20, spec, seed=4),
  )
  assert first == again and first != other
  assert all(1e-4 <= t['optimizer.lr'] <= 1e-2 and t['model.depth'] in (4, 8) for t in first)


def test_trials_name_their_swept_values_and_can_sweep_the_config_argument():
  sweep_ = sweeps.Sweep(
    'configs/cifar100.py', sweeps.product({'arg': ['vit', 'mixer'], 'optimizer.lr': [0.001]}), fixed={'num_epochs': 1.0}
  )
  trials = sweep_.trials()
  assert [t.name for t in trials] == ['arg=vit,lr=0.001', 'arg=mixer,lr=0.001']
  assert trials[0].config == 'configs/cifar100.py:vit'
  assert trials[0].overrides == {'num_epochs': 1.0, 'optimizer.lr': 0.001}
  with pytest.raises(ValueError, match='same values'):
    sweeps.Sweep('configs/default.py', [{'seed': 1}, {'seed': 1}]).trials()


def test_every_shipped_sweep_file_expands():
  for name in os.listdir(os.path.join(ROOT, 'experiments')):
    if name.endswith('.py'):
      trials = sweeps.load(os.path.join(ROOT, 'experiments', name)).trials()
      assert trials and all(os.path.exists(os.path.join(ROOT, t.config.split(':')[0])) for t in trials)


TINY = {'num_steps': 40, 'eval_every': 10, 'checkpoint.every': 10, 'log_every': 10, 'model.name': 'ConvMixer-16/1'}


@pytest.mark.slow
def test_a_real_sweep_prunes_a_hopeless_rate_reports_a_failure_and_never_reruns_a_finished_trial(
  tmp_path, monkeypatch, capsys
):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
  monkeypatch.chdir(ROOT)
  # Two learning rates that learn, one hopeless (1e-7: ~9% at step 20, where they are past 15%), and
  # patch_size=3, which does not divide the 8x8 digits: that trial fails, the others must not care.
  trials = sweeps.product({'model.patch_size': [2], 'optimizer.lr': [1e-2, 2e-2, 1e-7]}) + [
    {'model.patch_size': 3, 'optimizer.lr': 1e-2}
  ]
  pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=15)
  spec = sweeps.Sweep('configs/default.py', trials, fixed=TINY, pruner=pruner)
  directory = str(tmp_path / 'sweep')
  table = launcher.run(spec, directory, parallel=1)
  status = {r['trial']: r['status'] for r in table}
  assert status == {
    'patch_size=2,lr=0.01': 'complete',
    'patch_size=2,lr=0.02': 'complete',
    'patch_size=2,lr=1e-07': 'pruned',
    'patch_size=3,lr=0.01': 'failed',
  }
  pruned = next(r for r in table if r['status'] == 'pruned')
  assert pruned['pruned_at'] == 20 and pruned['steps'] < 40  # stopped by SIGTERM before its last step
  assert 'stopped at step' in open(os.path.join(directory, pruned['trial'], workdir_lib.LOG)).read()
  failed = next(r for r in table if r['status'] == 'failed')
  assert 'not divisible by patch_size=3' in failed['error']
  done = [r for r in table if r['status'] == 'complete']
  assert done[0]['objective'] >= done[1]['objective'] and done[0]['steps'] == 40
  assert all(r['train_images_per_sec'] > 0 and r['eval_images_per_sec'] > 0 and r['wall_time_sec'] > 0 for r in done)
  # each trial's model, from its workdir: the canonical name, its size and cost, its shape
  assert {r['model'] for r in done} == {'ConvMixer-16/1-k3-p2'} and all(r['shape'] == 'isotropic' for r in done)
  assert all(r['parameters'] == done[0]['parameters'] > 0 and r['gflops_per_image'] > 0 for r in done)

  # The same command again: finished and pruned trials are not rerun; the failed one is retried (and fails).
  finished_log = os.path.join(directory, 'patch_size=2,lr=0.01', workdir_lib.LOG)
  size_before = os.path.getsize(finished_log)
  again = launcher.run(spec, directory, parallel=1)
  assert os.path.getsize(finished_log) == size_before
  assert {r['trial']: r['status'] for r in again} == status

  # The summary is rebuilt from the trial folders and the study, by the command's main too.
  os.remove(os.path.join(directory, 'results.csv'))
  assert sweep_command.main(['--summarize', directory]) == 0
  assert '| patch_size=2,lr=' in capsys.readouterr().out
  with open(os.path.join(directory, 'results.csv')) as f:
    rows = list(csv.DictReader(f))
  assert [r['status'] for r in rows] == ['complete', 'complete', 'pruned', 'failed']
  assert rows[0]['parameters'] == str(done[0]['parameters']) and float(rows[0]['gflops_per_image']) > 0
  plots = ('results.png', 'results_cost.png', 'results_shapes.png', 'results_history.png')
  for plot in plots:  # by swept axis; by cost; shapes; Optuna's optimisation history
    assert os.path.getsize(os.path.join(directory, plot)) > 1000


def test_a_failed_trial_is_reported_by_its_exception_line_not_trailing_notes():
  log = (
    'Traceback (most recent call last):\n  File "x.py", line 1\n'
    'ValueError: Image size 8x8 is not divisible by patch_size=3; use ...\n'
    '--------------------\nFor simplicity, JAX has removed its internal frames from the traceback.\n'
  )
  assert results.error_line(log).startswith('ValueError: Image size 8x8')
  assert results.error_line('killed\n') == 'killed'


def test_a_command_called_twice_in_one_process_starts_the_second_call_from_the_defaults(tmp_path, capsys):
  # The first call's --summarize (refused: not a sweep directory) must not steer the second call.
  with pytest.raises(SystemExit) as refused:
    sweep_command.main(['--summarize', str(tmp_path)])
  assert refused.value.code == 2 and 'is not a sweep directory (no study.json or sweep.json)' in capsys.readouterr().err
  sweep_file = os.path.join(ROOT, 'experiments', 'default_sweep.py')
  assert sweep_command.main([sweep_file, f'--workdir={tmp_path / "sweep"}', '--dry_run']) == 0
  assert '4 trials (4 fixed, 0 searched); maximize val/accuracy' in capsys.readouterr().out
