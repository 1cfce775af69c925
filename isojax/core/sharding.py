"""Where the jit path puts each array: a device mesh (`config.mesh`) and big_vision-style rules over parameter
paths (`config.sharding_strategy`).

A mesh is written as axis sizes, `'data:-1'`, `'fsdp:8'`, `'data:2,fsdp:4'` or `'data:4,model:2'`; `-1` takes
the devices the others leave. The batch is split over `data` and `fsdp` together; parameters and optimizer
state are split over `fsdp` (ZeRO-3 / FSDP: each device holds 1/N of them) and, by the tensor-parallel rules,
attention heads and MLP hidden units over `model`.

A strategy is a sequence of (regex, tactic) pairs, as big_vision's `config.sharding_strategy`
(big_vision/sharding.py `infer_sharding`): each array is matched, with `re.fullmatch` against its path
('params/block_0/token_mixing/attention/qkv/kernel', 'opt_state/0/mu/...'), by the first pattern that matches
it, whose tactics ('|'-joined) build its PartitionSpec. Tactics:

- `replicate`: a whole copy on every device (what an unmatched array gets too);
- `fsdp(axis=fsdp, min_size_mb=1)`: the largest dimension that the axis divides and no other rule took; arrays
  of at most `min_size_mb` MiB stay whole (big_vision's `min_size_to_shard_mb`: below it a gather costs more
  than the memory it saves). isojax's default is 1 MiB where big_vision's is 4: at 4, ViT-L/16's attention
  output kernels (1024 x 1024 float32: exactly 4 MiB), their second moments and every bfloat16 first moment
  under 4 MiB stay whole, and a device holds 1.62x its 1/8 share on fsdp:8 (ViT-B/16: 2.03x); at 1 MiB, 1.011x
  (ViT-B/16 1.021x, ViT-H/14 1.008x; configs/imagenet_vit_s16.py's AdamW, its first moment in bfloat16, `--dry_run`).
- `shard_dim(axis=model, dim=-1)`: that dimension over that axis.

An array `fsdp` cannot split (no free dimension divisible by the axis: a 10-class head's bias on `fsdp:8`) stays
whole on every device, as in big_vision; `whole_above_minimum` lists them, and `--dry_run` prints that list with
the per-device bytes, so a large one is seen before it costs memory. A `shard_dim` that cannot apply is an error
naming the array, the dimension and the axis.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ('data', 'fsdp', 'model')
BATCH_AXES = ('data', 'fsdp')  # the global batch is split over both (FSDP is data parallelism too)
DEFAULT_MIN_SIZE_MB = 1.0  # big_vision's is 4 (see the module docstring)
Strategy = Sequence[tuple[str, str]]

# Megatron-style tensor parallelism over `model` for isojax's transformer and MLP blocks: the fused q|k|v output
# and the MLP's hidden units split column-wise, the attention output and the MLP's second layer row-wise.
# Dimensions count from the end, so the rules hold for the stacked blocks of `scan=True` (a leading depth axis).
TENSOR_PARALLEL: tuple[tuple[str, str], ...] = (
  (r'.*/attention/qkv/(kernel|bias)', 'shard_dim(axis=model, dim=-1)'),
  (r'.*/attention/out/kernel', 'shard_dim(axis=model, dim=-2)'),
  (r'.*(channel_mixing|mlp)/Dense_0/(kernel|bias)', 'shard_dim(axis=model, dim=-1)'),
  (r'.*(channel_mixing|mlp)/Dense_1/kernel', 'shard_dim(axis=model, dim=-2)'),
)


class ShardingError(ValueError):
  """A mesh or a rule that cannot place the arrays it names; raised before anything compiles."""


def mesh_shape(spec: str, device_count: int) -> dict[str, int]:
  """'data:2,fsdp:-1' on 8 devices -> {'data': 2, 'fsdp': 4}: axis sizes whose product is the device count."""
  sizes: dict[str, int] = {}
  for part in (p.strip() for p in str(spec).split(',') if p.strip()):
    name, _, size = part.partition(':')
    if name not in AXES or name in sizes or not re.fullmatch(r'-1|[1-9]\d*', size.strip()):
      raise ShardingError(
        f'mesh={spec!r}: {part!r} is not an axis size; write axis:size pairs over {AXES}, each axis once, '
        "a positive size or -1 for the rest, e.g. 'data:-1', 'fsdp:8', 'data:2,fsdp:4'."
      )
    sizes[name] = int(size)
  if not sizes:
    raise ShardingError(f"mesh={spec!r} names no axis; e.g. 'data:-1'.")
  fill = [name for name, size in sizes.items() if size == -1]
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if len(fill) > 1 or device_count % fixed or (not fill and fixed != device_count):
    raise ShardingError(
      f'mesh={spec!r} does not fit the {device_count} devices: its fixed sizes multiply to {fixed}; '
      f"the sizes must multiply to {device_count} (at most one -1 takes the rest, e.g. 'fsdp:{device_count}')."
    )
  if fill:
    sizes[fill[0]] = device_count // fixed
  return sizes


def make_mesh(spec: str, devices: Sequence[Any] | None = None) -> Mesh:
  """The mesh `spec` describes over `devices` (default: every device of every process), axes in AXES order."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = mesh_shape(spec, len(devices))
  names = tuple(name for name in AXES if name in sizes)
  auto = (jax.sharding.AxisType.Auto,) * len(names)  # the partitioner places intermediates (GSPMD)
  return jax.make_mesh(tuple(sizes[n] for n in names), names, auto, devices=devices)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh's data-parallel axes, over which the batch is split (its shards in this order are pmap's devices)."""
  return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_shards(mesh: Mesh) -> int:
  """How many parts the batch is split into: the product of the mesh's data-parallel axis sizes."""
  return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def batch_spec(mesh: Mesh) -> PartitionSpec:
  """The leading (batch) dimension over the mesh's data-parallel axes."""
  return PartitionSpec(batch_axes(mesh) or None)


