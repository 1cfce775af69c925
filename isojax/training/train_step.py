"""The pure training step: a function of (state, batch, rng), nothing hidden (evaluation: isojax/evaluation).

One function, two ways to run it:
- `pmapped_train_step` (config.parallelism='pmap', the default): written per device under
  `jax.pmap(..., axis_name=AXIS)`; gradients, metrics and BatchNorm statistics are averaged across devices with
  `lax.pmean`, and the state is replicated on every device.
- `jitted_train_step` ('jit'): the same function with `axis_name=None` on the global batch, under `jax.jit` with
  the state placed by `isojax.core.sharding` (data parallel, FSDP, tensor parallel). The mean loss of the global
  batch has the mean of the per-device gradients as its gradient, and BatchNorm (built without an axis name)
  takes its statistics over the global batch as pmap's synced BatchNorm does. What pmap does per device is done
  per batch shard: mixup / CutMix partners and random erasing run under `jax.shard_map`, each shard with the
  step's key folded with its index as pmap folds the device's, and gradient accumulation takes each shard's
  k-th micro-batch as pmap's devices do. So with dropout and drop-path off both compute the same step, mixup
  and erasing on; dropout and drop-path draw one mask for the global batch from the step's key where pmap
  draws each device's from its own.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from isojax.core import losses, sharding
from isojax.core.devices import AXIS


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; checkpoints hold exactly this."""

  step: jax.Array
  params: Any
  batch_stats: Any  # {} for models without BatchNorm
  opt_state: Any
  ema_params: Any  # None unless an EMA of the parameters is kept
  # The EMA of BatchNorm statistics, kept with ema_params: timm's ModelEmaV2/V3 average the
  # whole state_dict, buffers included (timm/utils/model_ema.py). {} without BatchNorm.
  ema_batch_stats: Any = None

  def variables(self, use_ema: bool = False) -> dict:
    if use_ema and self.ema_params is not None:
      params, batch_stats = self.ema_params, self.ema_batch_stats
    else:
      params, batch_stats = self.params, self.batch_stats
    return {'params': params, **({'batch_stats': batch_stats} if batch_stats else {})}


def init_state(
  model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, image_shape: tuple[int, ...], ema: bool
) -> TrainState:
  """Fresh parameters, optimizer state and (optionally) EMA for a [1, *image_shape] input."""
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=tx.init(params),
    ema_params=params if ema else None,
    ema_batch_stats=batch_stats if ema else None,
  )


def mix(
  images: jax.Array,
  targets: jax.Array,
  rng: jax.Array,
  mixup_alpha: float,
  cutmix_alpha: float,
  switch_prob: float = 0.5,
) -> tuple[jax.Array, jax.Array]:
  """Mixup / CutMix with the reversed batch (timm's batch mode); one of them per batch."""
  if not mixup_alpha and not cutmix_alpha:
    return images, targets
  rng_mix, rng_cut, rng_switch, rng_box = jax.random.split(rng, 4)
  batch, height, width = images.shape[:3]
  flipped, flipped_targets = images[::-1], targets[::-1]
  lam_mix = jax.random.beta(rng_mix, mixup_alpha, mixup_alpha) if mixup_alpha else 1.0
  lam_cut = jax.random.beta(rng_cut, cutmix_alpha, cutmix_alpha) if cutmix_alpha else 1.0
  # CutMix: a box of area (1 - lam); lam is then corrected to the box actually pasted.
  ratio = jnp.sqrt(1.0 - lam_cut)
  cut_h, cut_w = (height * ratio).astype(jnp.int32), (width * ratio).astype(jnp.int32)
  cy, cx = jax.random.randint(rng_box, (2,), 0, jnp.array([height, width]))
  top, bottom = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  left, right = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  lam_cut = 1.0 - box.sum() / (height * width)
  use_cut = jnp.asarray(bool(cutmix_alpha)) & (
    jnp.logical_not(bool(mixup_alpha)) | (jax.random.uniform(rng_switch) < switch_prob)
  )
  cut_images = jnp.where(box[None, :, :, None], flipped, images)
  mix_images = lam_mix * images + (1.0 - lam_mix) * flipped
  lam = jnp.where(use_cut, lam_cut, lam_mix)
  images = jnp.where(use_cut, cut_images, mix_images)
  return images, lam * targets + (1.0 - lam) * flipped_targets


