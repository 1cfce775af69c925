"""Speed of the training step and inference, as `isojax.main` runs them, and of the input pipeline.

    python -m isojax.bench --model ViT-S/16 --batch-size 64 --image-size 224 [--dtype bfloat16] [--steps 10]
    python -m isojax.bench --input configs/cifar10_convmixer.py [--steps 50]
    python -m isojax.bench --model ViT-B/16 --max-batch [--remat]

Prints a table and one JSON line. `--max-batch` finds the largest global batch whose training step
fits the device's memory, from XLA's buffer assignment of the compiled step (the memory
the step allocates), without running it.

FLOPs come from XLA's cost analysis of the compiled step;
model-FLOPs utilisation is against the device's peak: on CPU a float32 matrix product measured
at start-up, on known accelerators their published dense peak for the dtype.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from isojax import host_memory  # noqa: E402

# Published dense peaks in FLOP/s by device kind (substring) and dtype.
PEAKS = {
    'H200': {'bfloat16': 989e12, 'float32': 67e12},
    'H100': {'bfloat16': 989e12, 'float32': 67e12},
    'A100': {'bfloat16': 312e12, 'float32': 19.5e12},
    'TPU v5p': {'bfloat16': 459e12}, 'TPU v5 lite': {'bfloat16': 197e12}, 'TPU v4': {'bfloat16': 275e12},
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
  return 2 * n ** 3 / seconds, f'measured {n}x{n} float32 matmul on {device.device_kind}'


def _flops(compiled) -> Optional[float]:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis['flops']) if analysis and 'flops' in analysis else None


def _peak_memory() -> tuple[Optional[int], str]:
  stats = jax.local_devices()[0].memory_stats()
  if stats and 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device peak'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'host max RSS'


def bench_model(name: str, batch_size: int, image_size: int, dtype: str = 'float32', steps: int = 10,
                num_classes: int = 1000, remat: bool = False) -> dict:
  """Training step and inference timings for one model, under pmap over all local devices."""
  from isojax import models
  from isojax.training import optim, parallel, train_step
  from isojax.training.config_base import base
  devices = jax.local_device_count()
  if batch_size % devices:
    raise ValueError(f'--batch-size {batch_size} is not divisible by the {devices} local devices.')
  entry = models.lookup(name)
  model = models.build(name, num_classes, dtype=dtype, remat=remat, axis_name=train_step.AXIS)
  opt_config = base().optimizer
  tx, lr = optim.create(opt_config, total_steps=1000)
  with jax.default_device(jax.local_devices(backend='cpu')[0]):   # as isojax.main: init on the host
    state = jax.jit(lambda rng: train_step.init_state(model, tx, rng, (image_size, image_size, 3), ema=False))(
        jax.random.PRNGKey(0))
  per_device = batch_size // devices
  rng = np.random.RandomState(0)
  batch = parallel.shard({'image': rng.normal(size=(devices, per_device, image_size, image_size, 3)).astype(np.float32),
                          'label': rng.randint(0, num_classes, (devices, per_device)).astype(np.int32)})
  replicated = parallel.replicate(jax.device_get(state))
  step = train_step.pmapped_train_step(model=model, tx=tx, learning_rate=lr, num_classes=num_classes)
  key = jax.random.PRNGKey(1)

  start = time.perf_counter()
  compiled_step = step.lower(replicated, batch, key).compile()
  train_compile = time.perf_counter() - start
  train_flops = _flops(compiled_step)
  holder = {'state': replicated}

  def one_step():
    holder['state'], metrics = step(holder['state'], batch, key)
    return metrics
  jax.block_until_ready(one_step())   # the first call also places donated buffers
  train_seconds = median_seconds(one_step, steps)

  infer = jax.pmap(lambda s, x: model.apply(s.variables(), x, train=False), axis_name=train_step.AXIS)
  start = time.perf_counter()
  compiled_infer = infer.lower(holder['state'], batch['image']).compile()
  infer_compile = time.perf_counter() - start
  infer_flops = _flops(compiled_infer)
  jax.block_until_ready(infer(holder['state'], batch['image']))
  infer_seconds = median_seconds(lambda: infer(holder['state'], batch['image']), steps)

  peak, peak_source = device_peak(dtype)
  memory, memory_source = _peak_memory()
  result = {'model': entry.name, 'batch_size': batch_size, 'image_size': image_size, 'dtype': dtype,
            'devices': devices, 'device_kind': jax.local_devices()[0].device_kind,
            'peak_flops_per_device': peak, 'peak_source': peak_source,
            'peak_memory_bytes': memory, 'memory_source': memory_source}
  for kind, seconds, flops, compile_s in (('train', train_seconds, train_flops, train_compile),
                                          ('inference', infer_seconds, infer_flops, infer_compile)):
    per_image = flops / per_device if flops is not None else None
    achieved = flops / seconds if flops is not None else None   # per device
    result[kind] = {'images_per_sec': batch_size / seconds, 'ms_per_step': 1000 * seconds,
                    'compile_sec': compile_s, 'gflops_per_image': per_image / 1e9 if per_image else None,
                    'achieved_tflops_per_device': achieved / 1e12 if achieved else None,
                    'mfu': achieved / peak if achieved else None}
  return result


def _available_memory() -> tuple[int, str]:
  """Bytes one device can hold: the accelerator's limit, or the host's available memory on CPU."""
  stats = jax.local_devices()[0].memory_stats()
  if stats and 'bytes_limit' in stats:
    return int(stats['bytes_limit']), 'device memory limit'
  with open('/proc/meminfo') as f:
    info = {line.split(':')[0]: int(line.split()[1]) * 1024 for line in f}
  return info['MemAvailable'] // jax.local_device_count(), 'available host memory'


def train_step_bytes(name: str, per_device_batch: int, image_size: int, dtype: str = 'float32',
                     remat: bool = False, num_classes: int = 1000) -> int:
  """Memory XLA assigns to one device's training step: state, batch, temporaries and outputs."""
  from isojax import models
  from isojax.training import optim, train_step
  from isojax.training.config_base import base
  model = models.build(name, num_classes, dtype=dtype, remat=remat, axis_name=None)
  tx, lr = optim.create(base().optimizer, total_steps=1000)
  state = jax.eval_shape(lambda rng: train_step.init_state(model, tx, rng, (image_size, image_size, 3), ema=False),
                         jax.random.PRNGKey(0))
  batch = {'image': jax.ShapeDtypeStruct((per_device_batch, image_size, image_size, 3), jnp.float32),
           'label': jax.ShapeDtypeStruct((per_device_batch,), jnp.int32)}
  step = jax.jit(lambda s, b, k: train_step.train_step(s, b, k, model=model, tx=tx, learning_rate=lr,
                                                        num_classes=num_classes, axis_name=None),
                 donate_argnums=(0,))
  memory = step.lower(state, batch, jax.random.PRNGKey(0)).compile().memory_analysis()
  return int(memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
             + memory.temp_size_in_bytes)


