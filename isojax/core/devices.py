"""Placing data and state on devices for pmap (this process's devices, one global array per leaf), and joining
several hosts (`jax.distributed`)."""

from __future__ import annotations

import collections
import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from orbax.checkpoint import multihost as ocp_multihost

from isojax.core import sharding


def initialize_distributed(
  coordinator_address: Optional[str] = None,
  num_processes: Optional[int] = None,
  process_id: Optional[int] = None,
  cpu_collectives: Optional[str] = None,
) -> None:
  """Joins a multi-host run (`jax.distributed.initialize`); arguments left None are auto-detected
  on TPU pods and SLURM. `cpu_collectives='gloo'` lets CPU processes (e.g. on one machine) talk."""
  if cpu_collectives:
    jax.config.update('jax_cpu_collectives_implementation', cpu_collectives)
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )


def data_host() -> dict[str, int]:
  """This process's place in the data: the input pipeline's `process_index`, `process_count` and
  `local_devices` keywords (one pipeline per process, each batch split among its devices)."""
  return {
    'process_index': jax.process_index(),
    'process_count': jax.process_count(),
    'local_devices': jax.local_device_count(),
  }


AXIS = 'batch'  # the pmap axis name (train_step.AXIS)


def _sharding() -> NamedSharding:
  """The sharding pmap gives its outputs: one slice per device of all processes, axis AXIS."""
  return NamedSharding(Mesh(np.array(jax.devices()), (AXIS,)), PartitionSpec(AXIS))


def shard(tree: Any) -> Any:
  """Host arrays [local_devices, ...] -> one global array per leaf, laid out exactly as pmap's
  outputs, so the state a step returns has the type the step was compiled for (no recompiles)."""
  sharding, devices = _sharding(), jax.local_devices()

  def place(x):
    x = np.asarray(x)
    slices = [jax.device_put(x[i : i + 1], d) for i, d in enumerate(devices)]
    return jax.make_array_from_single_device_arrays((jax.device_count(), *x.shape[1:]), sharding, slices)

  return jax.tree_util.tree_map(place, tree)


def replicate(tree: Any) -> Any:
  """A copy of `tree` on every local device, with a leading device axis."""
  n = jax.local_device_count()
  return shard(jax.tree_util.tree_map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree))


def first_local(tree: Any) -> Any:
  """The first local device's slice of pmap outputs (still on device; no host transfer).

  Across processes pmap outputs are global arrays that no process can read whole."""
  return jax.tree_util.tree_map(lambda x: x.addressable_data(0)[0], tree)


def unreplicate(tree: Any) -> Any:
  """The first local device's copy, as host numpy arrays."""
  return jax.device_get(first_local(tree))


def wait_for_all_processes(name: str, timeout_s: int = 1800) -> None:
  """A barrier through the coordination service (no device collective; no-op for one process), by Orbax's
  public `multihost.get_barrier_sync_fn` (JAX exposes its own client only under `jax._src`).

  CPU collectives over gloo give their first rendezvous only 30 s, so processes must reach the
  first collective together: compile first, then meet here.
  """
  if jax.process_count() == 1:
    return
  try:
    barrier = ocp_multihost.get_barrier_sync_fn()
  except ValueError as e:
    raise RuntimeError(
      f'{jax.process_count()} processes but no jax.distributed client ({e}): call '
      f'isojax.core.devices.initialize_distributed first.'
    ) from None
  barrier(key=f'isojax_{name}', timeout_ms=timeout_s * 1000)


def global_batch(tree: Any, sharding: NamedSharding) -> Any:
  """This process's host batch [local_devices, per_device, ...] -> global arrays [global_batch, ...] laid out
  as `sharding` (the jit path): each process passes only its own part (`jax.make_array_from_process_local_data`)."""

  def place(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x.reshape(-1, *x.shape[2:]))

  return jax.tree_util.tree_map(place, tree)


def place_batch(host_batch: Any, mesh: Optional[Mesh]) -> Any:
  """A host batch [local_devices, per_device, ...] where a step or evaluator takes it: split per local device
  (pmap, `mesh` None), or as global arrays over the mesh's data-parallel axes (the jit path)."""
  if mesh is None:
    return shard(host_batch)
  return global_batch(host_batch, NamedSharding(mesh, sharding.batch_spec(mesh)))


@contextlib.contextmanager
def no_host_transfers() -> Iterator[None]:
  """Forbids implicit transfers between host and devices (a NumPy batch or a Python scalar passed to the step, a
  value read back inside it): the train step runs under it, so every copy it needs was made on purpose (prefetch
  places the batches, `jax.device_get` reads the metrics)."""
  with jax.transfer_guard_host_to_device('disallow'), jax.transfer_guard_device_to_host('disallow'):
    yield


def prefetch(batches: Iterable[Any], size: int = 2, place: Callable[[Any], Any] = shard) -> Iterator[Any]:
  """Keeps `size` batches in flight to the devices while the current step runs; `place` puts one there."""
  queue: collections.deque = collections.deque()
  batches = iter(batches)
  for batch in itertools.islice(batches, size):
    queue.append(place(batch))
  while queue:
    yield queue.popleft()
    for batch in itertools.islice(batches, 1):
      queue.append(place(batch))
