"""The main job end to end: real runs in subprocesses (marked slow) and errors raised before compiling."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import isojax
from isojax.core import loading
from isojax.core import workdir as workdir_lib
from isojax.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(ROOT, 'configs', 'default.py')
# A fast variant of the default run for behaviour tests: same pipeline, smaller model.
QUICK = [
  '--config.model.name=ConvMixer-64/2',
  '--config.num_steps=120',
  '--config.eval_every=40',
  '--config.checkpoint.every=40',
  '--config.log_every=20',
]


def env(devices, tfds_dir):
  return {
    **os.environ,
    'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
    'TFDS_DATA_DIR': str(tfds_dir),
    'PYTHONUNBUFFERED': '1',
    'JAX_PLATFORMS': 'cpu',
    'PYTHONPATH': os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])),
  }


def main_command(workdir, *flags, config=DEFAULT):
  return [sys.executable, '-m', 'isojax.main', f'--config={config}', f'--workdir={workdir}', *flags]


def records(workdir, split):
  return [m for m in workdir_lib.read_metrics(str(workdir)) if m['split'] == split]


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


@pytest.mark.slow
def test_default_config_reaches_97_percent_on_held_out_digits(tmp_path, tfds_dir):
  # How long it takes is a benchmark's figure (the README quotes it), not an assertion on a shared machine.
  out = subprocess.run(
    main_command(tmp_path / 'run'), env=env(1, tfds_dir), cwd=ROOT, capture_output=True, text=True, timeout=600
  )
  assert out.returncode == 0, out.stderr[-3000:]
  (summary,) = records(tmp_path / 'run', 'summary')
  assert summary['final_accuracy'] >= 0.97, summary
  assert 'done: best eval accuracy' in out.stderr and 'img/s' in out.stderr
  run = tmp_path / 'run'
  assert json.load(open(run / 'config.json'))['model']['name'] == 'ConvMixer-128/6'
  assert os.listdir(run / 'tensorboard') and os.listdir(run / 'checkpoints')


# SGD: linear in the gradient, so a different all-reduce order (gloo across processes vs XLA in
# one process) stays at float rounding; Adam would amplify it in near-zero gradients.
WORKER = """
import sys, numpy as np, jax
from isojax.training import loop
from isojax.core import loading
config = loading.load(sys.argv[1], {{'num_steps': 6, 'eval_every': 3, 'checkpoint.every': 3, 'log_every': 1,
    'batch_size': 32, 'eval_batch_size': 360, 'model.name': 'ConvMixer-32/2',
    'optimizer.name': 'sgd', 'optimizer.lr': 0.05{extra}}})