def largest_batch(name: str, image_size: int, dtype: str = 'float32', remat: bool = False,
                  num_classes: int = 1000, granularity: int = 8, limit_bytes: Optional[int] = None) -> dict:
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
  from isojax import models
  devices = jax.local_device_count()
  return {'model': models.lookup(name).name, 'image_size': image_size, 'dtype': dtype, 'remat': remat,
          'max_batch_per_device': low, 'max_global_batch': low * devices, 'devices': devices,
          'step_bytes_at_max': probes.get(low), 'limit_bytes': limit, 'limit_source': source,
          'device_kind': jax.local_devices()[0].device_kind,
          'probes': {str(b): probes[b] for b in sorted(probes)}}


def _override_value(text: str):
  """'1e-3' -> 0.001, 'True' -> True, "(1, 2)" -> (1, 2); anything else stays a string."""
  import ast
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def bench_input(config_path: str, steps: int = 50, overrides: Sequence[str] = ()) -> dict:
  """Images/s of the config's training input pipeline alone, for this process's devices."""
  from isojax.training import config_base, parallel
  from isojax import data
  pairs = [item.partition('=') for item in overrides]
  if any(not sep for _, sep, _ in pairs):
    raise ValueError(f'--set takes KEY=VALUE (e.g. data.name=image_folder); got {list(overrides)}.')
  config = config_base.load(config_path, {key: _override_value(value) for key, _, value in pairs})
  builder = data.get_builder(config.data.name, config.data.data_dir, config.data.download)
  per_device = config.batch_size // jax.device_count()
  batches = data.train_batches(builder, split=config.data.train_split, pp=config.data.train_pp,
                               image_size=config.data.image_size, per_device_batch=per_device,
                               **parallel.data_host(), seed=0,
                               shuffle_buffer=config.data.shuffle_buffer, cache=config.data.cache,
                               uint8_batches=config.data.uint8_batches)
  next(batches)   # start-up (file reads, caches) is not throughput
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)
  seconds = time.perf_counter() - start
  images = steps * per_device * jax.local_device_count()
  return {'input': config_path, 'dataset': config.data.name, 'train_pp': config.data.train_pp,
          'images_per_sec': images / seconds, 'batches': steps}


