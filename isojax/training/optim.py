"""Optax optimizer and learning-rate schedule from `config.optimizer`.

Parameters are addressed by their '/'-joined path (`block_3/token_mixing/attention/qkv/kernel`)
and selected by regex, as in big_vision: `decay_params` picks what weight decay applies to
(by default every kernel: not biases, norms, position embeddings, class token or probes),
`freeze` picks what does not train at all.

Weight decay comes in the two conventions that published recipes use, chosen by name
(`weight_decay_mode`), because the same number means decay 1,000x apart in them:
  'lr_scaled'       param -= lr(t) * wd * param: optax.adamw, torch.optim.AdamW, timm.
  'lr_independent'  param -= (lr(t) / lr) * wd * param: big_vision/optax.py `make` adds
                    `wd * params` after `optax.scale(config.lr)` and before the schedule
                    multiplier, so wd is not multiplied by the peak learning rate.
SGD's decay is coupled L2 (added to the gradient before momentum, as torch.optim.SGD).

Durations resolve at run time (as big_vision's `utils.steps`): warmup is given in steps,
epochs or a fraction of training, and a warmup that does not fit is an error, not a clamp.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from isojax.core.config import DEFAULT_DECAY_PARAMS, OPTIMIZERS, SCHEDULES, WEIGHT_DECAY_MODES

# locuslab/convmixer-cifar10 train.py l.99-100 (and its timm copy's scheduler/onecycle_lr.py):
# np.interp(t, [0, E*2//5, E*4//5, E], [0, lr_max, lr_max/20, 0]), t in epochs: the knots fall on whole
# epochs. Without epochs (a num_steps run) they fall at these fractions of training.
ONECYCLE_KNOTS = (0.0, 0.4, 0.8, 1.0)
ONECYCLE_VALUES = (0.0, 1.0, 1.0 / 20.0, 0.0)


def onecycle_knots(total_steps: int, steps_per_epoch: Optional[float]) -> tuple[float, ...]:
  """The one-cycle knots in steps: at whole epochs E*2//5 and E*4//5 as locuslab rounds them, or at
  ONECYCLE_KNOTS of `total_steps` when the run is not counted in epochs."""
  if not steps_per_epoch:
    return tuple(k * total_steps for k in ONECYCLE_KNOTS)
  epochs = max(1, round(total_steps / steps_per_epoch))
  per_epoch = total_steps / epochs
  return (0.0, epochs * 2 // 5 * per_epoch, epochs * 4 // 5 * per_epoch, float(total_steps))


def param_paths(params: Any) -> Any:
  """A tree like `params` whose leaves are their own '/'-joined paths."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path), params
  )


def regex_mask(pattern: str, field: str = 'pattern'):
  """A mask function for optax: True where `pattern` matches the whole parameter path, big_vision's
  semantics (utils.py l.1202 `re.fullmatch`: `head/.*` is not `map_head/...`). A pattern that matches no
  parameter at all is refused: under whole-path matching a search-style pattern ('^block_0/') silently
  selects nothing."""
  compiled = re.compile(pattern)

  def mask(params):
    paths = param_paths(params)
    selected = jax.tree_util.tree_map(lambda p: compiled.fullmatch(p) is not None, paths)
    if not any(jax.tree_util.tree_leaves(selected)):
      example = jax.tree_util.tree_leaves(paths)[0]
      scanned = ' The blocks are scanned (model.scan): one stacked blocks/... tree, no block_i.' * ('blocks' in params)
      raise ValueError(
        f'{field}={pattern!r} matches no parameter path (e.g. {example!r}); patterns match whole paths '
        f"(re.fullmatch, as big_vision), so write e.g. 'block_0/.*' or '.*/kernel'.{scanned}"
      )
    return selected

  return mask


