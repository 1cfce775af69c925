"""Test-wide setup: several CPU devices for pmap tests, quiet TensorFlow, no GPU grabbing by TF, and one JAX
compilation cache for the subprocesses the tests start."""

import os
import shutil
import tempfile

import jax

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')  # tf.data must never take the accelerator
# TensorFlow imports Keras 3's optimizers while it imports (for SavedModel's registry: 1.5-3 s a process, with
# scikit-learn), in every test process and subprocess. isojax runs tf.data and never tf.keras; this flag points
# that import at tf_keras, which is not installed, so TF skips it (a test that reached tf.keras would fail).
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

# Most tests compile a step some earlier test or process compiled (the default run, the fault tests' QUICK run,
# test_sharding's meshes): JAX's persistent cache (`jax_compilation_cache_dir`) lets them load it instead, one
# temporary folder made by the first process (the xdist controller), inherited by the workers and every
# subprocess through the environment, and set here too for this process (jax read the variable at import, before
# it existed). A cache hit still emits `/jax/core/compile/backend_compile_duration` (jax/_src/interpreters/pxla.py
# times `compile_or_get_cached` under it), so test_sharding's compile-once guard counts hits and misses alike.
_CACHE_OWNER = 'JAX_COMPILATION_CACHE_DIR' not in os.environ
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='isojax-tests-compilation-cache-'))
jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
# The suite's programs are small: most compile in under the cache's 1 s floor, and so were compiled again in every
# process. With no floor, each is compiled once for the whole suite.
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


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


def pytest_unconfigure(config):
  if _CACHE_OWNER and not hasattr(config, 'workerinput'):  # the process that made the folder removes it
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