result = loop.train_and_evaluate(config, sys.argv[2])
leaves = jax.tree_util.tree_leaves(result.state.params)
np.savez(sys.argv[3], *leaves)
"""


def distributed_overrides(port, extra=''):
  """Config overrides (as WORKER's `extra`) joining process `sys.argv[4]` of 2 at localhost:`port` over gloo."""
  return (
    f", 'distributed.enabled': True, 'distributed.coordinator_address': 'localhost:{port}', "
    "'distributed.num_processes': 2, 'distributed.process_id': int(sys.argv[4]), "
    "'distributed.cpu_collectives': 'gloo'"
  ) + extra


def both_logs(outputs):
  """The ends of both processes' output: when one fails, the other's log says why (it usually just waited)."""
  return '\n'.join(
    f'--- process {i} {name}:\n{text[-2500:]}'
    for i, o in enumerate(outputs)
    for name, text in zip(('stdout', 'stderr'), o)
  )


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


# The jit path on fsdp:8 with every array split (the default 1 MiB minimum would leave this small model whole).
JIT_ON_FSDP8 = ", 'parallelism': 'jit', 'mesh': 'fsdp:8', 'sharding_strategy': (('.*', 'fsdp(min_size_mb=0)'),)"
# parallelism: (devices per process of two, devices of the one process, overrides)
TWO_PROCESS_RUNS = {'pmap': (2, 4, ''), 'jit': (4, 8, JIT_ON_FSDP8)}


def _train_in_processes(tmp_path, tfds_dir, parallelism):
  """(process 0's and process 1's outputs, after both finished) of WORKER joined over gloo, and one process with
  all their devices training the same config in tmp_path/'one'."""
  per_process, devices, extra = TWO_PROCESS_RUNS[parallelism]
  script, single = tmp_path / 'worker.py', tmp_path / 'single.py'
  script.write_text(WORKER.format(extra=distributed_overrides(free_port(), extra)))
  single.write_text(WORKER.format(extra=extra))
  workers = [
    subprocess.Popen(
      [sys.executable, str(script), DEFAULT, str(tmp_path / 'multi'), str(tmp_path / f'params{i}.npz'), str(i)],
      env=env(per_process, tfds_dir),
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [w.communicate(timeout=600) for w in workers]
  assert [w.returncode for w in workers] == [0, 0], both_logs(outputs)
  subprocess.run(
    [sys.executable, str(single), DEFAULT, str(tmp_path / 'one'), str(tmp_path / 'one.npz')],
    env=env(devices, tfds_dir),
    cwd=ROOT,
    check=True,
    capture_output=True,
    timeout=600,
  )
  return outputs


@pytest.mark.slow
@pytest.mark.parametrize('parallelism', TWO_PROCESS_RUNS)
def test_two_processes_train_like_one_process_with_the_same_devices(tmp_path, tfds_dir, parallelism):
  """pmap on 2 x 2 devices against one process with 4; the jit path on fsdp:8 over 2 x 4 against one with 8."""
  outputs = _train_in_processes(tmp_path, tfds_dir, parallelism)
  p0, p1, one = (np.load(tmp_path / f) for f in ('params0.npz', 'params1.npz', 'one.npz'))
  for key in p0.files:
    np.testing.assert_array_equal(p0[key], p1[key])  # the processes agree exactly
    np.testing.assert_allclose(p0[key], one[key], rtol=1e-5, atol=1e-6)  # and equal the one process
  losses = lambda run: [m['loss'] for m in records(tmp_path / run, 'train')]
  np.testing.assert_allclose(losses('multi'), losses('one'), rtol=1e-5)
  # Process 0 writes the records: one per logged step, and process 1 printed no progress.
  steps = [m['step'] for m in records(tmp_path / 'multi', 'train')]
  assert steps == sorted(set(steps)) == list(range(1, 7))
  assert 'step 6/6' in outputs[0][1] and 'step 6/6' not in outputs[1][1]
  # Each evaluation visits every held-out example once, its parts read by the two processes.
  evals = [m for m in records(tmp_path / 'multi', 'eval') if m.get('evaluator', 'val') == 'val']
  one_evals = [m for m in records(tmp_path / 'one', 'eval') if m.get('evaluator', 'val') == 'val']
  assert [m['num_examples'] for m in evals] == [m['num_examples'] for m in one_evals] == [360.0, 360.0]
  assert [m['accuracy'] for m in evals] == [m['accuracy'] for m in one_evals]
  # The jit path's save is every process's: each wrote its own shards; pmap's host copy is process 0's alone.
  saved = tmp_path / 'multi' / 'checkpoints' / '6' / 'default'
  assert (saved / 'ocdbt.process_0').is_dir()
  assert ((saved / 'ocdbt.process_1').is_dir() and bool(os.listdir(saved / 'ocdbt.process_1' / 'd'))) == (
    parallelism == 'jit'
  )
  # The checkpoint opens in this one process, equal to what the processes trained.
  _, variables, _ = isojax.load(str(tmp_path / 'multi'))
  for a, b in zip(jax.tree_util.tree_leaves(variables['params']), (p0[k] for k in p0.files)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_bad_command_line_overrides_fail_at_once_naming_the_field(tmp_path, tfds_dir):
  for flag, field in [('--config.optimizer.lrr=0.1', 'lrr'), ('--config.batch_size=big', 'batch_size')]:
    out = subprocess.run(
      main_command(tmp_path / 'run', flag), env=env(1, tfds_dir), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0 and field in out.stderr
    assert not (tmp_path / 'run' / 'checkpoints').exists()


def quick_config(tfds_dir, **overrides):
  base = {
    'num_steps': 4,
    'eval_every': 2,
    'checkpoint.every': 2,
    'log_every': 1,
    'batch_size': 16,
    'eval_batch_size': 368,
    'model.name': 'ConvMixer-16/1',
    'data.data_dir': str(tfds_dir),
  }
  return loading.load(DEFAULT, {**base, **overrides})


@pytest.mark.parametrize(
  'overrides,message',
  [
    ({'batch_size': 12}, r'batch_size=12 is not divisible by the 8 devices'),
    ({'model.name': 'ConvMixr-256/8'}, r"Unknown model 'ConvMixr-256/8'.*ConvMixer-256/8"),
    ({'data.name': 'mnistt'}, r"data.name='mnistt' is not a dataset"),
    ({'model.patch_size': 3}, r'Image size 8x8 is not divisible by patch_size=3'),
    ({'parallelism': 'jit', 'mesh': 'fsdp:4'}, r"mesh='fsdp:4' does not fit the 8 devices"),
    ({'parallelism': 'jax'}, r"parallelism='jax' \(one of \('pmap', 'jit'\)\)"),
    (
      {
        'parallelism': 'jit',
        'mesh': 'data:2,model:4',
        'sharding_strategy': (('.*/head/kernel', 'shard_dim(axis=model, dim=-1)'),),
      },
      r'shard_dim\(axis=model, dim=-1\) cannot shard params/head/kernel \(16, 10\): dimension 1 \(size 10\) is not '
      r'divisible by model:4',
    ),
  ],
)
def test_bad_configs_fail_before_compiling_with_an_actionable_message(tmp_path, tfds_dir, overrides, message):
  with pytest.raises(ValueError, match=message):
    loop.train_and_evaluate(quick_config(tfds_dir, **overrides), str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists() or not os.listdir(tmp_path / 'checkpoints')


@pytest.mark.slow
def test_a_diverging_run_stops_at_the_nan_step_without_writing_nan_checkpoints(tmp_path, tfds_dir):
  config = quick_config(
    tfds_dir,
    **{
      'optimizer.lr': 1e12,
      'optimizer.clip_norm': 0.0,
      'optimizer.warmup_steps': 0,
      'optimizer.schedule': 'constant',
      'num_steps': 8,
      'checkpoint.every': 1,
    },
  )
  with pytest.raises(FloatingPointError, match=r'Loss became (nan|inf) at step \d+; stopping'):
    loop.train_and_evaluate(config, str(tmp_path))
  from isojax.core import checkpoint

  ckpt = checkpoint.Checkpointer(workdir_lib.checkpoint_dir(str(tmp_path)), read_only=True)
  for step in ckpt.all_steps():
    _, state = ckpt.restore_raw(step)
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state) if np.asarray(x).dtype.kind == 'f')


@pytest.mark.slow
def test_cifar10_convmixer_config_runs_the_whole_pipeline_on_mock_data(tmp_path):
  config = loading.load(
    os.path.join(ROOT, 'configs', 'cifar10_convmixer.py'),
    {
      'num_steps': 2,
      'batch_size': 16,
      'eval_batch_size': 16,
      'eval_every': 2,
      'checkpoint.every': 2,
      'log_every': 1,
      'model.name': 'ConvMixer-16/1',
      'optimizer.warmup_fraction': 0.1,
      'data.data_dir': str(tmp_path / 'tfds'),
    },
  )
  config.mixup.cutmix_alpha = 1.0  # and the batch-level augmentations too
  config.mixup.mixup_alpha = 0.8
  with tfds.testing.mock_data(num_examples=16):
    result = loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert result.summary['steps'] == 2 and 0.0 <= result.summary['final_accuracy'] <= 1.0
  assert [m['step'] for m in records(tmp_path / 'run', 'train')] == [1, 2]
  assert records(tmp_path / 'run', 'eval')[0]['num_examples'] > 0


LOAD_ON_ONE_DEVICE = """
import sys, jax, numpy as np, isojax
assert jax.device_count() == 1
model, variables, config = isojax.load(sys.argv[1], ema=False)
np.savez(sys.argv[2], *jax.tree_util.tree_leaves(variables['params']))
"""


@pytest.mark.slow
def test_a_jit_run_with_sharded_state_trains_like_the_pmap_run_and_each_resumes_the_others_checkpoints(
  tmp_path, tfds_dir
):
  # ConvMixer's BatchNorm: pmap syncs it across the 8 devices, the jit path normalises the global batch
  sharded = {'parallelism': 'jit', 'mesh': 'data:2,fsdp:4', 'sharding_strategy': (('.*', 'fsdp(min_size_mb=0)'),)}
  pmap_run, jit_run = tmp_path / 'pmap', tmp_path / 'jit'
  loop.train_and_evaluate(quick_config(tfds_dir), str(pmap_run))
  trained = loop.train_and_evaluate(quick_config(tfds_dir, **sharded), str(jit_run)).state
  losses = lambda workdir: [r['loss'] for r in records(workdir, 'train')]
  np.testing.assert_allclose(losses(jit_run), losses(pmap_run), rtol=1e-5)
  assert len(losses(pmap_run)) == 4
  # the sharded checkpoint opens with isojax.load in a process with one device, bitwise the trained parameters
  out = tmp_path / 'loaded.npz'
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1', 'JAX_PLATFORMS': 'cpu'}
  subprocess.run([sys.executable, '-c', LOAD_ON_ONE_DEVICE, str(jit_run), str(out)], env=env, check=True)
  loaded = np.load(out)
  for i, want in enumerate(jax.tree_util.tree_leaves(trained.params)):
    np.testing.assert_array_equal(loaded[f'arr_{i}'], want)
  # each resumes the other's last checkpoint and trains on to the same place
  loop.train_and_evaluate(quick_config(tfds_dir, num_steps=6, **sharded), str(pmap_run))
  loop.train_and_evaluate(quick_config(tfds_dir, num_steps=6), str(jit_run))
  np.testing.assert_allclose(losses(jit_run), losses(pmap_run), rtol=1e-5)
  assert len(losses(pmap_run)) == 6
