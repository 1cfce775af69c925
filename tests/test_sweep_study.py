"""Sweeps on Optuna: a search beside the axes, pruning by SIGTERM, resuming after a killed driver, and several
workers sharing one study on a PostgreSQL server that the test starts itself. The trials here are
tests/fake_trainer.py (no JAX, the same workdir contract as isojax.main), so these run in seconds."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import optuna
import psycopg
import pytest

from isojax import sweep as sweep_command
from isojax import sweeps
from isojax.sweeps import launcher, results
from isojax.sweeps import study as study_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE = (os.path.join(ROOT, 'tests', 'fake_trainer.py'),)


def search_sweep(n_trials=4, pruner=None, steps=10, step_sec=0.02, **kwargs):
  """Two fixed learning rates and a log-uniform search; accuracy = min(1, lr * step) in the fake trainer."""
  return sweeps.Sweep(
    'configs/default.py',
    [{'optimizer.lr': 0.2}, {'optimizer.lr': 0.002}],
    fixed={'num_steps': steps, 'step_sec': step_sec},
    search={'optimizer.lr': sweeps.loguniform(1e-3, 1.0)},
    n_trials=n_trials,
    pruner=pruner,
    **kwargs,
  )


def run_fake(sweep_, directory, write_results=False, **kwargs):
  out = open(os.devnull, 'w')
  return launcher.run(
    sweep_, str(directory), trainer=FAKE, poll_sec=0.05, out=out, write_results=write_results, **kwargs
  )


def study_of(directory):
  return results.load_study(str(directory))


def test_search_spaces_map_to_optuna_distributions_with_log_scale_for_loguniform():
  assert sweeps.loguniform(1e-4, 1e-2).optuna() == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
  assert sweeps.uniform(0.0, 0.5).optuna() == optuna.distributions.FloatDistribution(0.0, 0.5)
  assert sweeps.intuniform(2, 8).optuna() == optuna.distributions.IntDistribution(2, 8)
  assert sweeps.choice([3, 5, 7]).optuna() == optuna.distributions.CategoricalDistribution((3, 5, 7))
  with pytest.raises(ValueError, match='0 < low < high'):
    sweeps.loguniform(0.0, 1.0)


@pytest.mark.parametrize(
  'kwargs, message',
  [
    (dict(search={'optimizer.lr': sweeps.loguniform(1e-3, 1.0)}), 'a search needs n_trials > 0'),
    (dict(search={'model.depth': sweeps.intuniform(2, 4)}, n_trials=2, sampler='grid'), 'needs choice'),
    (dict(search={'model.depth': sweeps.choice([2, 4])}, n_trials=3, sampler='grid'), 'more than the 2 points'),
    (dict(axes=[{'model.depth': 9}], search={'model.depth': sweeps.choice([2, 4])}, n_trials=1), 'outside its search'),
    (dict(axes=[{}], sampler='anneal'), "sampler='anneal'"),
    (dict(axes=[{}], metric='accuracy'), 'name an evaluator and a key'),
  ],
)
def test_a_sweep_that_cannot_run_is_refused_naming_what_is_wrong(kwargs, message):
  with pytest.raises(ValueError, match=message):
    sweeps.Sweep('configs/default.py', **kwargs)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_suggestions_and_fixed_trials_are_enqueued_once(tmp_path):
  suggested = []
  for name in ('first', 'again'):
    directory = tmp_path / name
    run_fake(search_sweep(seed=3, steps=2), directory)
    trials = study_of(directory).get_trials()
    suggested.append([t.params['optimizer.lr'] for t in trials])
    fixed = [t for t in trials if study_lib.FIXED in t.user_attrs]
    assert [t.params for t in fixed] == [{'optimizer.lr': 0.2}, {'optimizer.lr': 0.002}]  # first, once each
    assert [t.number for t in fixed] == [0, 1] and len(trials) == 6
  assert suggested[0] == suggested[1]
  other = tmp_path / 'other_seed'
  run_fake(search_sweep(seed=4, steps=2), other)
  assert [t.params['optimizer.lr'] for t in study_of(other).get_trials()][2:] != suggested[0][2:]


def test_a_hopeless_trial_is_pruned_by_sigterm_checkpoints_and_is_recorded_pruned(tmp_path):
  # Three good fixed trials set the median; lr=0.002 reaches 0.002 * step: the median pruner stops it.
  sweep_ = sweeps.Sweep(
    'configs/default.py',
    [{'optimizer.lr': lr} for lr in (0.2, 0.3, 0.25, 0.002)],
    fixed={'num_steps': 40, 'step_sec': 0.02},
    pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
  )
  table = run_fake(sweep_, tmp_path, write_results=True)
  status = {r['trial']: r['status'] for r in table}
  assert status == {'lr=0.2': 'complete', 'lr=0.3': 'complete', 'lr=0.25': 'complete', 'lr=0.002': 'pruned'}
  pruned = next(r for r in table if r['status'] == 'pruned')
  assert 2 <= pruned['pruned_at'] < 40 and pruned['steps'] < 40  # stopped before its last step
  log = open(tmp_path / 'lr=0.002' / 'log.txt').read()
  assert 'checkpoint saved' in log and json.load(open(tmp_path / 'lr=0.002' / 'launch.json'))['returncode'] == 75
  markdown = open(tmp_path / 'results.md').read()
  assert '| lr=0.002 | pruned |' in markdown and 'Best trial: `lr=0.2` (trial 0)' in markdown and '1 pruned' in markdown
  # Run again: nothing is rerun, the pruned trial stays pruned.
  again = run_fake(sweep_, tmp_path)
  assert {r['trial']: r['status'] for r in again} == status and len(study_of(tmp_path).get_trials()) == 4


def test_a_failing_trial_is_reported_and_retried_when_the_command_runs_again(tmp_path):
  sweep_ = sweeps.Sweep('configs/default.py', [{'fail': 1}, {'fail': 0}], fixed={'num_steps': 3})
  table = run_fake(sweep_, tmp_path, write_results=True)
  assert {r['trial']: r['status'] for r in table} == {'fail=1': 'failed', 'fail=0': 'complete'}
  assert 'ValueError: fake failure' in open(tmp_path / 'results.md').read()
  run_fake(sweep_, tmp_path)
  trials = study_of(tmp_path).get_trials()
  assert [(t.number, t.state.name) for t in trials] == [(0, 'FAIL'), (1, 'COMPLETE'), (2, 'FAIL')]
  assert trials[2].system_attrs['retry_history'] == [0]  # the retry, once; the finished one not rerun


def test_a_search_trial_drawn_with_a_running_trials_values_is_skipped_and_the_sampler_asked_again(tmp_path):
  # Two workers asking at once met this: the second drew the first's values while it ran. It used to end FAIL
  # and count towards n_trials (a sweep one trial short); now it does not count, and another draw runs.
  sweep_ = sweeps.Sweep(
    'configs/default.py', search={'optimizer.lr': sweeps.choice([0.1, 0.2])}, n_trials=2, sampler='random', seed=0
  )
  url = study_lib.storage_url(str(tmp_path), None)
  optuna_study = study_lib.open_study(sweep_, study_lib.open_storage(url), 'small_space')
  names = [study_lib.ask(sweep_, optuna_study)[1].name for _ in range(2)]  # neither told: both running
  assert sorted(names) == ['lr=0.1', 'lr=0.2']
  trials = optuna_study.get_trials()
  assert [t.state.name for t in study_lib.counted(trials)] == ['RUNNING', 'RUNNING']
  assert all('unfinished trial' in t.user_attrs[study_lib.SKIPPED] for t in trials if t.state.name == 'FAIL')
  assert len(trials) > 2  # the draws that were skipped


def test_a_second_driver_on_a_sqlite_study_is_refused_naming_what_to_use(tmp_path):
  url = study_lib.storage_url(str(tmp_path), None)
  with study_lib.single_driver(url):
    with pytest.raises(study_lib.StorageError, match='one writer.*--storage=postgresql://'):
      run_fake(search_sweep(), tmp_path)
  with pytest.raises(study_lib.StorageError, match='journal file'):
    study_lib.storage_url(str(tmp_path), 'journal.log')


def driver_process(directory, sweep_args, storage=None, heartbeat=1, grace=3):
  """A driver in its own process (to be killed), running search_sweep(**sweep_args) with the fake trainer."""
  code = '\n'.join(
    [
      'import sys',
      'sys.path.insert(0, sys.argv[1])',
      'from test_sweep_study import search_sweep, FAKE',
      'from isojax.sweeps import launcher',
      'try:',
      '  launcher.run(search_sweep(**eval(sys.argv[2])), sys.argv[3], trainer=FAKE, poll_sec=0.05,',
      '               storage=sys.argv[4] or None, heartbeat_sec=int(sys.argv[5]), grace_sec=int(sys.argv[6]),',
      '               write_results=False)',
      'except launcher.Interrupted:',
      '  sys.exit(75)',
    ]
  )
  args = [sys.executable, '-c', code, os.path.join(ROOT, 'tests'), repr(sweep_args), str(directory)]
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')]))}
  log = open(os.path.join(str(directory) + f'.driver{time.time_ns()}.log'), 'w')
  return subprocess.Popen([*args, storage or '', str(heartbeat), str(grace)], env=env, stdout=log, stderr=log)


def wait_for(condition, timeout=60):
  deadline = time.time() + timeout
  while not condition():
    assert time.time() < deadline, 'timed out'
    time.sleep(0.05)


def eval_steps(trial_dir):
  lines = [json.loads(line) for line in open(os.path.join(trial_dir, 'metrics.jsonl'))]
  return [m['step'] for m in lines if m['split'] == 'eval']


def assert_every_trial_once_to_the_end(directory, expected, steps):
  study = study_of(directory)
  counted = study_lib.counted(study.get_trials())
  finished = [t for t in counted if t.state.name in ('COMPLETE', 'PRUNED')]
  names = [t.user_attrs['isojax_name'] for t in finished]
  assert len(finished) == expected and len(set(names)) == expected, names  # n_trials + fixed, none twice
  for name in names:
    assert eval_steps(os.path.join(str(directory), name)) == list(range(1, steps + 1))  # no step run twice
  return names


@pytest.mark.slow
def test_a_driver_stopped_by_sigterm_then_killed_by_sigkill_resumes_each_time_and_runs_every_trial_once(tmp_path):
  directory = tmp_path / 'sweep'
  args = dict(n_trials=3, steps=30, step_sec=0.05)
  trials_under_way = lambda n: lambda: len(glob.glob(str(directory / '*' / 'checkpoint.json'))) >= n
  # SIGTERM: the driver stops its trials (each checkpoints), queues their retries and exits 75.
  first = driver_process(directory, args)
  wait_for(trials_under_way(2))
  first.send_signal(signal.SIGTERM)
  assert first.wait(timeout=60) == 75
  trials = study_of(directory).get_trials()
  assert {t.state.name for t in study_lib.counted(trials)} <= {'COMPLETE', 'WAITING'}  # queued, none left running
  assert any(t.state.name == 'WAITING' for t in trials)
  # SIGKILL mid-trial: the kernel's SIGTERM makes the orphan checkpoint; the next driver retries it from there.
  second = driver_process(directory, args)
  wait_for(trials_under_way(3))
  second.send_signal(signal.SIGKILL)
  second.wait()
  assert driver_process(directory, args).wait(timeout=120) == 0
  names = assert_every_trial_once_to_the_end(directory, 5, 30)  # n_trials + fixed, every step once
  logs = [open(directory / name / 'log.txt').read() for name in names]
  assert sum(log.count('fake trainer: starting') for log in logs) == 5
  assert sum('fake trainer: resuming at step' in log for log in logs) >= 2


def test_the_sweep_command_exits_75_when_its_driver_was_stopped(tmp_path, monkeypatch):
  def stopped(*args, **kwargs):
    raise launcher.Interrupted('SIGTERM')

  monkeypatch.setattr(launcher, 'run', stopped)
  sweep_file = os.path.join(ROOT, 'experiments', 'default_sweep.py')
  assert sweep_command.main([sweep_file, f'--workdir={tmp_path}']) == 75


# --- PostgreSQL: several workers, one study -----------------------------------------------------------------------


@pytest.fixture(scope='module')
def postgresql():
  """A PostgreSQL server of the test's own: initdb + pg_ctl (Debian's packages), a Unix socket in a temporary
  folder and no TCP port; stopped afterwards. Run as the `postgres` user when the suite runs as root."""
  binaries = sorted(glob.glob('/usr/lib/postgresql/*/bin/pg_ctl'))
  if not binaries:
    pytest.fail('PostgreSQL is not installed (.ci/run installs it: apt-get install postgresql)')
  bindir = os.path.dirname(binaries[-1])
  base = tempfile.mkdtemp(prefix='pg', dir='/tmp')  # a short path: a socket's name has 107 bytes at most
  as_postgres = []
  if os.geteuid() == 0:
    shutil.chown(base, 'postgres')
    as_postgres = ['runuser', '-u', 'postgres', '--']
  data, log = os.path.join(base, 'data'), os.path.join(base, 'server.log')
  subprocess.run(
    [*as_postgres, f'{bindir}/initdb', '-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync'],
    check=True,
    capture_output=True,
  )
  options = f"-k {base} -c listen_addresses='' -c fsync=off -c max_connections=100"
  subprocess.run(
    [*as_postgres, f'{bindir}/pg_ctl', '-D', data, '-o', options, '-l', log, '-w', 'start'],
    check=True,
    capture_output=True,
  )
  try:
    yield f'postgresql://postgres@/postgres?host={base}'
  finally:
    subprocess.run([*as_postgres, f'{bindir}/pg_ctl', '-D', data, '-m', 'immediate', 'stop'], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def fresh_database(server_url, name):
  """A new, empty database on the test's server; its URL."""
  with psycopg.connect(server_url, autocommit=True) as connection:
    connection.execute(f'CREATE DATABASE {name}')
  return server_url.replace('@/postgres?', f'@/{name}?')