def default_strategy(mesh: Mesh) -> tuple[tuple[str, str], ...]:
  """Tensor-parallel rules when the mesh has `model`, then FSDP over `fsdp` when it has one."""
  rules: tuple[tuple[str, str], ...] = TENSOR_PARALLEL if 'model' in mesh.axis_names else ()
  if 'fsdp' in mesh.axis_names:
    rules += ((r'.*', f'fsdp(axis=fsdp, min_size_mb={DEFAULT_MIN_SIZE_MB:g})'),)
  return rules


def _arguments(tactic: str) -> tuple[str, dict[str, str]]:
  match = re.fullmatch(r'\s*(\w+)\s*(?:\((.*)\))?\s*', tactic)
  if not match:
    raise ShardingError(f'{tactic!r} is not a sharding tactic; write e.g. replicate, fsdp(min_size_mb=4).')
  kwargs = {}
  for item in (a.strip() for a in (match[2] or '').split(',') if a.strip()):
    key, _, value = item.partition('=')
    kwargs[key.strip()] = value.strip().strip('\'"')
  return match[1], kwargs


def _fsdp(spec: list, mesh: Mesh, name: str, shape: tuple, itemsize: int, axis='fsdp', min_size_mb=None):
  threshold = DEFAULT_MIN_SIZE_MB if min_size_mb is None else float(min_size_mb)
  if math.prod(shape) * itemsize <= threshold * 2**20:
    return spec
  size = mesh.shape[axis]
  for dim in np.argsort(shape, kind='stable')[::-1]:  # the largest free dimension the axis divides
    if spec[dim] is None and shape[dim] % size == 0:
      return spec[:dim] + [axis] + spec[dim + 1 :]
  return spec  # no free dimension divides: whole on every device, as big_vision; the dry run lists it


def _shard_dim(spec: list, mesh: Mesh, name: str, shape: tuple, itemsize: int, axis='model', dim='-1'):
  del itemsize
  index = int(dim) % len(shape) if shape and -len(shape) <= int(dim) < len(shape) else None
  if index is None or spec[index] is not None or shape[index] % mesh.shape[axis]:
    reason = (
      f'it has {len(shape)} dimension(s)'
      if index is None
      else f'dimension {index} is taken by {spec[index]!r}'
      if spec[index] is not None
      else f'dimension {index} (size {shape[index]}) is not divisible by {axis}:{mesh.shape[axis]}'
    )
    raise ShardingError(f'shard_dim(axis={axis}, dim={dim}) cannot shard {name} {shape}: {reason}.')
  return spec[:index] + [axis] + spec[index + 1 :]


def _replicate(spec: list, mesh: Mesh, name: str, shape: tuple, itemsize: int):
  del mesh, shape, itemsize
  if any(axis is not None for axis in spec):
    raise ShardingError(f'replicate cannot apply to {name}: an earlier tactic sharded it as {spec}.')
  return spec