def erase(images: jax.Array, rng: jax.Array, erasing: Optional[dict]) -> jax.Array:
  """timm's RandomErasing on the device batch, after mixup, as its prefetching loader applies it (timm
  data/loader.py PrefetchLoader: normalise, then erase the mixed batch). Per image: with probability
  `prob`, up to 10 attempts of an area U(area_min, area_max) and a log-uniform aspect in [aspect_min,
  1 / aspect_min]; the first box that fits (h < height, w < width) at a uniform corner is filled with
  N(0, 1) per pixel ('noise', timm `pixel`), per channel ('channel', `rand`) or zeros ('zero', `const`)."""
  if not erasing or not erasing.get('prob'):
    return images
  batch, height, width, channels = images.shape
  lo, hi = erasing.get('area_min', 0.02), erasing.get('area_max', 1 / 3)
  log_aspect = jnp.log(erasing.get('aspect_min', 0.3))

  def one(image, key):
    k_apply, k_area, k_aspect, k_top, k_left, k_fill = jax.random.split(key, 6)
    area = jax.random.uniform(k_area, (10,), minval=lo, maxval=hi) * height * width
    aspect = jnp.exp(jax.random.uniform(k_aspect, (10,), minval=log_aspect, maxval=-log_aspect))
    heights = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    widths = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (heights < height) & (widths < width)
    first = jnp.argmax(fits)
    h, w = heights[first], widths[first]
    top = jax.random.randint(k_top, (), 0, height - h + 1)
    left = jax.random.randint(k_left, (), 0, width - w + 1)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    box = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    shape = {'noise': image.shape, 'channel': (channels,), 'zero': (channels,)}[erasing.get('fill', 'noise')]
    values = jax.random.normal(k_fill, shape, image.dtype) * (erasing.get('fill', 'noise') != 'zero')
    apply = (jax.random.uniform(k_apply) < erasing['prob']) & fits.any()
    return jnp.where(apply & box[..., None], jnp.broadcast_to(values, image.shape), image)

  return jax.vmap(one)(images, jax.random.split(rng, batch))


def _on_device(images, targets, rng, normalization, mixup_alpha, cutmix_alpha, erasing):
  """The batch's device-side augmentation: normalisation of uint8 batches, mixup/CutMix, then random erasing of
  the mixed batch (timm's order)."""
  if normalization is not None:
    images = normalize_on_device(images, *normalization)
  images, targets = mix(images, targets, rng, mixup_alpha, cutmix_alpha)
  # the erasing key is folded from the mixing key, so the mixing and model keys stay those of earlier versions
  return erase(images, jax.random.fold_in(rng, 1), erasing), targets


