"""Speed of the training step and inference, as `isojax.main` runs them, and of the input pipeline.

    python -m isojax.bench --model=ViT-S/16 --batch_size=64 --image_size=224 [--dtype=bfloat16] [--steps=10]
    python -m isojax.bench --input=configs/cifar10_convmixer.py [--steps=50] [--set=data.data_dir=/data]
    python -m isojax.bench --model=ViT-B/16 --max_batch [--remat] [--parallelism=jit --mesh=fsdp:8]
    python -m isojax.bench --model=ViT-S/16 --parallelism=pmap,jit --mesh=data:8 [--repeats=3]
    python -m isojax.bench --model=ViT-H/14 --compile_only --batch_size=1 [--scan] [--remat]

Prints a table and one JSON line. `--max_batch` finds the largest global batch whose training step fits the
device's memory, from XLA's buffer assignment of the compiled step, without running it
(isojax/training/benchmark.py). `--kernels=reference|cpu` times the plain ops or the CPU fast paths.
`--parallelism=jit --mesh=...` measures the jit path on that mesh (state in its default shardings), with the state
bytes each device holds and what XLA assigns the step per device; `--parallelism=pmap,jit` measures both in one
run, alternating `--repeats` times, with each one's ratio to the first. `--scan` runs the blocks under nn.scan
(`config.model.scan`); `--compile_only` times tracing and compiling the training step without running it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any, Optional

from isojax.core import host_memory

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
host_memory.keep_freed_memory()  # as isojax.main: before JAX and TensorFlow start their threads

import jax  # noqa: E402
from absl import flags  # noqa: E402

from isojax.core import command_line, loading, sharding  # noqa: E402
from isojax.core.config import KERNELS, PARALLELISMS  # noqa: E402
from isojax.training import benchmark  # noqa: E402

try:  # the input pipeline is TensorFlow's; an accelerator host without it still benchmarks models
  from isojax.data import benchmark as input_benchmark

  INPUT_UNAVAILABLE: Optional[str] = None
except ImportError as e:
  input_benchmark = None  # type: ignore[assignment]
  INPUT_UNAVAILABLE = f'{type(e).__name__}: {e}'

FLAGS = flags.FlagValues()
_MODEL = flags.DEFINE_string('model', None, 'A registered model name, e.g. ViT-S/16.', flag_values=FLAGS)
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Global batch, split over the local devices.', flag_values=FLAGS)
_IMAGE = flags.DEFINE_integer('image_size', 224, 'Image side in pixels.', flag_values=FLAGS)
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.', flag_values=FLAGS)
_KERNELS = flags.DEFINE_enum(
  'kernels', 'auto', list(KERNELS), 'Reference ops, the CPU fast paths, or auto.', flag_values=FLAGS
)
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps (the median is reported).', flag_values=FLAGS)
_CLASSES = flags.DEFINE_integer('num_classes', 1000, 'Classes of the head.', flag_values=FLAGS)
_REMAT = flags.DEFINE_bool('remat', False, 'Recompute block activations in the backward pass.', flag_values=FLAGS)
_INPUT = flags.DEFINE_string('input', None, "Measure this config's input pipeline alone.", flag_values=FLAGS)
_SET = flags.DEFINE_multi_string(
  'set',
  [],
  'With --input: a config override KEY=VALUE, e.g. --set=data.name=image_folder --set=data.data_dir=/data/photos.',
  flag_values=FLAGS,
)
_PARALLELISM = flags.DEFINE_list(
  'parallelism', ['pmap'], 'pmap, jit, or both (pmap,jit: side by side in one run).', flag_values=FLAGS
)
_MESH = flags.DEFINE_string(
  'mesh', 'data:-1', "The jit path's mesh, e.g. data:8, fsdp:8, data:4,model:2.", flag_values=FLAGS
)
_REPEATS = flags.DEFINE_integer('repeats', 1, 'Rounds of a side-by-side run (medians reported).', flag_values=FLAGS)
_LIMIT = flags.DEFINE_float(
  'limit_gib', None, 'With --max_batch: the memory of one device in GiB (default: what it has).', flag_values=FLAGS
)
_SCAN = flags.DEFINE_bool('scan', False, 'Run the blocks under nn.scan (config.model.scan).', flag_values=FLAGS)
_COMPILE_ONLY = flags.DEFINE_bool(
  'compile_only',
  False,
  'Time tracing and compiling the training step (batch per device), not running it.',
  flag_values=FLAGS,
)
_MAX_BATCH = flags.DEFINE_bool(
  'max_batch', False, 'Find the largest training batch that fits the device memory (compiles only).', flag_values=FLAGS
)


def bench_input(config_path: str, steps: int = 50, overrides: Sequence[str] = ()) -> dict:
  """The input pipeline's images/s (isojax/data/benchmark.py), with KEY=VALUE overrides."""
  if input_benchmark is None:
    raise command_line.UsageError(
      f'--input needs TensorFlow, the input pipeline ({INPUT_UNAVAILABLE}); install '
      f"isojax's dependencies (pip install -e .)"
    )
  try:
    parsed = loading.parse_overrides(list(overrides))
  except ValueError as e:
    raise command_line.UsageError(f'--set: {e}') from None
  return input_benchmark.bench_input(config_path, steps, parsed)


