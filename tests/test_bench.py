"""The benchmark command measures the real train step, inference and the input pipeline."""

import json
import os

import pytest

from isojax import bench
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


@pytest.mark.slow
def test_largest_batch_is_the_last_multiple_that_fits_the_memory_limit():
  bytes_at = lambda batch: benchmark.train_step_bytes('ConvMixer-32/2-k3-p2', batch, 8, num_classes=10)
  limit = bytes_at(16) + 1
  result = benchmark.largest_batch('ConvMixer-32/2-k3-p2', 8, num_classes=10, limit_bytes=limit)
  assert result['max_batch_per_device'] == 16 and result['step_bytes_at_max'] == limit - 1
  assert result['probes']['24'] > limit  # the next multiple of 8 does not fit
  assert result['max_global_batch'] == 16 * result['devices']