def warmup_steps(config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: Optional[float]) -> int:
  """The warmup in steps, from exactly one of warmup_steps / warmup_epochs / warmup_fraction."""
  given = {
    k: config.get(k) for k in ('warmup_steps', 'warmup_epochs', 'warmup_fraction') if config.get(k) not in (None, 0)
  }
  if len(given) > 1:
    raise ValueError(f'Give the warmup one way only; got {given}. Set the others to 0 / None.')
  if 'warmup_fraction' in given and not 0 <= given['warmup_fraction'] < 1:
    raise ValueError(f'optimizer.warmup_fraction={given["warmup_fraction"]} must be in [0, 1).')
  if any(v < 0 for v in given.values()):
    raise ValueError(f'A warmup cannot be negative: {given}.')
  steps = int(given.get('warmup_steps', 0))
  if 'warmup_epochs' in given:
    if not steps_per_epoch:
      raise ValueError('optimizer.warmup_epochs needs the dataset size; give warmup_steps or warmup_fraction.')
    steps = round(given['warmup_epochs'] * steps_per_epoch)
  if 'warmup_fraction' in given:
    steps = round(given['warmup_fraction'] * total_steps)
  if steps and config.schedule == 'onecycle':
    raise ValueError(
      f"optimizer.schedule='onecycle' has its warmup built in (the first 40% of training); remove the warmup ({given})."
    )
  if steps and steps >= total_steps:
    raise ValueError(
      f'The warmup ({given} = {steps} steps) does not fit in the {total_steps} training steps; '
      f'give it as optimizer.warmup_fraction (e.g. 0.05) or train longer.'
    )
  return steps


def schedule(
  config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: Optional[float] = None
) -> optax.Schedule:
  """The learning rate at each step (the step counter before the update).

  cosine / linear: linear warmup from 0 to `lr`, then decay to `lr * end_lr_factor`, reached
  at step `total_steps`. constant: warmup then `lr`. onecycle: locuslab's piecewise-linear
  schedule, evaluated as the source does at the end of each step, `t = (step + 1) / steps`.
  """
  if config.schedule not in SCHEDULES:
    raise ValueError(f'Unknown optimizer.schedule {config.schedule!r}; expected one of {SCHEDULES}.')
  if total_steps < 1:
    raise ValueError(f'Training needs at least one step, got total_steps={total_steps}.')
  lr = config.lr
  if config.schedule == 'onecycle':
    knots = jnp.asarray(onecycle_knots(total_steps, steps_per_epoch))
    values = jnp.asarray(ONECYCLE_VALUES) * lr
    return lambda step: jnp.interp(jnp.asarray(step, jnp.float32) + 1.0, knots, values)
  warmup = warmup_steps(config, total_steps, steps_per_epoch)
  end = lr * config.get('end_lr_factor', 0.0)
  decay_steps = total_steps - warmup
  kinds = {
    'cosine': lambda: optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0),
    'linear': lambda: optax.linear_schedule(lr, end, decay_steps),
    'constant': lambda: optax.constant_schedule(lr),
  }
  warm = optax.linear_schedule(0.0, lr, warmup) if warmup else optax.constant_schedule(lr)
  return optax.join_schedules([warm, kinds[config.schedule]()], [warmup])


def _mu_dtype(config: ml_collections.ConfigDict) -> Optional[Any]:
  name = config.get('mu_dtype')
  return jnp.dtype(name) if name else None