@pytest.mark.slow
def test_workers_starting_together_on_an_empty_database_all_open_it(postgresql):
  # They race to create Optuna's tables; the losers' CREATE fails and they try again (study.open_storage).
  url = fresh_database(postgresql, f'race{time.time_ns()}')
  start_at = time.time() + 8  # after every process has imported optuna
  code = (
    'import sys, time\n'
    'from isojax.sweeps import study\n'
    'time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n'
    'study.open_storage(sys.argv[1])\n'
  )
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')]))}
  workers = [
    subprocess.Popen([sys.executable, '-c', code, url, str(start_at)], env=env, stderr=subprocess.PIPE, text=True)
    for _ in range(8)
  ]
  outcomes = [(w.wait(timeout=120), w.stderr.read()[-800:]) for w in workers]
  assert [code for code, _ in outcomes] == [0] * 8, outcomes


@pytest.mark.slow
def test_two_workers_share_one_study_on_postgresql_and_run_every_trial_once(tmp_path, postgresql):
  directory = tmp_path / 'shared'
  args = dict(n_trials=6, steps=20, step_sec=0.1)
  workers = [driver_process(directory, args, storage=postgresql) for _ in range(2)]
  assert [w.wait(timeout=180) for w in workers] == [0, 0]
  names = assert_every_trial_once_to_the_end(directory, 8, 20)
  ran_by = {json.load(open(directory / name / 'launch.json'))['worker'] for name in names}
  assert len(ran_by) == 2  # both workers ran trials, concurrently
  assert json.load(open(directory / 'study.json'))['storage'].startswith('postgresql://postgres@/postgres')


