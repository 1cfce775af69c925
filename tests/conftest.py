"""Test-wide setup: several CPU devices for pmap tests, quiet TensorFlow, no GPU grabbing by TF."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')  # tf.data must never take the accelerator


# Modules whose slow tests are minute-long subprocess runs: they start first, so the short ones fill in around them.
LONGEST_FIRST = (
  'test_docs',
  'test_main',
  'test_sweeps',
  'test_sweep_study',
  'test_side_by_side',
  'test_faults',
  'test_notebook',
)


def _schedule(item) -> tuple[bool, int]:
  module = item.module.__name__.rsplit('.', 1)[-1] if item.module else ''
  rank = LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)
  return item.get_closest_marker('slow') is None, rank


def pytest_collection_modifyitems(items):
  """Slow end-to-end tests first, the longest of them first (a stable sort): under `-n 2` they overlap one another
  and the quick tests fill in behind them, instead of a minute-long one running alone at the end."""
  items.sort(key=_schedule)