def create(
  config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: Optional[float] = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer and its schedule (the schedule is also logged as the learning rate)."""
  lr = schedule(config, total_steps, steps_per_epoch)
  decay_mask = regex_mask(config.get('decay_params', DEFAULT_DECAY_PARAMS), 'optimizer.decay_params')
  mode = config.get('weight_decay_mode', 'lr_scaled')
  if mode not in WEIGHT_DECAY_MODES:
    raise ValueError(f'Unknown optimizer.weight_decay_mode {mode!r}; expected one of {WEIGHT_DECAY_MODES}.')
  name, wd = config.name, config.weight_decay
  if name == 'sgd':
    if mode != 'lr_scaled' and wd:
      raise ValueError(
        f"optimizer.weight_decay_mode={mode!r} is not implemented for sgd, whose decay is torch.optim.SGD's "
        f"coupled L2 (added to the gradient, so scaled by the learning rate): use 'lr_scaled' or weight_decay=0."
      )
    # Coupled L2 decay (as torch.optim.SGD): decay joins the gradient before momentum. mu_dtype is the momentum's
    # dtype (vision_transformer train.py l.140-143: optax.sgd(accumulator_dtype='bfloat16')).
    sgd = optax.sgd(lr, momentum=config.momentum, nesterov=config.nesterov, accumulator_dtype=_mu_dtype(config))
    tx = optax.chain(optax.add_decayed_weights(wd, mask=decay_mask), sgd)
  elif name in ('adamw', 'lamb'):
    scale = optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps, mu_dtype=_mu_dtype(config))
    if mode == 'lr_scaled':
      # optax.adamw / optax.lamb: -lr(t) * (adam + wd * param) [lamb: trust ratio in between].
      parts = [scale, optax.add_decayed_weights(wd, decay_mask)]
      if name == 'lamb':
        parts.append(optax.scale_by_trust_ratio())
      tx = optax.chain(*parts, optax.scale_by_learning_rate(lr))
    else:
      # big_vision/optax.py `make`: scale(lr) -> add_decayed_weights(wd) -> scale_by_schedule(mult) -> -1.
      peak = config.lr
      multiplier = lambda step: lr(step) / peak if peak else 0.0
      parts = [scale, optax.scale(peak), optax.add_decayed_weights(wd, decay_mask)]
      if name == 'lamb':
        parts.append(optax.scale_by_trust_ratio())
      tx = optax.chain(*parts, optax.scale_by_schedule(multiplier), optax.scale(-1.0))
  else:
    raise ValueError(f'Unknown optimizer.name {name!r}; expected one of {OPTIMIZERS}.')
  if config.get('clip_norm'):
    tx = optax.chain(optax.clip_by_global_norm(config.clip_norm), tx)
  if config.get('freeze'):
    frozen = regex_mask(config.freeze, 'optimizer.freeze')
    tx = optax.multi_transform(
      {'train': tx, 'frozen': optax.set_to_zero()},
      lambda params: jax.tree_util.tree_map(lambda f: 'frozen' if f else 'train', frozen(params)),
    )
  return tx, lr


def lr_at_percent(
  config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: Optional[float] = None
) -> dict[str, float]:
  """{'0': lr, '10': lr, ..., '100': lr}: the learning rate at each tenth of training."""
  lr = schedule(config, total_steps, steps_per_epoch)
  return {str(p): float(lr(min(round(p / 100 * total_steps), total_steps))) for p in range(0, 101, 10)}


def decay_factor_at_peak(
  config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: Optional[float] = None
) -> float:
  """The fraction by which a decayed kernel shrinks in one zero-gradient step at peak lr.

  Measured, not computed from the formula: one update of the real optimizer on a kernel of
  ones (at `block_0/dense/kernel`, not frozen) with a zero gradient, at the step where the schedule
  is highest. 0 when `decay_params` does not select that kernel.
  """
  if not re.fullmatch(config.get('decay_params', DEFAULT_DECAY_PARAMS), 'block_0/dense/kernel'):
    return 0.0
  unfrozen = ml_collections.ConfigDict({**config.to_dict(), 'freeze': ''})
  tx, lr = create(unfrozen, total_steps, steps_per_epoch)
  steps = np.arange(total_steps + 1)
  peak_step = int(steps[np.argmax(np.asarray(jax.vmap(lr)(steps)))])
  params = {'block_0': {'dense': {'kernel': jnp.ones((2,), jnp.float32)}}}
  state = tx.init(params)
  state = _with_count(state, peak_step)
  updates, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), state, params)
  return float(-updates['block_0']['dense']['kernel'][0])


def _with_count(state: Any, count: int) -> Any:
  """`state` with every step counter set to `count` (to evaluate the update at that step)."""
  has_count = lambda node: 'count' in getattr(node, '_fields', ())
  set_count = lambda node: (
    node._replace(count=jnp.asarray(count, jnp.asarray(node.count).dtype)) if has_count(node) else node
  )
  return jax.tree_util.tree_map(set_count, state, is_leaf=has_count)