@pytest.mark.slow
def test_live_workers_taken_for_dead_run_on_and_their_retries_take_the_results(tmp_path, postgresql):
  # A grace period half the heartbeat: for the second half of every beat each trial looks stale, so each worker
  # fails the other's running trials (as a worker stalled past the grace period would see) and every trial's
  # report and tell meet a trial ended elsewhere. (A grace as long as the beat left a window of one poll: flaky.)
  directory = tmp_path / 'taken_for_dead'
  args = dict(n_trials=2, steps=20, step_sec=0.15)
  workers = [driver_process(directory, args, storage=postgresql, heartbeat=2, grace=1) for _ in range(2)]
  assert [w.wait(timeout=180) for w in workers] == [0, 0]
  assert_every_trial_once_to_the_end(directory, 4, 20)
  logs = ''.join(open(log).read() for log in glob.glob(str(directory) + '.driver*.log'))
  assert 'was ended by another worker' in logs


@pytest.mark.slow
def test_a_killed_workers_trial_is_retried_by_the_other_from_its_checkpoint(tmp_path, postgresql):
  directory = tmp_path / 'shared_and_killed'
  args = dict(n_trials=1, steps=40, step_sec=0.05)
  doomed = driver_process(directory, args, storage=postgresql)
  wait_for(lambda: len(glob.glob(str(directory / '*' / 'checkpoint.json'))) >= 1)
  time.sleep(0.5)
  doomed.send_signal(signal.SIGKILL)  # its trial stays RUNNING in the study; its heartbeats stop
  doomed.wait()
  survivor = driver_process(directory, args, storage=postgresql)
  assert survivor.wait(timeout=180) == 0
  names = assert_every_trial_once_to_the_end(directory, 3, 40)
  logs = {name: open(directory / name / 'log.txt').read() for name in names}
  assert sum('resuming at step' in log for log in logs.values()) >= 1
  retried = [t for t in study_of(directory).get_trials() if 'failed_trial' in t.system_attrs]
  assert retried and all(t.state.name == 'COMPLETE' for t in retried)


