"""Faults a long run meets, and what isojax does about each (the README's fault table)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from isojax.core import checkpoint, loading, sharding, validation
from isojax.core import workdir as workdir_lib
from isojax.training import preemption
from isojax.weights import runs, torchfile
from tests.weight_fuzz import crafted_torch_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- config values --------------------------------------------------------------------------------


@pytest.mark.parametrize(
  'field,value,message',
  [
    ('optimizer.lr', -1e-3, r'optimizer.lr=-0.001 \(a finite learning rate > 0\)'),
    ('label_smoothing', 2.0, r'label_smoothing=2.0 \(in \[0, 1\)\)'),
    ('eval_every', 0, r'eval_every=0 \(an integer >= 1'),
    ('checkpoint.every', 0, r'checkpoint.every=0 \(an integer >= 1'),
    ('log_every', 0, r'log_every=0 \(an integer >= 1'),
    ('batch_size', 0, r'batch_size=0 \(an integer >= 1\)'),
    ('data.image_size', 0, r'data.image_size=0 \(an integer >= 1 \(pixels\)\)'),
    ('dtype', 'float61', r"dtype='float61' \(one of \('float32', 'bfloat16', 'float16'\)\)"),
    ('num_epochs', 0.0, r'num_epochs=0.0 \(> 0, or set num_steps >= 1\)'),
    ('num_steps', -5, r'num_steps=-5 \(an integer >= 0'),
  ],
)
def test_values_that_cannot_be_right_are_refused_naming_the_field(field, value, message):
  config = loading.load(os.path.join(ROOT, 'configs', 'default.py'))
  loading.override(config, field, value)
  with pytest.raises(ValueError, match=message):
    validation.validate(config)


def test_an_unknown_field_is_one_short_error_naming_the_fields_that_exist():
  with pytest.raises(ValueError, match=r"Config has no field 'optimizer.learning_rate'; fields there: \["):
    loading.load(os.path.join(ROOT, 'configs', 'default.py'), {'optimizer.learning_rate': 1e-3})


def test_the_shipped_configs_are_valid():
  for name in sorted(os.listdir(os.path.join(ROOT, 'configs'))):
    if name.endswith('.py') and not name.startswith('_'):
      validation.validate(loading.load(os.path.join(ROOT, 'configs', name)))


# --- checkpoints ----------------------------------------------------------------------------------


def weights(step):
  return np.random.RandomState(step).normal(size=(512, 512)).astype(np.float32)  # 1 MB that does not compress


def saved_checkpoints(directory, sharded=False):
  """Steps 1 and 2 as host arrays (pmap's checkpoints) or as arrays split over the devices (the jit path's)."""
  ckpt = checkpoint.Checkpointer(str(directory), keep=3, async_save=False)
  over_devices = NamedSharding(sharding.make_mesh('fsdp:-1'), PartitionSpec('fsdp'))
  for step in (1, 2):
    ckpt.save(step, {'params': {'w': jax.device_put(weights(step), over_devices) if sharded else weights(step)}})
  ckpt.wait()
  ckpt.close()


def _largest_data_file(step_dir):
  files = [
    os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs if os.sep + 'd' + os.sep in os.path.join(d, f)
  ]
  return max(files, key=os.path.getsize)


CORRUPTIONS = {
  'truncated data file': lambda step: (lambda f: open(f, 'r+b').truncate(os.path.getsize(f) // 2))(
    _largest_data_file(step)
  ),
  'deleted data file': lambda step: os.remove(_largest_data_file(step)),
  'empty step folder': lambda step: [__import__('shutil').rmtree(step), os.makedirs(step)],
  'missing default/': lambda step: __import__('shutil').rmtree(os.path.join(step, 'default')),
}


@pytest.mark.parametrize('sharded', [False, True], ids=['host', 'sharded'])
@pytest.mark.parametrize('corruption', sorted(CORRUPTIONS))
def test_a_corrupt_latest_checkpoint_falls_back_to_the_newest_readable_one(tmp_path, corruption, sharded):
  saved_checkpoints(tmp_path / 'ckpt', sharded)
  CORRUPTIONS[corruption](str(tmp_path / 'ckpt' / '2'))
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), read_only=True)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    step, state = ckpt.restore_raw()
  assert step == 1
  np.testing.assert_array_equal(state['params']['w'], weights(1))
  messages = [str(w.message) for w in caught if 'unreadable' in str(w.message)]
  assert len(messages) == 1 and messages[0].startswith(f'Checkpoint step 2 in {tmp_path / "ckpt"} is unreadable (')


def test_when_no_checkpoint_is_readable_the_error_names_the_directory_and_each_step(tmp_path):
  saved_checkpoints(tmp_path / 'ckpt')
  for step in ('1', '2'):
    CORRUPTIONS['missing default/'](str(tmp_path / 'ckpt' / step))
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    with pytest.raises(RuntimeError, match=r'No readable checkpoint in .*ckpt:\n  step 2: .*\n  step 1: '):
      checkpoint.Checkpointer(str(tmp_path / 'ckpt'), read_only=True).restore_raw()


_WRITE_LIMITED = """
import resource, signal, sys, numpy as np
from isojax.core import checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)           # an over-size write fails with EFBIG, as on a full disk
ckpt = checkpoint.Checkpointer(sys.argv[1], keep=3)
ckpt.save(1, {'w': np.ones(1000, np.float32)})
ckpt.wait()
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
ckpt.save(2, {'w': np.random.RandomState(0).normal(size=1_000_000).astype(np.float32)})   # 4 MB
import time
for step in range(3, 200):
  time.sleep(0.05)
  try:
    ckpt.check_for_errors()                           # what the train loop calls after every step
  except OSError as e:
    print('STOPPED AT', step, '|', e)
    break