def normalize_on_device(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 pixels -> float32 (images - mean) / std; refuses float batches, which were normalised already."""
  if images.dtype != jnp.uint8:
    raise TypeError(
      f'image_normalization expects the uint8 batches of data.uint8_batches; got {images.dtype} '
      f'images, which the host has normalised already (drop image_normalization).'
    )
  return (images.astype(jnp.float32) - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _gradients(
  model: nn.Module,
  loss: str,
  state: TrainState,
  images: jax.Array,
  targets: jax.Array,
  labels: jax.Array,
  rng: jax.Array,
  accum_steps: int,
  shards: int = 1,
) -> tuple[Any, Any, jax.Array, jax.Array]:
  """(gradients, new batch statistics, loss, accuracy) of this device's batch, over `accum_steps` micro-batches
  (of a batch split in `shards` along its first dimension: micro-batch k is every shard's k-th part)."""

  def loss_fn(params, batch_stats, images, targets, labels, rng):
    variables = {'params': params, **({'batch_stats': batch_stats} if batch_stats else {})}
    out: Any = model.apply(
      variables, images, train=True, rngs={'dropout': rng}, mutable=['batch_stats'] if batch_stats else False
    )
    logits, updates = out if batch_stats else (out, {})
    value = losses.per_example(logits, targets, loss).mean()
    accuracy = (logits.argmax(-1) == labels).mean()
    return value, (updates.get('batch_stats', batch_stats), accuracy)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accum_steps == 1:  # straight-line code: XLA optimises across a loop body far less
    (value, (batch_stats, accuracy)), grads = grad_fn(
      state.params, state.batch_stats, images, targets, labels, jax.random.fold_in(rng, 0)
    )
    return grads, batch_stats, value, accuracy

  def accumulate(carry, xs):
    grads, batch_stats, total, correct, index = carry
    (l, (batch_stats, a)), g = grad_fn(state.params, batch_stats, *xs, jax.random.fold_in(rng, index))
    return (jax.tree_util.tree_map(jnp.add, grads, g), batch_stats, total + l, correct + a, index + 1), None

  split = functools.partial(micro_batches, accum_steps=accum_steps, shards=shards)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
  (grads, batch_stats, value, accuracy, _), _ = jax.lax.scan(
    accumulate, (zeros, state.batch_stats, 0.0, 0.0, 0), (split(images), split(targets), split(labels))
  )
  grads, value, accuracy = jax.tree_util.tree_map(lambda x: x / accum_steps, (grads, value, accuracy))
  return grads, batch_stats, value, accuracy


def micro_batches(x: jax.Array, accum_steps: int, shards: int = 1) -> jax.Array:
  """[shards * per_shard, ...] -> [accum_steps, shards * per_shard / accum_steps, ...], micro-batch k holding the
  k-th part of every shard: pmap's accumulation on each device, and on the jit path no example leaves its device."""
  per_shard = x.shape[0] // shards
  x = x.reshape(shards, accum_steps, per_shard // accum_steps, *x.shape[1:])
  return jnp.swapaxes(x, 0, 1).reshape(accum_steps, x.shape[0] * x.shape[2], *x.shape[3:])


def _per_shard(augment: Callable, mesh: Optional[jax.sharding.Mesh]) -> Callable:
  """`augment(images, targets, rng)` on the jit path's global batch as pmap runs it on each device: under
  `jax.shard_map` over the mesh's batch axes, each shard with the step's key folded with the shard's index (the
  device index pmap folds), so mixup partners, CutMix boxes and erased boxes are pmap's."""
  if mesh is None:
    return lambda images, targets, rng: augment(images, targets, jax.random.split(rng)[0])
  axes = sharding.batch_axes(mesh)
  batch = jax.sharding.PartitionSpec(axes or None)

  def per_shard(images, targets, rng):
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axes)) if axes else rng
    return augment(images, targets, jax.random.split(rng)[0])

  replicated = jax.sharding.PartitionSpec()
  return jax.shard_map(per_shard, mesh=mesh, in_specs=(batch, batch, replicated), out_specs=(batch, batch))


def _with_ema(state: TrainState, params: Any, batch_stats: Any, ema_decay: float) -> tuple[Any, Any]:
  """The EMA of the parameters and of the BatchNorm statistics after this step: decay * ema + (1 - decay) * new."""
  ema_params, ema_batch_stats = state.ema_params, state.ema_batch_stats
  if ema_params is not None:
    ema_params = optax.incremental_update(params, ema_params, 1.0 - ema_decay)
    if ema_batch_stats is not None:
      ema_batch_stats = optax.incremental_update(batch_stats, ema_batch_stats, 1.0 - ema_decay)
  return ema_params, ema_batch_stats


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """What a train step does besides the optimizer update, as one value (the loop fills it from the config).

  `image_normalization` (mean, std): the batch holds uint8 pixels that the host left unnormalised
  (isojax.data.device_normalization); they become (image - mean) / std in the step. `erasing`
  (config.random_erasing): timm's random erasing of the mixed batch (`erase`)."""

  num_classes: int
  label_smoothing: float = 0.0
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  accum_steps: int = 1
  ema_decay: float = 0.0
  loss: str = 'softmax_xent'
  image_normalization: Optional[tuple[Sequence[float], Sequence[float]]] = None
  erasing: Optional[dict] = None


def train_step(
  state: TrainState,
  batch: dict,
  rng: jax.Array,
  *,
  model: nn.Module,
  tx: optax.GradientTransformation,
  learning_rate: Callable[[Any], Any],
  options: StepOptions,
  axis_name: Optional[str] = AXIS,
  mesh: Optional[jax.sharding.Mesh] = None,
) -> tuple[TrainState, dict]:
  """One optimizer step on this device's share of the global batch (pmap, `axis_name`) or on the global batch
  (jit, `mesh`: its batch shards are augmented as pmap's devices).

  The step's randomness is `rng` folded with the step number and the device index, so
  dropout differs per device and per step, and a resumed run draws the same keys.
  """
  rng = jax.random.fold_in(rng, state.step)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  rng_model = jax.random.split(rng)[1]
  o = options
  targets = losses.targets(batch['label'], o.num_classes, o.label_smoothing)
  augment = functools.partial(
    _on_device,
    normalization=o.image_normalization,
    mixup_alpha=o.mixup_alpha,
    cutmix_alpha=o.cutmix_alpha,
    erasing=o.erasing,
  )
  images, targets = _per_shard(augment, mesh)(batch['image'], targets, rng)
  shards = 1 if mesh is None else sharding.batch_shards(mesh)
  grads, batch_stats, value, accuracy = _gradients(
    model, o.loss, state, images, targets, batch['label'], rng_model, o.accum_steps, shards
  )
  if axis_name is not None:
    grads, value, accuracy = jax.lax.pmean((grads, value, accuracy), axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params, ema_batch_stats = _with_ema(state, params, batch_stats, o.ema_decay)
  new_state = dataclasses.replace(
    state,
    step=state.step + 1,
    params=params,
    batch_stats=batch_stats,
    opt_state=opt_state,
    ema_params=ema_params,
    ema_batch_stats=ema_batch_stats,
  )
  metrics = {
    'loss': value,
    'accuracy': accuracy,
    'grad_norm': optax.global_norm(grads),
    'param_norm': optax.global_norm(params),
    'lr': learning_rate(state.step),
  }
  return new_state, metrics


def pmapped_train_step(**static) -> Callable:
  """`train_step` under pmap: state and batch split over local devices, state donated."""
  return jax.pmap(functools.partial(train_step, **static), axis_name=AXIS, donate_argnums=(0,), in_axes=(0, 0, None))


def state_placements(
  model: nn.Module,
  tx: optax.GradientTransformation,
  image_shape: tuple[int, ...],
  ema: bool,
  mesh: jax.sharding.Mesh,
  strategy: sharding.Strategy,
) -> tuple[TrainState, TrainState]:
  """(the state's shapes, its NamedShardings under `strategy`), from abstract evaluation: nothing allocated."""
  init = functools.partial(init_state, model, tx, image_shape=image_shape, ema=ema)
  shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
  return shapes, sharding.shardings(shapes, strategy, mesh)


def jitted_train_step(mesh: jax.sharding.Mesh, placements: TrainState, **static) -> Callable:
  """`train_step` on the global batch under jit: the state stays in `placements` and is donated, the batch is
  split over the mesh's data-parallel axes, the key and the metrics are replicated."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch = jax.sharding.NamedSharding(mesh, sharding.batch_spec(mesh))
  return jax.jit(
    functools.partial(train_step, axis_name=None, mesh=mesh, **static),
    in_shardings=(placements, batch, replicated),
    out_shardings=(placements, replicated),
    donate_argnums=(0,),
  )
