"""The benchmark command measures the real train step, inference and the input pipeline."""

import json
import os

import pytest

from isojax import bench
from isojax.core import throughput
from isojax.training import benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_bench_command_prints_a_table_and_one_json_line_with_every_figure_the_issue_names(capsys):
  assert (
    bench.main(['--model=ConvMixer-256/8', '--batch_size=8', '--image_size=8', '--steps=2', '--num_classes=10']) == 0
  )
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[1].split()[:3] == ['images/s', 'ms/step', 'compile'] and lines[2].startswith('train')
  result = json.loads(lines[-1])
  assert result['model'] == 'ConvMixer-256/8'
  for kind in ('train', 'inference'):
    figures = result[kind]
    assert figures['images_per_sec'] > 0 and figures['ms_per_step'] > 0 and figures['compile_sec'] > 0
    assert figures['gflops_per_image'] > 0 and 0 < figures['mfu'] < 1.5
  # Training does forward + backward: roughly three times the inference FLOPs.
  assert 2.0 < result['train']['gflops_per_image'] / result['inference']['gflops_per_image'] < 4.5
  assert result['peak_memory_bytes'] > 0 and result['devices'] == 8


def test_bench_input_measures_the_pipeline_alone(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  result = bench.bench_input(os.path.join(ROOT, 'configs', 'default.py'), steps=3)
  assert result['images_per_sec'] > 0 and result['dataset'] == 'isojax_digits'
  assert result['images_per_batch'] == result['image_batch_shape'][0] * result['image_batch_shape'][1]
  assert (result['batches'], result['warmup']) == (3, throughput.WARMUP) and result['first_batch_seconds'] > 0


def test_a_stream_is_timed_over_its_steps_after_the_warmup_and_its_first_batch_apart(monkeypatch):
  clock = iter(range(100))  # every reading of the clock one second on
  monkeypatch.setattr(throughput.time, 'perf_counter', lambda: float(next(clock)))
  taken = []
  stream = iter(range(10))
  batches = (taken.append(b) or b for b in stream)
  timed = throughput.time_batches(batches, images_per_batch=32, steps=4, warmup=3)
  assert taken == list(range(7)) and timed['last_batch'] == 6  # 3 untimed, then 4 timed
  assert timed['first_batch_seconds'] == 1.0 and timed['images_per_sec'] == 4 * 32 / 1.0
  with pytest.raises(ValueError, match='warmup=0: time at least 1 batch after at least 1 untimed one'):
    throughput.time_batches(iter(range(3)), 8, steps=1, warmup=0)


@pytest.mark.slow
def test_largest_batch_is_the_last_multiple_that_fits_the_memory_limit():
  bytes_at = lambda batch: benchmark.train_step_bytes('ConvMixer-32/2-k3-p2', batch, 8, num_classes=10)
  limit = bytes_at(16) + 1
  result = benchmark.largest_batch('ConvMixer-32/2-k3-p2', 8, num_classes=10, limit_bytes=limit)
  assert result['max_batch_per_device'] == 16 and result['step_bytes_at_max'] == limit - 1
  assert result['probes']['24'] > limit  # the next multiple of 8 does not fit
  assert result['max_global_batch'] == 16 * result['devices']


@pytest.mark.slow
def test_bench_runs_pmap_and_jit_side_by_side_and_reports_what_each_device_holds(capsys):
  argv = ['--model=ConvMixer-64/2-k3-p4', '--batch_size=8', '--image_size=16', '--steps=2', '--num_classes=10']
  assert bench.main([*argv, '--parallelism=pmap,jit', '--mesh=fsdp:8']) == 0
  out = capsys.readouterr().out
  result = json.loads(out.strip().splitlines()[-1])
  pmap, jit = result['side_by_side']
  assert (pmap['parallelism'], jit['parallelism'], jit['mesh']) == ('pmap', 'jit', {'fsdp': 8})
  assert (
    result['ratio_to_first']['pmap'] == {'train': 1.0, 'inference': 1.0}
    and result['ratio_to_first']['jit']['train'] > 0
  )
  # pmap: a whole copy of the state on every device; fsdp:8 splits what the 1 MiB minimum lets it (the
  # ConvMixer's arrays are all smaller: the state stays whole, and the bytes say so)
  assert pmap['state_bytes_per_device'] == jit['state_bytes_per_device'] > 0
  assert pmap['train_step_memory_per_device']['argument_bytes'] >= pmap['state_bytes_per_device']
  assert 'pmap, on 8' in out and "jit on mesh {'fsdp': 8}" in out and 'held (addressable shards)' in out


@pytest.mark.slow
def test_the_largest_batch_on_a_mesh_counts_the_batch_per_shard_and_fsdp_fits_more():
  common = dict(name='ViT-384x2/8', image_size=16, num_classes=10, limit_bytes=None)
  one = benchmark.train_step_bytes('ViT-384x2/8', 8, 16, num_classes=10, mesh='data:8')
  split = benchmark.train_step_bytes('ViT-384x2/8', 8, 16, num_classes=10, mesh='fsdp:8')
  assert split < one
  # Searched in steps of 64 (four compiles; at 8 it took ten): the batch per shard is what is pinned here.
  result = benchmark.largest_batch(**{**common, 'limit_bytes': one}, mesh='data:4,model:2', granularity=64)
  assert result['mesh'] == {'data': 4, 'model': 2} and result['max_global_batch'] == 4 * result['max_batch_per_device']


@pytest.mark.slow
def test_a_scanned_model_is_credited_the_flops_of_every_block_not_the_loop_body_once(capsys):
  """XLA's cost analysis counts a while loop's body once; the bench counts a scanned model as its unrolled
  program, so FLOPs per image (and MFU) do not fall by the depth when the blocks are scanned."""
  argv = ['--model=ViT-64x4/8', '--batch_size=8', '--image_size=16', '--steps=1', '--num_classes=10']
  results = {}
  for flag in ('--noscan', '--scan'):
    assert bench.main([*argv, flag]) == 0
    results[flag] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  for kind in ('train', 'inference'):
    unrolled, scanned = (results[f][kind]['gflops_per_image'] for f in ('--noscan', '--scan'))
    assert scanned == pytest.approx(unrolled, rel=0.02), kind
  assert results['--scan']['scan'] is True
  compiled = benchmark.compile_train_step('ViT-64x4/8', 1, 16, num_classes=10, scan=True)
  assert compiled['flops'] < 0.6 * results['--noscan']['train']['gflops_per_image'] * 1e9  # the loop, counted once


def test_compile_only_times_tracing_and_compiling_the_step_without_running_it(capsys):
  argv = ['--model=ViT-64x4/8', '--compile_only', '--batch_size=8', '--image_size=16', '--num_classes=10']
  assert bench.main([*argv, '--scan', '--parallelism=jit', '--mesh=fsdp:8']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  result = json.loads(lines[-1])
  assert result['compile_only'] and result['scan'] and result['mesh'] == 'fsdp:8'
  assert result['lower_seconds'] > 0 and result['compile_seconds'] > 0 and result['memory']['argument_bytes'] > 0
  assert 'scanned blocks on mesh fsdp:8: traced and lowered in' in lines[-2]