def _result() -> dict[str, Any]:
  if _INPUT.value:
    return bench_input(_INPUT.value, _STEPS.value, _SET.value)
  if not _MODEL.value:
    raise command_line.UsageError('give --model=NAME or --input=CONFIG')
  unknown = [p for p in _PARALLELISM.value if p not in PARALLELISMS]
  if unknown or not _PARALLELISM.value:
    raise command_line.UsageError(f'--parallelism={",".join(_PARALLELISM.value)}: give pmap, jit or pmap,jit')
  mesh = _MESH.value if 'jit' in _PARALLELISM.value else None
  if mesh:
    try:
      sharding.mesh_shape(mesh, jax.device_count())
    except sharding.ShardingError as e:
      raise command_line.UsageError(f'--mesh: {e}') from None
  if _MAX_BATCH.value:
    limit = int(_LIMIT.value * 2**30) if _LIMIT.value else None
    return benchmark.largest_batch(
      _MODEL.value,
      _IMAGE.value,
      _DTYPE.value,
      _REMAT.value,
      _CLASSES.value,
      limit_bytes=limit,
      mesh=mesh,
      scan=_SCAN.value,
    )
  if _COMPILE_ONLY.value:
    return _compile_only(_MODEL.value, mesh)
  options = dict(batch_size=_BATCH.value, steps=_STEPS.value, kernels=_KERNELS.value, mesh=_MESH.value, **_step())
  if len(_PARALLELISM.value) > 1:
    return benchmark.side_by_side(_MODEL.value, _PARALLELISM.value, _REPEATS.value, **options)
  return benchmark.bench_model(_MODEL.value, parallelism=_PARALLELISM.value[0], **options)


def _compile_only(name: str, mesh: Optional[str]) -> dict[str, Any]:
  """`--compile_only`: the training step traced and compiled from shapes, timed."""
  shards = sharding.batch_shards(sharding.make_mesh(mesh)) if mesh else 1
  if _BATCH.value % shards:
    raise command_line.UsageError(f'--batch_size {_BATCH.value} is not divisible by the {shards} batch shards')
  per_device = _BATCH.value // shards
  timed = benchmark.compile_train_step(name, per_device, mesh=mesh, kernels=_KERNELS.value, **_step())
  where = dict(model=_MODEL.value, batch_size=_BATCH.value, mesh=mesh, device_kind=jax.local_devices()[0].device_kind)
  return dict(compile_only=True, **where, **_step(), **timed)


def _step() -> dict[str, Any]:
  """The flags that say which training step a measurement builds."""
  return dict(
    image_size=_IMAGE.value, dtype=_DTYPE.value, remat=_REMAT.value, num_classes=_CLASSES.value, scan=_SCAN.value
  )