def test_a_study_of_another_sweep_under_the_same_name_is_refused(tmp_path):
  run_fake(search_sweep(n_trials=1, steps=1), tmp_path / 'one')
  with pytest.raises(study_lib.StorageError, match='belongs to another sweep'):
    run_fake(search_sweep(n_trials=1, steps=1, metric='val/loss', direction='minimize'), tmp_path / 'one')


def test_the_sweep_command_refuses_a_journal_file_before_anything_runs(tmp_path, capsys):
  with pytest.raises(SystemExit) as refused:
    sweep_command.main(
      [os.path.join(ROOT, 'experiments', 'default_sweep.py'), f'--workdir={tmp_path}', '--storage=study.log']
    )
  assert refused.value.code == 2 and 'journal file' in capsys.readouterr().err
  assert not os.path.exists(tmp_path / 'optuna.db')


def test_shipped_sweep_files_keep_the_trials_they_had_before_the_study():
  # names and values of the launcher before Optuna (0.3.0), for the files that existed then
  default = sweeps.load(os.path.join(ROOT, 'experiments', 'default_sweep.py')).trials()
  assert [t.name for t in default] == [
    'kernel_size=3,lr=0.002',
    'kernel_size=3,lr=0.005',
    'kernel_size=5,lr=0.002',
    'kernel_size=5,lr=0.005',
  ]
  random_tail = [t.name for t in sweeps.load(os.path.join(ROOT, 'experiments', 'vit_lr_wd.py')).trials()][-3:]
  assert random_tail == [
    'lr=0.00383,weight_decay=0.0386',
    'lr=0.00137,weight_decay=0.598',
    'lr=0.000139,weight_decay=0.00183',
  ]
  study = sweeps.load(os.path.join(ROOT, 'experiments', 'isotropic_vs_pyramid.py')).trials()
  assert study[0].name == 'arg=ViT-128x4_4' and study[0].config == 'configs/digits32.py:ViT-128x4/4'