def _table(result: dict) -> str:
  if 'max_batch_per_device' in result:
    at_max = result['step_bytes_at_max']
    return (f"{result['model']} @ {result['image_size']}px {result['dtype']}{' remat' if result['remat'] else ''}: "
            f"largest training batch {result['max_global_batch']} ({result['max_batch_per_device']} per device x "
            f"{result['devices']} {result['device_kind']}); the step takes "
            f"{at_max / 2 ** 30 if at_max else 0:.1f} of {result['limit_bytes'] / 2 ** 30:.1f} GiB "
            f"({result['limit_source']})")
  if 'input' in result:
    return f"input pipeline of {result['input']} ({result['dataset']}): {result['images_per_sec']:,.0f} images/s"
  head = (f"{result['model']} batch {result['batch_size']} @ {result['image_size']}px {result['dtype']} on "
          f"{result['devices']} x {result['device_kind']} (peak {result['peak_flops_per_device'] / 1e12:.3g} "
          f"TFLOP/s per device, {result['peak_source']})")
  lines = [head, f"{'':10s} {'images/s':>10s} {'ms/step':>9s} {'compile s':>9s} {'GFLOP/img':>10s} "
                 f"{'TFLOP/s':>8s} {'MFU':>6s}"]
  for kind in ('train', 'inference'):
    r = result[kind]
    fmt = lambda v, spec: format(v, spec) if v is not None else 'n/a'
    lines.append(f"{kind:10s} {r['images_per_sec']:>10,.1f} {r['ms_per_step']:>9.1f} {r['compile_sec']:>9.1f} "
                 f"{fmt(r['gflops_per_image'], '>10.2f')} {fmt(r['achieved_tflops_per_device'], '>8.3f')} "
                 f"{fmt(r['mfu'] and 100 * r['mfu'], '>5.1f')}%")
  lines.append(f"peak memory {result['peak_memory_bytes'] / 2 ** 30:.2f} GiB ({result['memory_source']})")
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m isojax.bench', description=__doc__.splitlines()[0])
  parser.add_argument('--model', help='a registered model name, e.g. ViT-S/16')
  parser.add_argument('--batch-size', type=int, default=64, help='global batch, split over local devices')
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  parser.add_argument('--steps', type=int, default=10, help='timed steps (the median is reported)')
  parser.add_argument('--num-classes', type=int, default=1000)
  parser.add_argument('--remat', action='store_true', help='recompute block activations in the backward pass')
  parser.add_argument('--input', metavar='CONFIG', help="measure this config's input pipeline alone")
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='with --input: a config override, e.g. --set data.name=image_folder '
                           '--set data.data_dir=/data/photos --set batch_size=128')
  parser.add_argument('--max-batch', action='store_true',
                      help='find the largest training batch that fits the device memory (compiles only)')
  args = parser.parse_args(argv)
  host_memory.keep_freed_memory()   # as isojax.main does
  if args.input:
    result = bench_input(args.input, args.steps, args.set)
  elif args.model and args.max_batch:
    result = largest_batch(args.model, args.image_size, args.dtype, args.remat, args.num_classes)
  elif args.model:
    result = bench_model(args.model, args.batch_size, args.image_size, args.dtype, args.steps, args.num_classes,
                         args.remat)
  else:
    parser.error('give --model NAME or --input CONFIG')
  print(_table(result))
  print(json.dumps(result))
  return 0


if __name__ == '__main__':
  sys.exit(main())