def _table(result: dict) -> str:
  if result.get('compile_only'):
    blocks = 'scanned' if result['scan'] else 'unrolled'
    on = f' on mesh {result["mesh"]}' if result['mesh'] else ''
    return (
      f'{result["model"]} training step, batch {result["batch_size"]} @ {result["image_size"]}px {result["dtype"]}'
      f'{" remat" if result["remat"] else ""}, {blocks} blocks{on}: '
      f'traced and lowered in {result["lower_seconds"]:.1f} s, compiled in {result["compile_seconds"]:.1f} s '
      f'({result["device_kind"]})'
    )
  if 'max_batch_per_device' in result:
    at_max, mesh = result['step_bytes_at_max'], result.get('mesh')
    return (
      f'{result["model"]} @ {result["image_size"]}px {result["dtype"]}{" remat" if result["remat"] else ""}'
      f'{f" on mesh {mesh}" if mesh else ""}: largest training batch {result["max_global_batch"]} '
      f'({result["max_batch_per_device"]} per device x {result["devices"]} {result["device_kind"]}); the step takes '
      f'{at_max / 2**30 if at_max else 0:.1f} of {result["limit_bytes"] / 2**30:.1f} GiB '
      f'({result["limit_source"]})'
    )
  if 'input' in result:
    return (
      f'input pipeline of {result["input"]} ({result["dataset"]}), batches of {result["images_per_batch"]}: '
      f'{result["images_per_sec"]:,.0f} images/s over {result["batches"]} after {result["warmup"]} untimed '
      f'(the first in {result["first_batch_seconds"]:.1f} s)'
    )
  if 'side_by_side' in result:
    ratios = ', '.join(
      f'{p}: train {r["train"]:.3f}x, inference {r["inference"]:.3f}x' for p, r in result['ratio_to_first'].items()
    )
    tables = [_model_table(r) for r in result['side_by_side']]
    return '\n\n'.join([*tables, f'median images/s against the first, {result["repeats"]} round(s): {ratios}'])
  return _model_table(result)


def _model_table(result: dict) -> str:
  where = result.get('parallelism', 'pmap') + (f' on mesh {result["mesh"]}' if result.get('mesh') else '')
  head = (
    f'{result["model"]} batch {result["batch_size"]} @ {result["image_size"]}px {result["dtype"]}, '
    f'{result.get("kernels", "auto")} kernels, {where}, on '
    f'{result["devices"]} x {result["device_kind"]} (peak {result["peak_flops_per_device"] / 1e12:.3g} '
    f'TFLOP/s per device, {result["peak_source"]})'
  )
  lines = [
    head,
    f'{"":10s} {"images/s":>10s} {"ms/step":>9s} {"compile s":>9s} {"GFLOP/img":>10s} {"TFLOP/s":>8s} {"MFU":>6s}',
  ]
  for kind in ('train', 'inference'):
    r = result[kind]
    fmt = lambda v, spec: format(v, spec) if v is not None else 'n/a'
    lines.append(
      f'{kind:10s} {r["images_per_sec"]:>10,.1f} {r["ms_per_step"]:>9.1f} {r["compile_sec"]:>9.1f} '
      f'{fmt(r["gflops_per_image"], ">10.2f")} {fmt(r["achieved_tflops_per_device"], ">8.3f")} '
      f'{fmt(r["mfu"] and 100 * r["mfu"], ">5.1f")}%'
    )
  step = result.get('train_step_memory_per_device') or {}
  lines.append(
    f'per device: state {result["state_bytes_per_device"] / 2**20:,.1f} MiB held (addressable shards); '
    f'train step arguments {step.get("argument_bytes", 0) / 2**20:,.1f} MiB, '
    f'temporaries {step.get("temp_bytes", 0) / 2**20:,.1f} MiB (XLA memory analysis)'
  )
  lines.append(f'peak memory {result["peak_memory_bytes"] / 2**30:.2f} GiB ({result["memory_source"]})')
  return '\n'.join(lines)


@command_line.command
def main(argv: Optional[Sequence[str]] = None) -> int:
  positional = command_line.parse(FLAGS, argv, __doc__)
  if positional:
    raise command_line.UsageError(f'unexpected arguments {positional}; every setting is a flag')
  result = _result()
  print(_table(result))
  print(json.dumps(result))
  return 0


if __name__ == '__main__':
  sys.exit(main())
