"""Speed and memory of the training step and of inference, exactly as `isojax.main` runs them.

`bench_model` times the train step and a forward pass (medians of repeated calls, compile time apart) under
pmap, or under jit on a mesh with the state in its shardings (`parallelism='jit'`, `mesh='fsdp:8'`), reads the
FLOPs from XLA's cost analysis of the compiled step and the memory it assigns each device from its memory
analysis, and counts the state each device holds from the arrays' addressable shards; `side_by_side` runs it
under several parallelisms in one process. Model-FLOPs utilisation is against the device's peak: on CPU a
float32 matrix product measured at start-up, on known accelerators their published dense peak for the dtype.
`largest_batch` finds the largest per-device batch whose training step fits the device's memory from XLA's
buffer assignment of the compiled step (the memory the step allocates), without running it, on a mesh too;
`compile_train_step` times tracing and compiling the step alone (scanned blocks against unrolled ones).
The command line is `python -m isojax.bench`; the input pipeline's speed is isojax/data/benchmark.py.
"""

from __future__ import annotations

import functools
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from isojax import models
from isojax.core import config, sharding
from isojax.training import optim, placement, train_step

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


def _timed(fn: Any, args: tuple, steps: int, keep_first_output: bool = False) -> tuple:
  """(median seconds per call, compile seconds, FLOPs per device, the last call's arguments, the compiled
  program's memory per device) of `fn(*args)`. With `keep_first_output`, `fn` returns (state, metrics) and each
  call takes the state the previous one returned (a train step that donates its state)."""
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
  return median_seconds(call, steps), compile_seconds, _flops(compiled), holder['args'], _memory(compiled)


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