TACTICS: dict[str, Callable[..., list]] = {'replicate': _replicate, 'fsdp': _fsdp, 'shard_dim': _shard_dim}


def _apply(tactics: str, mesh: Mesh, name: str, shape: tuple, itemsize: int) -> list:
  spec: list = [None] * len(shape)
  for tactic in tactics.split('|'):
    op, kwargs = _arguments(tactic)
    if op not in TACTICS:
      raise ShardingError(f'{tactic!r} for {name}: unknown tactic {op!r}; tactics: {sorted(TACTICS)}.')
    axis = kwargs.get('axis')
    if axis is not None and axis not in mesh.axis_names:
      raise ShardingError(f'{tactic!r} for {name}: the mesh {dict(mesh.shape)} has no axis {axis!r}.')
    try:
      spec = TACTICS[op](spec, mesh, name, shape, itemsize, **kwargs)
    except TypeError as e:
      raise ShardingError(f'{tactic!r} for {name}: {e}.') from None
  return spec


def path_name(path: Sequence[Any]) -> str:
  """A pytree path as a slash-joined name: 'params/block_0/norm1/scale', 'opt_state/0/mu/head/kernel'."""
  parts = []
  for key in path:
    for attr in ('name', 'key', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return '/'.join(parts)


def _trimmed(spec: list) -> PartitionSpec:
  """P(None, 'fsdp'), and P() for a whole array: trailing Nones dropped, so equal placements compare equal."""
  while spec and spec[-1] is None:
    spec = spec[:-1]
  return PartitionSpec(*spec)


def _pattern(pattern: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise ShardingError(f'sharding_strategy pattern {pattern!r} is not a regex: {e}.') from None


def specs(tree: Any, strategy: Strategy, mesh: Mesh) -> Any:
  """The PartitionSpec of every leaf of `tree` (arrays or shapes) under `strategy`: the first matching rule's."""
  compiled = [(_pattern(pattern), tactics) for pattern, tactics in strategy]

  def spec(path, leaf):
    name, shape = path_name(path), tuple(np.shape(leaf))
    for pattern, tactics in compiled:
      if pattern.fullmatch(name):
        return _trimmed(_apply(tactics, mesh, name, shape, np.dtype(leaf.dtype).itemsize))
    return PartitionSpec()

  return jax.tree_util.tree_map_with_path(spec, tree)


def shardings(tree: Any, strategy: Strategy, mesh: Mesh) -> Any:
  """`specs` as NamedShardings on `mesh`."""
  return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs(tree, strategy, mesh))


def state_bytes(tree: Any, placements: Any) -> tuple[int, int]:
  """(bytes of every leaf of `tree`, bytes the most loaded device holds under `placements`, a tree of
  NamedShardings): from the shard shapes the shardings give, so nothing is allocated."""
  leaves = jax.tree_util.tree_leaves(tree)
  where = jax.tree_util.tree_leaves(placements, is_leaf=lambda x: isinstance(x, NamedSharding))
  total, per_device = 0, 0
  for leaf, sharding in zip(leaves, where):
    itemsize, shape = np.dtype(leaf.dtype).itemsize, tuple(np.shape(leaf))
    total += math.prod(shape) * itemsize
    per_device += math.prod(sharding.shard_shape(shape)) * itemsize
  return total, per_device


def whole_above_minimum(tree: Any, placements: Any, min_size_mb: float = DEFAULT_MIN_SIZE_MB) -> list[str]:
  """'name shape' of each array above `min_size_mb` MiB that `placements` leave whole on every device."""
  named = jax.tree_util.tree_flatten_with_path(tree)[0]
  where = jax.tree_util.tree_leaves(placements, is_leaf=lambda x: isinstance(x, NamedSharding))
  return [
    f'{path_name(path)} {tuple(np.shape(leaf))}'
    for (path, leaf), sharding in zip(named, where)
    if sharding.is_fully_replicated and math.prod(np.shape(leaf)) * np.dtype(leaf.dtype).itemsize > min_size_mb * 2**20
  ]


def bytes_on_devices(tree: Any) -> dict[Any, int]:
  """The bytes each device holds of the placed arrays in `tree`, summed from their `addressable_shards` (what is
  allocated, where `state_bytes` is what the shardings promise)."""
  held: dict[Any, int] = {}
  for leaf in jax.tree_util.tree_leaves(tree):
    for shard in leaf.addressable_shards:
      held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
  return held
