"""benchmarks/input_side_by_side.py: its isojax rows are `isojax.bench --input`'s own measurement (one truth for
one pipeline), and its torch loaders run in a Python without JAX."""

import os
import re
import subprocess
import sys

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import input_side_by_side  # noqa: E402

from isojax.core import host_memory  # noqa: E402
from isojax.data import benchmark  # noqa: E402


def test_the_isojax_row_is_bench_input_with_the_set_overrides_its_docstring_gives(monkeypatch):
  calls = []

  def bench_input(config_path, steps, overrides, warmup):
    calls.append((config_path, steps, overrides, warmup))
    return {'images_per_sec': 123.0, 'first_batch_seconds': 1.5, 'image_batch_shape': [8, 1, 224, 224, 3]}

  monkeypatch.setattr(benchmark, 'bench_input', bench_input)
  monkeypatch.setattr(host_memory, 'keep_freed_memory', lambda: False)  # not this test process's malloc
  devices = jax.local_device_count()
  figures = input_side_by_side.worker('isojax', '/photos', devices, 8, batches=20, warmup=2, buffer=5000)
  assert calls == [(input_side_by_side.CONFIG, 20, input_side_by_side.isojax_overrides('/photos', 8, 5000), 2)]
  assert figures['images_per_sec'] == 123.0 and figures['batch_shape'] == [8, 1, 224, 224, 3]
  # The docstring's `isojax.bench --input` command names exactly these overrides.
  documented = dict(re.findall(r'--set=([\w.]+)=([\w./]+)', input_side_by_side.__doc__))
  expected = {'data.data_dir': 'FOLDER', 'batch_size': 'B', 'data.shuffle_buffer': '5000'}
  overrides = input_side_by_side.isojax_overrides('FOLDER', 'B', 5000)
  assert documented == {k: expected.get(k, str(v)) for k, v in overrides.items()}


def test_the_torch_loaders_side_imports_without_jax_tensorflow_or_ml_collections():
  blocked = "import sys\nfor name in ('jax', 'tensorflow', 'ml_collections', 'flax'):\n  sys.modules[name] = None\n"
  code = blocked + 'sys.path.insert(0, sys.argv[1])\nimport input_side_by_side\nprint(input_side_by_side.TORCH_LOADERS)'
  env = {**os.environ, 'PYTHONPATH': ROOT}
  out = subprocess.run(
    [sys.executable, '-c', code, os.path.join(ROOT, 'benchmarks')], env=env, capture_output=True, text=True
  )
  assert out.returncode == 0 and 'torchvision' in out.stdout, out.stderr[-2000:]
