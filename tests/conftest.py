"""Test-wide setup: several CPU devices for pmap tests, quiet TensorFlow, no GPU grabbing by TF."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')  # tf.data must never take the accelerator


def pytest_collection_modifyitems(items):
  """Slow end-to-end tests first (a stable sort): under `-n 2` they overlap one another and the quick
  tests fill in behind them, instead of a minute-long one running alone at the end."""
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)
