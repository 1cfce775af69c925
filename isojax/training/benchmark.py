"""Speed and memory of the training step and of inference, exactly as `isojax.main` runs them.

`bench_model` times the pmapped train step and a pmapped forward pass (medians of repeated calls, compile time
apart) and reads the FLOPs from XLA's cost analysis of the compiled step; model-FLOPs utilisation is against
the device's peak: on CPU a float32 matrix product measured at start-up, on known accelerators their published
dense peak for the dtype. `largest_batch` finds the largest per-device batch whose training step fits the
device's memory from XLA's buffer assignment of the compiled step (the memory the step allocates), without
running it. The command line is `python -m isojax.bench`; the input pipeline's speed is isojax/data/benchmark.py.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from isojax import models
from isojax.core import config
from isojax.core import devices as device_placement
from isojax.training import optim, train_step

# Published dense peaks in FLOP/s by device kind (substring) and dtype.
PEAKS = {
  'H200': {'bfloat16': 989e12, 'float32': 67e12},
  'H100': {'bfloat16': 989e12, 'float32': 67e12},
  'A100': {'bfloat16': 312e12, 'float32': 19.5e12},
  'TPU v5p': {'bfloat16': 459e12},
  'TPU v5 lite': {'bfloat16': 197e12},
  'TPU v4': {'bfloat16': 275e12},
}


def median_seconds(fn: Callable[[], object], steps: int) -> float:
  """Median wall time of `steps` calls of `fn`, each waited on until its results are ready."""
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def device_peak(dtype: str) -> tuple[float, str]:
  """(peak FLOP/s, where the figure comes from) for the first local device."""
  device = jax.local_devices()[0]
  for kind, peaks in PEAKS.items():
    if kind.lower() in device.device_kind.lower() and dtype in peaks:
      return peaks[dtype], f'published {kind} {dtype} peak'
  n = 2048
  a = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  jax.block_until_ready(matmul(a))
  seconds = median_seconds(lambda: matmul(a), 10)
  return 2 * n**3 / seconds, f'measured {n}x{n} float32 matmul on {device.device_kind}'


def _flops(compiled) -> Optional[float]:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis['flops']) if analysis and 'flops' in analysis else None


def _peak_memory() -> tuple[Optional[int], str]:
  stats = jax.local_devices()[0].memory_stats()
  if stats and 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device peak'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'host max RSS'


def _timed(fn: Any, args: tuple, steps: int, keep_first_output: bool = False) -> tuple[float, float, Any, tuple]:
  """(median seconds per call, compile seconds, FLOPs per device, the last call's arguments) of `fn(*args)`.
  With `keep_first_output`, `fn` returns (state, metrics) and each call takes the state the previous one
  returned (a train step that donates its state)."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_seconds = time.perf_counter() - start
  holder = {'args': args}

  def call():
    out = fn(*holder['args'])
    if keep_first_output:
      holder['args'] = (out[0], *holder['args'][1:])
      return out[1]
    return out

  jax.block_until_ready(call())  # the first call also places donated buffers
  return median_seconds(call, steps), compile_seconds, _flops(compiled), holder['args']


def _figures(
  seconds: float, flops: Optional[float], compile_seconds: float, batch_size: int, per_device: int, peak: float
) -> dict:
  per_image = flops / per_device if flops is not None else None
  achieved = flops / seconds if flops is not None else None  # per device
  return {
    'images_per_sec': batch_size / seconds,
    'ms_per_step': 1000 * seconds,
    'compile_sec': compile_seconds,
    'gflops_per_image': per_image / 1e9 if per_image else None,
    'achieved_tflops_per_device': achieved / 1e12 if achieved else None,
    'mfu': achieved / peak if achieved else None,
  }


def bench_model(
  name: str,
  batch_size: int,
  image_size: int,
  dtype: str = 'float32',
  steps: int = 10,
  num_classes: int = 1000,
  remat: bool = False,
  kernels: str = 'auto',
) -> dict:
  """Training step and inference timings for one model, under pmap over all local devices."""
  devices = jax.local_device_count()
  if batch_size % devices:
    raise ValueError(f'--batch_size {batch_size} is not divisible by the {devices} local devices.')
  model = models.build(name, num_classes, dtype=dtype, remat=remat, axis_name=train_step.AXIS, kernels=kernels)
  tx, lr = optim.create(config.base().optimizer, total_steps=1000)
  with jax.default_device(jax.local_devices(backend='cpu')[0]):  # as isojax.main: init on the host
    state = jax.jit(lambda rng: train_step.init_state(model, tx, rng, (image_size, image_size, 3), ema=False))(
      jax.random.PRNGKey(0)
    )
  per_device = batch_size // devices
  rng = np.random.RandomState(0)
  batch = device_placement.shard(
    {
      'image': rng.normal(size=(devices, per_device, image_size, image_size, 3)).astype(np.float32),
      'label': rng.randint(0, num_classes, (devices, per_device)).astype(np.int32),
    }
  )
  replicated = device_placement.replicate(jax.device_get(state))
  step = train_step.pmapped_train_step(model=model, tx=tx, learning_rate=lr, num_classes=num_classes)
  *train, (trained, _, _) = _timed(step, (replicated, batch, jax.random.PRNGKey(1)), steps, keep_first_output=True)
  infer = jax.pmap(lambda s, x: model.apply(s.variables(), x, train=False), axis_name=train_step.AXIS)
  *inference, _ = _timed(infer, (trained, batch['image']), steps)
  peak, peak_source = device_peak(dtype)
  memory, memory_source = _peak_memory()
  result: dict[str, Any] = {
    'model': models.lookup(name).name,
    'batch_size': batch_size,
    'image_size': image_size,
    'dtype': dtype,
    'kernels': kernels,
    'devices': devices,
    'device_kind': jax.local_devices()[0].device_kind,
    'peak_flops_per_device': peak,
    'peak_source': peak_source,
    'peak_memory_bytes': memory,
    'memory_source': memory_source,
  }
  for kind, (seconds, compile_seconds, flops) in (('train', train), ('inference', inference)):
    result[kind] = _figures(seconds, flops, compile_seconds, batch_size, per_device, peak)
  return result


def _available_memory() -> tuple[int, str]:
  """Bytes one device can hold: the accelerator's limit, or the host's available memory on CPU."""
  stats = jax.local_devices()[0].memory_stats()
  if stats and 'bytes_limit' in stats:
    return int(stats['bytes_limit']), 'device memory limit'
  with open('/proc/meminfo') as f:
    info = {line.split(':')[0]: int(line.split()[1]) * 1024 for line in f}
  return info['MemAvailable'] // jax.local_device_count(), 'available host memory'


def train_step_bytes(
  name: str,
  per_device_batch: int,
  image_size: int,
  dtype: str = 'float32',
  remat: bool = False,
  num_classes: int = 1000,
) -> int:
  """Memory XLA assigns to one device's training step: state, batch, temporaries and outputs."""
  model = models.build(name, num_classes, dtype=dtype, remat=remat, axis_name=None)
  tx, lr = optim.create(config.base().optimizer, total_steps=1000)
  state = jax.eval_shape(
    lambda rng: train_step.init_state(model, tx, rng, (image_size, image_size, 3), ema=False), jax.random.PRNGKey(0)
  )
  batch = {
    'image': jax.ShapeDtypeStruct((per_device_batch, image_size, image_size, 3), jnp.float32),
    'label': jax.ShapeDtypeStruct((per_device_batch,), jnp.int32),
  }
  step = jax.jit(
    lambda s, b, k: train_step.train_step(
      s, b, k, model=model, tx=tx, learning_rate=lr, num_classes=num_classes, axis_name=None
    ),
    donate_argnums=(0,),
  )
  memory = step.lower(state, batch, jax.random.PRNGKey(0)).compile().memory_analysis()
  if memory is None:
    raise RuntimeError(f'XLA gives no memory analysis of the compiled step on {jax.default_backend()}.')
  return int(
    memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes + memory.temp_size_in_bytes
  )


def largest_batch(
  name: str,
  image_size: int,
  dtype: str = 'float32',
  remat: bool = False,
  num_classes: int = 1000,
  granularity: int = 8,
  limit_bytes: Optional[int] = None,
) -> dict:
  """Largest per-device batch (a multiple of `granularity`) whose training step fits in memory.

  Doubles the batch until the step no longer fits, then bisects; each probe is one compile.
  """
  limit, source = (limit_bytes, 'given limit') if limit_bytes else _available_memory()
  probes = {}

  def fits(batch):
    probes[batch] = train_step_bytes(name, batch, image_size, dtype, remat, num_classes)
    return probes[batch] <= limit

  low, high = 0, granularity
  while fits(high):
    low, high = high, 2 * high
  while high - low > granularity:
    mid = (low + high) // 2 // granularity * granularity
    low, high = (mid, high) if fits(mid) else (low, mid)
  devices = jax.local_device_count()
  return {
    'model': models.lookup(name).name,
    'image_size': image_size,
    'dtype': dtype,
    'remat': remat,
    'max_batch_per_device': low,
    'max_global_batch': low * devices,
    'devices': devices,
    'step_bytes_at_max': probes.get(low),
    'limit_bytes': limit,
    'limit_source': source,
    'device_kind': jax.local_devices()[0].device_kind,
    'probes': {str(b): probes[b] for b in sorted(probes)},
  }