def test_each_parallel_slot_gets_its_own_gpus_or_tpu_chips(monkeypatch):
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0,1,2,3')
  assert launcher.accelerator_env(2) == [{'CUDA_VISIBLE_DEVICES': '0,1'}, {'CUDA_VISIBLE_DEVICES': '2,3'}]
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')
  monkeypatch.setattr(launcher, '_visible_gpus', lambda: [])
  monkeypatch.setenv('TPU_VISIBLE_CHIPS', '0,1,2,3')
  slots = launcher.accelerator_env(4)
  assert [s['TPU_VISIBLE_CHIPS'] for s in slots] == ['0', '1', '2', '3']
  assert {s['TPU_CHIPS_PER_PROCESS_BOUNDS'] for s in slots} == {'1,1,1'}
  assert len({s['TPU_MESH_CONTROLLER_PORT'] for s in slots}) == 4  # one runtime per process, each its own port
  assert launcher.accelerator_env(1) == [{}]


def test_print_commands_gives_the_worker_command_and_a_slurm_array(tmp_path, capsys):
  sweep_file = os.path.join(ROOT, 'experiments', 'default_search.py')
  url = 'postgresql://me@db.example/sweeps'
  assert sweep_command.main([sweep_file, f'--workdir={tmp_path}', f'--storage={url}', '--print_commands']) == 0
  out = capsys.readouterr().out
  worker = f'python -m isojax.sweep {sweep_file} --workdir={tmp_path} --storage={url}'
  assert out.count(worker) == 2 and '#SBATCH --array=0-7' in out and 'scontrol requeue' in out
  assert not os.path.exists(tmp_path / 'optuna.db')  # nothing ran


