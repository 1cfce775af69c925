"""What every evaluator shares: its resolved fields, its data, its compiled function, its schedule.

An evaluator kind is a subclass with `run(variables) -> dict` and `higher_is_better(spec)`, listed in
evaluators.KINDS. Without a mesh, evaluators run under pmap on replicated variables (pmap's layout,
`isojax.core.devices`); with one (the jit path), under jit on the variables as the run placed them, sharded and
never gathered, with batches as global arrays split over the mesh's data-parallel axes, as the train step takes
them.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from isojax import data
from isojax.core import devices
from isojax.core.devices import AXIS  # the pmap axis shared with the train step
from isojax.data import preprocess


class Evaluator:
  """One named evaluator: its data, its compiled function (`self.fn`), its schedule, and where it runs: under
  pmap (`mesh` None) or under jit on `mesh`."""

  kind = ''

  def __init__(self, name: str, spec: dict, model: nn.Module, num_classes: int, mesh: Optional[Mesh] = None):
    self.name, self.spec, self.model, self.train_classes = name, spec, model, num_classes
    self.every = int(spec['every'])
    self.mesh = mesh
    self._builder: Optional[Any] = None
    self.fn: Any = None  # the compiled function (variables, batch) -> outputs that a kind sets (`parallel`)

  @property
  def axis_name(self) -> Optional[str]:
    """The axis a kind's function sums over: pmap's device axis; none under jit, whose batch is global."""
    return AXIS if self.mesh is None else None

  def parallel(self, fn: Any) -> Any:
    """`fn(variables, batch)` over all devices: pmapped, or jitted on the mesh (its inputs' shardings decide
    where the work runs)."""
    return jax.pmap(fn, axis_name=AXIS) if self.mesh is None else jax.jit(fn)

  def place(self, host_batch: Any) -> Any:
    """A host batch [local_devices, per_device, ...] where `fn` takes it (the train step's placement)."""
    return devices.place_batch(host_batch, self.mesh)

  def on_host(self, tree: Any) -> Any:
    """`fn`'s replicated outputs (sums, metrics) as one host copy."""
    return devices.unreplicate(tree) if self.mesh is None else jax.device_get(tree)

  @staticmethod
  def higher_is_better(spec: dict) -> list[str]:
    raise NotImplementedError

  @staticmethod
  def lower_is_better(spec: dict) -> list[str]:
    """The reported metrics that improve downwards (shown, never picking the best checkpoint)."""
    return []

  def due(self, step: int, last: bool) -> bool:
    return last or (self.every > 0 and step % self.every == 0)

  def builder(self):
    if self._builder is None:
      self._builder = data.get_builder(
        self.spec['dataset'], self.spec['data_dir'], self.spec['download'], self.spec['skip_bad_files']
      )
    return self._builder

  def share_builder(self, builder: Any) -> None:
    """Reads its data through `builder` (the training data's, opened and checked once)."""
    self._builder = builder

  def _check_split(self, split: str) -> None:
    try:
      count = data.num_examples(self.builder(), split)
    except Exception as e:  # tfds raises several types for unknown or malformed splits
      raise ValueError(
        f'Evaluator {self.name!r}: dataset {self.spec["dataset"]!r} has no split {split!r} '
        f'(splits: {sorted(self.builder().info.splits)}; {type(e).__name__}).'
      ) from None
    if count == 0:
      raise ValueError(f'Evaluator {self.name!r}: split {split!r} of {self.spec["dataset"]!r} is empty.')

  def validate(self) -> None:
    """Dataset, splits and preprocessing exist: checked before training starts."""
    try:
      builder = self.builder()
    except ValueError as e:
      raise ValueError(f'Evaluator {self.name!r}: {e}') from None
    try:
      preprocess.build(self.spec['pp'], self.spec['image_size'], builder.info.features['image'].shape[-1])
    except ValueError as e:
      raise ValueError(f'Evaluator {self.name!r}: pp {self.spec["pp"]!r}: {e}') from None
    if self.spec['batch_size'] % jax.device_count():
      raise ValueError(
        f'Evaluator {self.name!r}: batch_size={self.spec["batch_size"]} is not divisible by the '
        f'{jax.device_count()} devices.'
      )

  def batches(self, split: str):
    return devices.prefetch(
      data.eval_batches(
        self.builder(),
        split=split,
        pp=self.spec['pp'],
        image_size=self.spec['image_size'],
        per_device_batch=self.spec['batch_size'] // jax.device_count(),
        **devices.data_host(),
        cache=self.spec['cache'],
      ),
      place=self.place,
    )

  def compile(self, variables: Any) -> None:
    """Compiles the function ahead of time (processes then start evaluating together)."""
    channels = self.builder().info.features['image'].shape[-1]
    size, shape = self.spec['image_size'], (jax.local_device_count(), self.spec['batch_size'] // jax.device_count())
    batch = {
      'image': np.zeros((*shape, size, size, channels), np.float32),
      'label': np.zeros(shape, np.int32),
      'mask': np.zeros(shape, np.float32),
    }
    self.fn.lower(variables, self.place(batch)).compile()

  def run(self, variables: Any) -> dict:
    """Metrics for `variables`: replicated over the local devices (pmap), or as placed on the mesh (jit)."""
    raise NotImplementedError

  def evaluate(self, variables: Any, step: Optional[int] = None) -> dict:
    """`run`, with a failure raised as one error naming this evaluator (and the step, in training)."""
    try:
      return self.run(variables)
    except Exception as e:
      at = f' at step {step}' if step is not None else ''
      raise RuntimeError(f'Evaluator {self.name!r} ({self.kind}) failed{at}: {type(e).__name__}: {e}') from e