def _placed(name, batch_size, image_size, dtype, num_classes, remat, kernels, parallelism, mesh, scan) -> tuple:
  """(model, placement, placed state, placed batch, step function) as isojax.main builds them for `parallelism`:
  pmap's replicated state, or the jit path's state created in its shardings on `mesh` (default rules)."""
  devices = jax.local_device_count()
  if batch_size % devices:
    raise ValueError(f'--batch_size {batch_size} is not divisible by the {devices} local devices.')
  jit = parallelism == 'jit'
  axis = None if jit else train_step.AXIS
  model = models.build(name, num_classes, _scanned(scan), dtype=dtype, remat=remat, axis_name=axis, kernels=kernels)
  tx, lr = optim.create(config.base().optimizer, total_steps=1000)
  image_shape = (image_size, image_size, 3)
  where = placement.on_mesh(sharding.make_mesh(mesh), model, tx, image_shape) if jit else placement.Placement()
  init = functools.partial(train_step.init_state, model, tx, image_shape=image_shape, ema=False)
  state = where.place(where.fresh(init, jax.random.PRNGKey(0)))  # as isojax.main: pmap's on the host first
  rng = np.random.RandomState(0)
  batch = where.batch(
    {
      'image': rng.normal(size=(devices, batch_size // devices, *image_shape)).astype(np.float32),
      'label': rng.randint(0, num_classes, (devices, batch_size // devices)).astype(np.int32),
    }
  )
  step = where.step_function(model=model, tx=tx, learning_rate=lr, options=train_step.StepOptions(num_classes))
  return model, where, state, batch, step


def _memory(compiled) -> dict:
  """What XLA assigns one device for a compiled program (`memory_analysis`), in bytes."""
  memory = compiled.memory_analysis()
  fields = ('argument', 'output', 'alias', 'temp')
  return {f'{f}_bytes': int(getattr(memory, f'{f}_size_in_bytes')) for f in fields} if memory else {}


def bench_model(
  name: str,
  batch_size: int,
  image_size: int,
  dtype: str = 'float32',
  steps: int = 10,
  num_classes: int = 1000,
  remat: bool = False,
  kernels: str = 'auto',
  parallelism: str = 'pmap',
  mesh: str = 'data:-1',
  scan: bool = False,
) -> dict:
  """Training step and inference timings for one model over all local devices, under pmap or (parallelism
  'jit') on `mesh`, with the state bytes each device holds (its arrays' addressable shards) and what XLA assigns
  the compiled step per device."""
  model, where, state, batch, step = _placed(
    name, batch_size, image_size, dtype, num_classes, remat, kernels, parallelism, mesh, scan
  )
  held = max(sharding.bytes_on_devices(state).values())
  *train, (trained, _, _), step_memory = _timed(step, (state, batch, jax.random.PRNGKey(1)), steps, True)
  forward = lambda s, x: model.apply(s.variables(), x, train=False)
  infer = jax.jit(forward) if where.mesh is not None else jax.pmap(forward, axis_name=train_step.AXIS)
  *inference, _, _ = _timed(infer, (trained, batch['image']), steps)
  peak, peak_source = device_peak(dtype)
  memory, memory_source = _peak_memory()
  result: dict[str, Any] = {
    'model': models.lookup(name).name,
    'batch_size': batch_size,
    'image_size': image_size,
    'dtype': dtype,
    'kernels': kernels,
    'scan': scan,
    'parallelism': parallelism,
    'mesh': dict(where.mesh.shape) if where.mesh is not None else None,
    'devices': jax.local_device_count(),
    'device_kind': jax.local_devices()[0].device_kind,
    'peak_flops_per_device': peak,
    'peak_source': peak_source,
    'peak_memory_bytes': memory,
    'memory_source': memory_source,
    'state_bytes_per_device': held,
    'train_step_memory_per_device': step_memory,
  }
  per_device = batch_size // jax.local_device_count()
  if scan and train[2] is not None and inference[2] is not None:  # every block counted, as the unrolled program
    missing = loop_flops_left_out(name, per_device, image_size, dtype, remat, num_classes, kernels)
    train[2], inference[2] = train[2] + missing[0], inference[2] + missing[1]
  for kind, (seconds, compile_seconds, flops) in (('train', train), ('inference', inference)):
    result[kind] = _figures(seconds, flops, compile_seconds, batch_size, per_device, peak)
  return result


def side_by_side(name: str, parallelisms: Sequence[str], repeats: int = 1, **options: Any) -> dict:
  """`bench_model` under each parallelism in turn, `repeats` rounds alternating them in this process; each
  one's median images/s, and each against the first (e.g. jit on data:8 / pmap on the same devices)."""
  runs: dict[str, list[dict]] = {p: [] for p in parallelisms}
  for _ in range(repeats):
    for parallelism in parallelisms:
      runs[parallelism].append(bench_model(name, parallelism=parallelism, **options))
  medians = {
    p: {k: statistics.median(r[k]['images_per_sec'] for r in rs) for k in ('train', 'inference')}
    for p, rs in runs.items()
  }
  first = parallelisms[0]
  return {
    'side_by_side': [rs[-1] for rs in runs.values()],
    'images_per_sec': medians,
    'ratio_to_first': {p: {k: m[k] / medians[first][k] for k in m} for p, m in medians.items()},
    'repeats': repeats,
  }


def _available_memory() -> tuple[int, str]:
  """Bytes one device can hold: the accelerator's limit, or the host's available memory on CPU."""
  stats = jax.local_devices()[0].memory_stats()
  if stats and 'bytes_limit' in stats:
    return int(stats['bytes_limit']), 'device memory limit'
  with open('/proc/meminfo') as f:
    info = {line.split(':')[0]: int(line.split()[1]) * 1024 for line in f}
  return info['MemAvailable'] // jax.local_device_count(), 'available host memory'


def _scanned(scan: bool) -> Optional[dict]:
  """The model override of `scan=True` (the blocks under nn.scan), or none."""
  return {'scan': True} if scan else None


def compile_train_step(
  name: str,
  per_device_batch: int,
  image_size: int,
  dtype: str = 'float32',
  remat: bool = False,
  num_classes: int = 1000,
  mesh: Optional[str] = None,
  scan: bool = False,
  kernels: str = 'auto',
) -> dict[str, Any]:
  """The training step compiled from shapes, nothing allocated: seconds to trace and lower it, seconds XLA takes
  to compile it, and the memory XLA assigns one device (`_memory`). With `mesh`, the jit path's step on that mesh
  (state in its default shardings, `per_device_batch` per batch shard); without, one device's step."""
  model = models.build(name, num_classes, _scanned(scan), dtype=dtype, remat=remat, axis_name=None, kernels=kernels)
  tx, lr = optim.create(config.base().optimizer, total_steps=1000)
  image_shape = (image_size, image_size, 3)
  on = sharding.make_mesh(mesh) if mesh else sharding.make_mesh('data:1', jax.local_devices()[:1])
  where = placement.on_mesh(on, model, tx, image_shape)
  batch_size, split = per_device_batch * sharding.batch_shards(on), NamedSharding(on, sharding.batch_spec(on))
  batch = {
    'image': jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32, sharding=split),
    'label': jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=split),
  }
  step = where.step_function(model=model, tx=tx, learning_rate=lr, options=train_step.StepOptions(num_classes))
  start = time.perf_counter()
  lowered = step.lower(where.abstract(), batch, jax.random.PRNGKey(0))
  traced = time.perf_counter()
  compiled = lowered.compile()
  seconds = time.perf_counter() - traced
  return {
    'lower_seconds': traced - start,
    'compile_seconds': seconds,
    'memory': _memory(compiled),
    'flops': _flops(compiled),
  }


def loop_flops_left_out(
  name: str, per_device_batch: int, image_size: int, dtype: str, remat: bool, num_classes: int, kernels: str
) -> tuple[float, float]:
  """(training step, inference) FLOPs per device that XLA's cost analysis leaves out of `name` with scanned blocks:
  it counts a while loop's body once, so the scanned program's own count misses depth - 1 blocks. Measured as
  the unrolled program's count less the scanned one's, both compiled from shapes on one device."""
  counts = {}
  for scan in (False, True):
    step = compile_train_step(name, per_device_batch, image_size, dtype, remat, num_classes, None, scan, kernels)
    train = step['flops']
    model = models.build(name, num_classes, _scanned(scan), dtype=dtype, axis_name=None, kernels=kernels)
    images = jax.ShapeDtypeStruct((per_device_batch, image_size, image_size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x, m=model: m.init(jax.random.PRNGKey(0), x[:1], train=False), images)
    forward = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False)).lower(variables, images).compile()
    counts[scan] = (train or 0.0, _flops(forward) or 0.0)
  return counts[False][0] - counts[True][0], counts[False][1] - counts[True][1]


def train_step_memory(*args: Any, **kwargs: Any) -> dict[str, int]:
  """Memory XLA assigns to one device's training step (bytes of its arguments, outputs, aliases between them
  and temporaries): `compile_train_step`'s memory."""
  memory = compile_train_step(*args, **kwargs)['memory']
  if not memory:
    raise RuntimeError(f'XLA gives no memory analysis of the compiled step on {jax.default_backend()}.')
  return memory


def train_step_bytes(*args: Any, **kwargs: Any) -> int:
  """The bytes of `train_step_memory` one device needs at once: arguments, outputs not aliased to them, and
  temporaries."""
  memory = train_step_memory(*args, **kwargs)
  return memory['argument_bytes'] + memory['output_bytes'] - memory['alias_bytes'] + memory['temp_bytes']


def largest_batch(
  name: str,
  image_size: int,
  dtype: str = 'float32',
  remat: bool = False,
  num_classes: int = 1000,
  granularity: int = 8,
  limit_bytes: Optional[int] = None,
  mesh: Optional[str] = None,
  scan: bool = False,
) -> dict:
  """Largest per-device batch (a multiple of `granularity`) whose training step fits in memory; with `mesh`, the
  jit path's step on it (the batch per batch shard; a model axis's devices share theirs).

  Doubles the batch until the step no longer fits, then bisects; each probe is one compile.
  """
  limit, source = (limit_bytes, 'given limit') if limit_bytes else _available_memory()
  probes = {}

  def fits(batch):
    probes[batch] = train_step_bytes(name, batch, image_size, dtype, remat, num_classes, mesh, scan)
    return probes[batch] <= limit

  low, high = 0, granularity
  while fits(high):
    low, high = high, 2 * high
  while high - low > granularity:
    mid = (low + high) // 2 // granularity * granularity
    low, high = (mid, high) if fits(mid) else (low, mid)
  on = sharding.make_mesh(mesh) if mesh else None
  shards = sharding.batch_shards(on) if on is not None else jax.local_device_count()
  return {
    'model': models.lookup(name).name,
    'image_size': image_size,
    'dtype': dtype,
    'remat': remat,
    'scan': scan,
    'mesh': dict(on.shape) if on is not None else None,
    'max_batch_per_device': low,
    'max_global_batch': low * shards,
    'devices': jax.local_device_count(),
    'step_bytes_at_max': probes.get(low),
    'limit_bytes': limit,
    'limit_source': source,
    'device_kind': jax.local_devices()[0].device_kind,
    'probes': {str(b): probes[b] for b in sorted(probes)},
  }