def test_a_search_range_that_no_config_accepts_fails_before_any_trial(tmp_path, capsys):
  sweep_file = tmp_path / 'bad_search.py'
  sweep_file.write_text(
    'from isojax.sweeps import Sweep, intuniform\n'
    f'def get_sweep():\n  return Sweep({os.path.join(ROOT, "configs", "default.py")!r}, [], '
    "search={'data.batch_size': intuniform(0, 64)}, n_trials=4)\n"
  )
  with pytest.raises(SystemExit) as refused:
    sweep_command.main([str(sweep_file), f'--workdir={tmp_path / "sweep"}', '--dry_run'])
  assert refused.value.code == 2 and 'trial batch_size=0: ' in capsys.readouterr().err


def test_a_sweep_directory_from_before_the_study_is_still_summarised_from_its_folders(tmp_path):
  subprocess.run([sys.executable, *FAKE, '--config=configs/default.py', f'--workdir={tmp_path / "lr=1"}'], check=True)
  trial = {'name': 'lr=1', 'config': 'configs/default.py', 'overrides': {}, 'swept': {'optimizer.lr': 1.0}}
  json.dump([trial], open(tmp_path / 'sweep.json', 'w'))  # what the launcher of 0.3.0 wrote
  table = results.write(str(tmp_path))
  assert [(r['trial'], r['status'], r['best_accuracy']) for r in table] == [('lr=1', 'done', 1.0)]
  assert '| lr=1 | done | 1 |' in open(tmp_path / 'results.md').read()


def test_a_metric_whose_evaluator_the_config_does_not_run_is_refused_before_any_trial(tmp_path, capsys):
  sweep_file = tmp_path / 'bad_metric.py'
  sweep_file.write_text(
    'from isojax.sweeps import Sweep\n'
    f'def get_sweep():\n  return Sweep({os.path.join(ROOT, "configs", "default.py")!r}, [{{}}],\n'
    "               metric='test/accuracy')\n"
  )
  with pytest.raises(SystemExit) as refused:
    sweep_command.main([str(sweep_file), f'--workdir={tmp_path / "sweep"}'])
  assert refused.value.code == 2 and "names evaluator 'test', but its config evaluates ['fewshot', 'val']" in (
    capsys.readouterr().err
  )