"""


def test_a_failed_background_save_stops_the_run_at_the_next_check_naming_the_path(tmp_path):
  out = subprocess.run(
    [sys.executable, '-c', _WRITE_LIMITED, str(tmp_path / 'ckpt')],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
    env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'},
  )
  line = next((l for l in out.stdout.splitlines() if l.startswith('STOPPED AT')), None)
  assert line is not None, out.stdout[-2000:] + out.stderr[-2000:]
  assert f'Saving the checkpoint of step 2 to {tmp_path / "ckpt"} failed' in line
  assert 'It needs about 4,000,000 bytes' in line and 'Earlier checkpoints are intact ([1])' in line
  assert int(line.split()[2]) < 100  # seconds of steps, not the next save
  assert sorted(os.listdir(tmp_path / 'ckpt')) == ['1']  # no orphaned temporary folder


# --- one writer per workdir -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_is_refused_naming_the_first(tmp_path):
  with workdir_lib.exclusive(str(tmp_path)):  # this process plays the first run
    out = subprocess.run(
      [sys.executable, '-m', 'isojax.main', '--config=configs/default.py', f'--workdir={tmp_path}'],
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=300,
    )
  assert out.returncode != 0
  assert f'is in use by another run ({{"host": "{os.uname().nodename}", "pid": {os.getpid()}' in out.stderr


def test_a_lock_left_by_a_dead_run_is_taken_over_with_a_warning(tmp_path):
  (tmp_path / workdir_lib.LOCK).write_text('{"host": "gone", "pid": 1234, "since": "yesterday"}')
  with pytest.warns(UserWarning, match=r'Taking over the lock .* from a run that is gone \(.*"pid": 1234'):
    with workdir_lib.exclusive(str(tmp_path)):
      pass
  assert (tmp_path / workdir_lib.LOCK).read_text() == ''  # a clean exit leaves no holder


# --- results --------------------------------------------------------------------------------------


def test_metrics_after_the_resumed_checkpoint_are_dropped(tmp_path):
  lines = [
    {'step': 100, 'split': 'eval', 'accuracy': 0.5},
    {'step': 200, 'split': 'eval', 'accuracy': 1.0},
    {'step': 200, 'split': 'summary', 'best_accuracy': 1.0},
  ]
  (tmp_path / workdir_lib.METRICS).write_text(''.join(json.dumps(m) + '\n' for m in lines))
  assert workdir_lib.discard_metrics_after(str(tmp_path), 100) == 2
  assert workdir_lib.read_metrics(str(tmp_path)) == lines[:1]
  assert workdir_lib.discard_metrics_after(str(tmp_path), 0) == 1  # checkpoints deleted: nothing is this run's


def test_a_summary_without_top5_is_written(tmp_path):
  from isojax.training.metrics import MetricWriter

  writer = MetricWriter(str(tmp_path))
  writer.write(3, 'summary', {'best_accuracy': 0.5, 'final_top5': None, 'best_metric': 'val/accuracy'})
  writer.close()
  assert workdir_lib.summary(str(tmp_path))['final_top5'] is None


# --- weight files and runs ------------------------------------------------------------------------


@pytest.mark.parametrize(
  'numel,size,offset,message',
  [
    (16, (4, 4), 0, None),  # well formed
    (16, (64, 64), 0, r'shape \(64, 64\) .* reaches element 4095, but its storage holds 16'),
    (16, (4, 4), 8, r'reaches element 23, but its storage holds 16'),
  ],
)
def test_a_torch_file_declaring_more_than_it_holds_is_refused_without_reading_past_it(
  tmp_path, numel, size, offset, message
):
  crafted_torch_file(tmp_path / 'w.pth', numel, size, offset)
  if message is None:
    np.testing.assert_array_equal(
      torchfile.read_torch(str(tmp_path / 'w.pth'))['w'], np.arange(16, dtype=np.float32).reshape(4, 4)
    )
    return
  with pytest.raises(ValueError, match=r'Cannot read .*w.pth.* ' + message):
    torchfile.read_torch(str(tmp_path / 'w.pth'))


def test_load_refuses_unknown_step_names_and_names_a_corrupt_config(tmp_path):
  with pytest.raises(ValueError, match=r"step='bset': expected a checkpoint step \(an int\), 'latest' or 'best'"):
    runs.load(str(tmp_path), step='bset')
  (tmp_path / 'config.json').write_text('{"model": ')
  with pytest.raises(ValueError, match=r'config.json is not valid JSON .*cut short'):
    runs.load(str(tmp_path))


# --- preemption -----------------------------------------------------------------------------------

from tests.test_main import QUICK, WORKER, both_logs, distributed_overrides, env, free_port, main_command, records  # noqa: E402


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


# The chaos test's training: QUICK for 240 steps, so that three mid-training moments still find a checkpoint
# before the last (at ~150 steps/s, 120 steps are gone before an asynchronous save is seen to be complete).
CHAOS_TRAINING = [*QUICK, '--config.num_steps=240']


@pytest.fixture(scope='module')
def unbroken_chaos_run(tmp_path_factory, digits_dir):
  workdir = tmp_path_factory.mktemp('unbroken')
  subprocess.run(
    main_command(workdir, *CHAOS_TRAINING),
    env=env(1, digits_dir),
    cwd=ROOT,
    check=True,
    capture_output=True,
    timeout=600,
  )
  return workdir


def wait_for(path, proc, timeout=300):
  deadline = time.time() + timeout
  while not os.path.exists(path) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_both_request_a_stop_named_after_them_and_handlers_are_restored(signum):
  # The end-to-end run below sends SIGTERM; Ctrl-C (SIGINT) takes the same handler, pinned here in-process.
  before = signal.getsignal(signum)
  with preemption.StopSignals() as stop:
    assert stop.requested(3) is None
    os.kill(os.getpid(), signum)
    assert stop.requested(4) == signum.name
  assert signal.getsignal(signum) is before


def test_a_signal_heard_before_the_loops_handler_is_honoured_by_it_and_one_it_heard_is_handed_back():
  from isojax.core import signals

  with signals.Recorder() as start_up:  # isojax.main's, installed before JAX and TensorFlow import
    os.kill(os.getpid(), signal.SIGTERM)
    with preemption.StopSignals() as loop:
      assert loop.requested(1) == 'SIGTERM'
      with pytest.raises(preemption.Preempted, match=r'^stopped on SIGTERM during start-up; run the same command'):
        loop.before_training(None)
      with pytest.raises(preemption.Preempted, match=r'^stopped on SIGTERM before step 41; run the same command'):
        loop.before_training(40)  # data prepared, checkpoint 40 restored, compiled: no step since
  assert start_up.received == 'SIGTERM'
  with signals.Recorder() as command:
    with preemption.StopSignals() as loop:
      assert loop.requested(1) is None
      loop.before_training(0)  # nothing heard: training goes on
      os.kill(os.getpid(), signal.SIGINT)
    assert command.received == 'SIGINT'  # isojax.main exits 75 even when the loop had just finished


@pytest.mark.slow
def test_sigterm_during_start_up_exits_75_before_training_with_nothing_written(tmp_path, digits_dir):
  proc = subprocess.Popen(
    main_command(tmp_path, *QUICK), env=env(1, digits_dir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
  )
  time.sleep(1.0)  # JAX and TensorFlow are still importing
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == preemption.EXIT_CODE, err.decode()[-3000:]
  assert 'stopped on SIGTERM during start-up; run the same command to resume' in err.decode()
  assert not os.path.exists(tmp_path / 'checkpoints') or not os.listdir(tmp_path / 'checkpoints')


def latest_checkpoint(workdir):
  folder = os.path.join(workdir, 'checkpoints')
  steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
  return max(steps, default=0)


def interrupted(command, environment, workdir, moment, signum):
  """Runs `command` and sends `signum` at `moment`: ('after', seconds from the start) or ('checkpoint', seconds
  after a checkpoint newer than the one it resumes from is complete). (return code, stderr)."""
  kind, delay = moment
  resumed_from = latest_checkpoint(workdir)
  proc = subprocess.Popen(command, env=environment, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  if kind == 'checkpoint':
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
      step = latest_checkpoint(workdir)
      if step > resumed_from and os.path.exists(
        os.path.join(workdir, 'checkpoints', str(step), '_CHECKPOINT_METADATA')
      ):
        break
      time.sleep(0.02)
  try:
    proc.wait(timeout=delay)
  except subprocess.TimeoutExpired:
    proc.send_signal(signum)
  _, err = proc.communicate(timeout=300)
  return proc.returncode, err.decode()


# The moments of the chaos test: start-up (JAX and TensorFlow importing), right after a checkpoint and while the
# next steps, evaluations and saves run, and seeded times from data preparation to the summary.
_rng = np.random.default_rng(0)
CHAOS = [
  (('after', 0.5), signal.SIGKILL),
  (('after', 1.0), signal.SIGTERM),
  (('after', float(_rng.uniform(3, 15))), signal.SIGKILL),  # imports, data preparation, restoring, compiling
  (('after', float(_rng.uniform(3, 15))), signal.SIGTERM),
  (('checkpoint', 0.0), signal.SIGKILL),  # killed mid-training: resumes from that checkpoint
  (('checkpoint', 0.3), signal.SIGTERM),  # mid-training: the step it is on is saved
  (('checkpoint', float(_rng.uniform(0, 0.5))), signal.SIGKILL),  # a step, an evaluation or a save in flight
]


@pytest.mark.slow
def test_a_run_stopped_at_seeded_moments_by_sigkill_and_sigterm_ends_with_the_unbroken_result(
  tmp_path, digits_dir, unbroken_chaos_run
):
  command = main_command(tmp_path, *CHAOS_TRAINING, '--config.checkpoint.every=20')  # the same training, more saves
  outcomes = []
  for moment, signum in CHAOS:
    before = latest_checkpoint(tmp_path)
    code, err = interrupted(command, env(1, digits_dir), tmp_path, moment, signum)
    outcomes.append((moment, signum.name, code, before, latest_checkpoint(tmp_path)))
    assert code == (preemption.EXIT_CODE if signum == signal.SIGTERM else -signal.SIGKILL), (outcomes, err[-3000:])
    assert not records(tmp_path, 'summary'), outcomes  # stopped before the run ended
    if 'during start-up' in err:  # a SIGTERM before the restore (the cache makes it quick): nothing written
      assert latest_checkpoint(tmp_path) == before, outcomes
    elif before:
      assert f'resuming at step {before}' in err, err[-3000:]
    stopped = re.search(r'stopped at step (\d+) on SIGTERM; checkpoint saved; run the same command to resume', err)
    if moment == ('checkpoint', 0.3):
      assert stopped, err[-3000:]
    if stopped:  # SIGTERM mid-training: the step it was on is the newest checkpoint
      assert latest_checkpoint(tmp_path) == int(stopped.group(1)), outcomes
  assert [o[4] > o[3] for o in outcomes if o[0][0] == 'checkpoint'] == [True] * 3, outcomes  # mid-training
  final = subprocess.run(command, env=env(1, digits_dir), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert final.returncode == 0, final.stderr[-3000:]
  print('moment, signal, exit code, checkpoint before and after:', outcomes)
  (a,), (b,) = records(unbroken_chaos_run, 'summary'), records(tmp_path, 'summary')
  assert b['final_accuracy'] == a['final_accuracy'], outcomes
  assert b['final_loss'] == pytest.approx(a['final_loss'], rel=1e-6), outcomes
  keys = [(m['step'], m['split'], m.get('evaluator')) for m in workdir_lib.read_metrics(str(tmp_path))]
  assert len(keys) == len(set(keys)), 'a step was logged twice'


JIT = [
  '--config.parallelism=jit',
  '--config.mesh=fsdp:4',
  "--config.sharding_strategy=(('.*', 'fsdp(min_size_mb=0)'),)",
]


@pytest.mark.slow
def test_a_jit_run_on_fsdp4_stopped_by_sigterm_and_sigkill_ends_with_its_unbroken_result(tmp_path, digits_dir):
  """The fault table on the jit path: its checkpoints are the sharded arrays, written shard by shard."""
  unbroken, broken = tmp_path / 'unbroken', tmp_path / 'broken'
  subprocess.run(
    main_command(unbroken, *QUICK, *JIT), env=env(4, digits_dir), cwd=ROOT, check=True, capture_output=True
  )
  command = main_command(broken, *QUICK, *JIT)
  code, err = interrupted(command, env(4, digits_dir), broken, ('checkpoint', 0.3), signal.SIGTERM)
  stopped = re.search(r'stopped at step (\d+) on SIGTERM; checkpoint saved', err)
  assert code == preemption.EXIT_CODE and stopped, err[-3000:]
  assert latest_checkpoint(broken) == int(stopped.group(1))
  code, err = interrupted(command, env(4, digits_dir), broken, ('checkpoint', 0.0), signal.SIGKILL)
  assert code == -signal.SIGKILL and f'resuming at step {stopped.group(1)}' in err, err[-3000:]
  final = subprocess.run(command, env=env(4, digits_dir), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert final.returncode == 0, final.stderr[-3000:]
  (a,), (b,) = records(unbroken, 'summary'), records(broken, 'summary')
  assert b['final_accuracy'] == a['final_accuracy'] and b['final_loss'] == pytest.approx(a['final_loss'], rel=1e-6)


JIT_ACROSS_PROCESSES = ", 'parallelism': 'jit', 'mesh': 'fsdp:4', 'sharding_strategy': (('.*', 'fsdp(min_size_mb=0)'),)"


@pytest.mark.slow
@pytest.mark.parametrize('parallelism', ['pmap', 'jit'])
def test_two_processes_stop_at_the_same_step_when_one_of_them_gets_sigterm(tmp_path, digits_dir, parallelism):
  """2 processes x 2 devices, pmap or the jit path on fsdp:4: both stop at one step, and both save it; on the jit
  path the two then resume from that step's shards and finish."""
  port = free_port()
  script = tmp_path / 'worker.py'
  on = JIT_ACROSS_PROCESSES if parallelism == 'jit' else ''
  distributed = distributed_overrides(port, ", 'num_steps': 60, 'checkpoint.every': 30, 'eval_every': 30" + on)
  script.write_text(
    'import sys\nfrom isojax.training import preemption\ntry:\n'
    + ''.join('  ' + line + '\n' for line in WORKER.format(extra=distributed).strip().splitlines())
    + 'except preemption.Preempted as e:\n  print("STOPPED", e.step, flush=True)\n'
    '  sys.exit(preemption.EXIT_CODE)\n'
  )
  workers = [
    subprocess.Popen(
      [
        sys.executable,
        str(script),
        os.path.join(ROOT, 'configs', 'default.py'),
        str(tmp_path / 'run'),
        str(tmp_path / f'p{i}.npz'),
        str(i),
      ],
      env=env(2, digits_dir),
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  deadline = time.time() + 300
  while not [m for m in records(tmp_path / 'run', 'train') if m['step'] >= 5] and time.time() < deadline:
    time.sleep(0.05)
  workers[1].send_signal(signal.SIGTERM)  # only process 1 is told
  outputs = [w.communicate(timeout=300) for w in workers]
  assert [w.returncode for w in workers] == [preemption.EXIT_CODE] * 2, both_logs(outputs)
  steps = [int(re.search(r'STOPPED (\d+)', out).group(1)) for out, _ in outputs]
  assert steps[0] == steps[1] < 60
  assert checkpoint.Checkpointer(str(tmp_path / 'run' / 'checkpoints'), read_only=True).latest_step() == steps[0]
  if parallelism == 'jit':  # the same command on both resumes from the shards each process wrote, together
    workers = [
      subprocess.Popen(
        w.args, env=env(2, digits_dir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
      )
      for w in workers
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], both_logs(outputs)
    assert f'resuming at step {steps[0]}' in outputs[0][1], outputs[0][1][-3000:]
    (summary,) = records(tmp_path / 'run', 'summary')
    assert summary['steps'] == 60


# --- reading a run while it trains ---------------------------------------------------------------


def digest(tree):
  return [x.tobytes() for x in jax_leaves(tree)]


@pytest.mark.slow
def test_a_run_read_while_it_trains_shows_complete_checkpoints_and_takes_no_lock(tmp_path, digits_dir):
  import isojax
  from isojax.weights import pretrained

  workdir = tmp_path / 'run'
  overrides = ['--config.checkpoint.every=10', '--config.checkpoint.keep=1']  # saves and deletions all along
  writer = subprocess.Popen(
    main_command(workdir, *QUICK, *overrides),
    env=env(1, digits_dir),
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  wait_for(workdir / 'checkpoints' / '10' / '_CHECKPOINT_METADATA', writer)
  seen: list = []
  evaluated = None
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    while writer.poll() is None:
      # the writer holds its run lock until its summary is written: the readers take none of their own
      assert workdir_lib.is_locked(str(workdir)) or workdir_lib.summary(str(workdir)) is not None
      step, saved = runs.restore_raw(str(workdir))
      _, variables, _ = isojax.load(str(workdir))
      _, created = pretrained.create(str(workdir))
      seen.append((step, digest(saved['params'])))
      assert all(np.isfinite(x).all() for x in jax_leaves(variables) + jax_leaves(created))
      if evaluated is None:  # the command line too, beside the reads (it takes a while to start)
        evaluated = subprocess.Popen(
          [sys.executable, '-m', 'isojax.evaluate', f'--workdir={workdir}', f'--out={tmp_path / "eval.json"}'],
          env=env(1, digits_dir),
          cwd=ROOT,
          stdout=subprocess.DEVNULL,
          stderr=subprocess.PIPE,
        )
  _, err = writer.communicate(timeout=300)
  assert writer.returncode == 0, err.decode()[-3000:]
  _, evaluate_err = evaluated.communicate(timeout=300)
  assert evaluated.returncode == 0, evaluate_err.decode()[-3000:]
  assert not [w for w in caught if 'unreadable' in str(w.message)], [str(w.message) for w in caught]
  steps = [step for step, _ in seen]
  print(f'{len(seen)} reads while training, of steps {steps}')
  assert len(seen) >= 3 and steps == sorted(steps), steps  # newer and newer, never a partial one
  final = checkpoint.Checkpointer(str(workdir / 'checkpoints'), read_only=True)
  for step, params in seen:  # what was read is what was saved at that step (where it is still kept)
    if step in final.all_steps():
      assert params == digest(final.restore_raw(step)[1]['params'])
  keys = [(m['step'], m['split'], m.get('evaluator')) for m in workdir_lib.read_metrics(str(workdir))]
  assert len(keys) == len(set(keys)) and records(workdir, 'summary')


def jax_leaves(tree):
  import jax

  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


# --- data -----------------------------------------------------------------------------------------

from tests.test_input_pipeline import batches, write_image_folder  # noqa: E402


def test_an_unreadable_image_fails_naming_its_path_or_is_skipped_when_asked(tmp_path):
  from isojax import data

  write_image_folder(tmp_path)
  (tmp_path / 'train' / 'cat' / 'empty.png').write_bytes(b'')
  (tmp_path / 'train' / 'dog' / 'notes.jpg').write_text('not an image')
  with pytest.raises(
    ValueError,
    match=r'2 unreadable image file\(s\) under .*: .*cat/empty.png \(an empty file\); '
    r'.*dog/notes.jpg \(UnidentifiedImageError.*set data.skip_bad_files=True',
  ):
    data.get_builder('image_folder', str(tmp_path))
  builder = data.get_builder('image_folder', str(tmp_path), skip_bad_files=True)
  (batch,) = batches(builder, 1, pp='resize(16)|normalize(imagenet)', image_size=16, per_device_batch=12)
  # the 12 good training images, none of the 2 bad ones
  assert batch['image'].shape == (1, 12, 16, 16, 3)


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
  from isojax import data

  write_image_folder(tmp_path)
  os.makedirs(tmp_path / 'train' / 'bird')
  with pytest.raises(ValueError, match=r'Class folder .*train/bird has no images'):
    data.get_builder('image_folder', str(tmp_path))


def test_an_image_of_another_size_fails_naming_the_file(tmp_path):
  import tensorflow as tf

  from isojax import data

  write_image_folder(tmp_path, size=(16, 16))
  odd = np.zeros((20, 16, 3), np.uint8)
  tf.io.write_file(str(tmp_path / 'test' / 'cat' / 'odd.png'), tf.image.encode_png(odd))
  builder = data.get_builder('image_folder', str(tmp_path))
  with pytest.raises(Exception, match=r'not 16x16 after preprocessing .*odd.png'):
    list(
      data.eval_batches(
        builder, split='test', pp='normalize(imagenet)', image_size=16, per_device_batch=13, cache=False
      )
    )


def test_grayscale_rgb_and_rgba_files_mix_in_one_folder(tmp_path):
  import tensorflow as tf

  from isojax import data

  write_image_folder(tmp_path)
  tf.io.write_file(str(tmp_path / 'train' / 'cat' / 'gray.png'), tf.image.encode_png(np.zeros((9, 9, 1), np.uint8)))
  tf.io.write_file(str(tmp_path / 'train' / 'dog' / 'rgba.png'), tf.image.encode_png(np.zeros((9, 9, 4), np.uint8)))
  builder = data.get_builder('image_folder', str(tmp_path))
  (batch,) = batches(builder, 1, pp='resize(16)|normalize(imagenet)', image_size=16, per_device_batch=14)
  assert batch['image'].shape == (1, 14, 16, 16, 3)


# --- weight files that do not fit -----------------------------------------------------------------


def official_vit_file(tmp_path, depth=2, heads=4):
  import flax
  import jax
  import jax.numpy as jnp
  import ml_collections

  from tests.reference import sources

  models_vit, _ = sources.vision_transformer()
  reference = models_vit.VisionTransformer(
    num_classes=10,
    patches=ml_collections.ConfigDict({'size': (4, 4)}),
    hidden_size=32,
    classifier='token',
    transformer=dict(num_layers=depth, mlp_dim=64, num_heads=heads, dropout_rate=0.0, attention_dropout_rate=0.0),
  )
  params = reference.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False)['params']
  path = str(tmp_path / 'vit.npz')
  np.savez(path, **{'/'.join(k): np.asarray(v) for k, v in flax.traverse_util.flatten_dict(params).items()})
  return path


@pytest.mark.parametrize(
  'name,message',
  [
    ('ViT-32x1/4-h4-m64', r"2 tensor\(s\)|tensor\(s\) in the weights are not used by the model: \['params/block_1/"),
    ('ViT-32x2/4-h2-m64', r'has 4 attention heads .* but the model has num_heads=2; build it with num_heads=4'),
    ('ViT-32x2/4-h8-m64', r'has 4 attention heads .* but the model has num_heads=8'),
    ('ViT-48x2/4-h4-m64', r"Pretrained 'params/[\w/]+' has shape \([\d, ]*32[\d, ]*\), but the model expects"),
  ],
)
@pytest.mark.slow
def test_a_weight_file_that_does_not_fit_the_model_names_what_differs(tmp_path, name, message):
  from isojax import models
  from isojax.weights import pretrained

  path = official_vit_file(tmp_path)
  with pytest.raises(ValueError, match=message):
    pretrained.load(path, models.create(name, 10), 16)


def test_a_sweep_with_an_impossible_value_fails_before_any_trial_starts(tmp_path, capsys):
  from isojax import sweep

  sweep_file = tmp_path / 'bad_sweep.py'
  sweep_file.write_text(
    'from isojax.sweeps import Sweep, product\n'
    f'def get_sweep():\n  return Sweep({os.path.join(ROOT, "configs", "default.py")!r}, '
    "product({'optimizer.lr': [1e-3, -1e-3]}))\n"
  )
  with pytest.raises(SystemExit):
    sweep.main([str(sweep_file), f'--workdir={tmp_path / "sweep"}'])
  assert 'trial lr=-0.001: Invalid config value(s): optimizer.lr=-0.001' in capsys.readouterr().err
  assert not os.path.exists(tmp_path / 'sweep')


@pytest.mark.slow
def test_best_and_final_come_from_this_runs_checkpoints_not_stale_metrics(tmp_path):
  import shutil

  from isojax.training import loop

  config = loading.load(
    os.path.join(ROOT, 'configs', 'default.py'),
    {
      'num_steps': 6,
      'eval_every': 3,
      'checkpoint.every': 3,
      'log_every': 3,
      'batch_size': 16,
      'eval_batch_size': 360,
      'model.name': 'ConvMixer-16/1',
      'data.data_dir': str(tmp_path / 'tfds'),
    },
  )
  with config.unlocked():
    config.evals.fewshot.shots = (1,)
  loop.train_and_evaluate(config, str(tmp_path / 'run'))
  shutil.rmtree(tmp_path / 'run' / 'checkpoints')
  config.optimizer.lr = 1e-7  # another run in the same workdir
  second = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  evals = workdir_lib.eval_records(workdir_lib.read_metrics(str(tmp_path / 'run')), 'val')
  assert [m['step'] for m in evals] == [3, 6]  # only this run's evaluations (the first run's are gone)
  assert second.summary['best_accuracy'] == max(m['accuracy'] for m in evals)
  assert len([m for m in workdir_lib.read_metrics(str(tmp_path / 'run')) if m['split'] == 'summary']) == 1
