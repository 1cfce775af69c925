"""Where a run's state and batches live, the one thing the two parallelisms do differently.

`config.parallelism='pmap'` (the default): the state replicated on every local device with a leading device axis,
batches split per device, the step under `jax.pmap`. `'jit'`: the state placed on `config.mesh` by
`config.sharding_strategy` (isojax/core/sharding.py), created directly in its shardings, batches as global arrays
split over the mesh's data-parallel axes, the step under `jax.jit`. The training loop asks a `Placement` and
never which of the two it is.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Optional

import flax.linen as nn
import jax
import ml_collections
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from isojax.core import devices, sharding
from isojax.training import train_step


@dataclasses.dataclass(frozen=True)
class Placement:
  """pmap's replication (mesh None) or the jit path's mesh and the state's NamedShardings."""

  mesh: Optional[Mesh] = None
  states: Any = None  # a TrainState of NamedShardings (jit)
  shapes: Any = None  # a TrainState of ShapeDtypeStructs (jit)

  def fresh(self, init: Callable[[jax.Array], train_step.TrainState], rng: jax.Array) -> Any:
    """A new state where it lives: on the host for pmap (replicated later), in its shardings for jit."""
    if self.mesh is None:
      return on_host(init, rng)
    return jax.jit(init, out_shardings=self.states)(rng)

  def place(self, state: Any) -> Any:
    """A host (or already placed) state where the step takes it."""
    if self.mesh is None:
      return devices.replicate(state)
    return jax.device_put(state, self.states)

  def checkpointed(self, state: Any) -> Any:
    """What a checkpoint of the placed state saves: pmap's one copy on the host; the jit path's arrays as they
    are, each written from its shards (never gathered on one device or host)."""
    return devices.unreplicate(state) if self.mesh is None else state

  def restore_target(self, host_template: Callable[[], Any]) -> Any:
    """What a checkpoint is restored into: pmap's host template (`host_template()`, replicated after), the jit
    path's `abstract()` state (restored straight onto this mesh, whatever mesh saved it)."""
    return host_template() if self.mesh is None else self.abstract()

  def abstract(self) -> Any:
    """The jit path's state as ShapeDtypeStructs in their shardings: what compiles or restores without arrays."""
    return jax.tree_util.tree_map(
      lambda x, where: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where), self.shapes, self.states
    )

  def host(self, state: Any) -> Any:
    """One whole copy of the placed state as host arrays on every process (what a checkpoint holds); across
    processes, each one's shards gathered to all."""
    if self.mesh is None:
      return devices.unreplicate(state)
    return multihost_utils.process_allgather(state, tiled=True) if jax.process_count() > 1 else jax.device_get(state)

  def metrics(self, metrics: Any) -> Any:
    """The step's metrics, one value each, still on a device."""
    return devices.first_local(metrics) if self.mesh is None else metrics

  def batch(self, host_batch: Any) -> Any:
    """A host batch [local_devices, per_device, ...] where the step takes it."""
    return devices.place_batch(host_batch, self.mesh)

  def evaluated(self, variables: Any) -> Any:
    """The variables as the evaluators take them: pmap's replicated copies, or the jit path's sharded arrays as
    they are (its evaluators run on the mesh: nothing is gathered on one device or host)."""
    return variables

  def step_function(self, **static: Any) -> Any:
    """The train step compiled for this placement (a jitted or pmapped function: `.lower` compiles it ahead)."""
    if self.mesh is None:
      return train_step.pmapped_train_step(**static)
    return train_step.jitted_train_step(self.mesh, self.states, **static)


def on_host(init: Callable[[jax.Array], train_step.TrainState], rng: jax.Array) -> Any:
  """`init(rng)` computed on the host CPU, as numpy arrays: never whole on an accelerator."""
  with jax.default_device(jax.local_devices(backend='cpu')[0]):
    return jax.device_get(jax.jit(init)(rng))


def strategy(config: ml_collections.ConfigDict) -> sharding.Strategy:
  """config.sharding_strategy as (regex, tactics) pairs; () means the mesh's default rules (`on_mesh`)."""
  return tuple(tuple(rule) for rule in config.get('sharding_strategy', ()))


def create(
  config: ml_collections.ConfigDict, model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple
) -> Placement:
  """The run's placement: pmap's, or the jit path's shardings of this model's state on config.mesh."""
  if config.get('parallelism', 'pmap') == 'pmap':
    return Placement()
  mesh = sharding.make_mesh(config.mesh)
  return on_mesh(mesh, model, tx, image_shape, config.ema_decay > 0, strategy(config))


def on_mesh(
  mesh: Mesh,
  model: nn.Module,
  tx: optax.GradientTransformation,
  image_shape: tuple,
  ema: bool = False,
  rules: sharding.Strategy = (),
) -> Placement:
  """The jit path's placement of this model's state on `mesh` by `rules` (() : the mesh's default strategy)."""
  shapes, states = train_step.state_placements(
    model, tx, image_shape, ema, mesh, tuple(rules) or sharding.default_strategy(mesh)
  )
  return Placement(mesh, states, shapes)


def report(
  config: ml_collections.ConfigDict, model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple
) -> dict:
  """The dry run's placement fields: the parallelism, the mesh's axis sizes (jit), the bytes of parameters +
  optimizer state + EMA in all and on each device (pmap: all of it on every device), and the arrays above the
  minimum size that stay whole."""
  parallelism = config.get('parallelism', 'pmap')
  if parallelism == 'pmap':
    init = functools.partial(train_step.init_state, model, tx, image_shape=image_shape, ema=config.ema_decay > 0)
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    total = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(shapes))
    per_device, whole, mesh = total, [], None
  else:
    placement = create(config, model, tx, image_shape)
    total, per_device = sharding.state_bytes(placement.shapes, placement.states)
    whole = sharding.whole_above_minimum(placement.shapes, placement.states)
    mesh = dict(placement.mesh.shape) if placement.mesh is not None else None
  return {
    'parallelism': parallelism,
    'mesh': mesh,
    'state_bytes_total': total,
    'state_bytes_per_device': per_device,
    'whole_on_every_device': whole,
  }
