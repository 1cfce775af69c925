"""Optax optimizer and learning-rate schedule from `config.optimizer`.

Parameters are addressed by their '/'-joined path (`block_3/token_mixing/attention/qkv/kernel`)
and selected by regex, as in big_vision: `decay_params` picks what weight decay applies to
(by default every kernel: not biases, norms, position embeddings, class token or probes),
`freeze` picks what does not train at all.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import ml_collections
import optax

DEFAULT_DECAY_PARAMS = r'(^|/)kernel$'


def param_paths(params: Any) -> Any:
  """A tree like `params` whose leaves are their own '/'-joined paths."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path), params)


def regex_mask(pattern: str):
  """A mask function for optax: True where the parameter path matches `pattern`."""
  compiled = re.compile(pattern)
  return lambda params: jax.tree_util.tree_map(lambda p: bool(compiled.search(p)), param_paths(params))


def schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup to `lr`, then cosine / linear decay to `lr * end_lr_factor`, or constant."""
  lr, warmup = config.lr, min(config.warmup_steps, total_steps)
  end = lr * config.get('end_lr_factor', 0.0)
  decay_steps = max(total_steps - warmup, 1)
  kinds = {
      'cosine': lambda: optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0),
      'linear': lambda: optax.linear_schedule(lr, end, decay_steps),
      'constant': lambda: optax.constant_schedule(lr),
  }
  if config.schedule not in kinds:
    raise ValueError(f'Unknown optimizer.schedule {config.schedule!r}; expected one of {sorted(kinds)}.')
  warm = optax.linear_schedule(0.0, lr, warmup) if warmup else optax.constant_schedule(lr)
  return optax.join_schedules([warm, kinds[config.schedule]()], [warmup])


def create(config: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer and its schedule (the schedule is also logged as the learning rate)."""
  lr = schedule(config, total_steps)
  decay_mask = regex_mask(config.get('decay_params', DEFAULT_DECAY_PARAMS))
  name = config.name
  if name == 'adamw':
    tx = optax.adamw(lr, b1=config.b1, b2=config.b2, eps=config.eps,
                     weight_decay=config.weight_decay, mask=decay_mask)
  elif name == 'lamb':
    tx = optax.lamb(lr, b1=config.b1, b2=config.b2, eps=config.eps,
                    weight_decay=config.weight_decay, mask=decay_mask)
  elif name == 'sgd':
    # Coupled L2 decay (as torch.optim.SGD): decay joins the gradient before momentum.
    tx = optax.chain(optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
                     optax.sgd(lr, momentum=config.momentum, nesterov=config.nesterov))
  else:
    raise ValueError(f"Unknown optimizer.name {name!r}; expected 'adamw', 'sgd' or 'lamb'.")
  if config.get('clip_norm'):
    tx = optax.chain(optax.clip_by_global_norm(config.clip_norm), tx)
  if config.get('freeze'):
    frozen = regex_mask(config.freeze)
    tx = optax.multi_transform(
        {'train': tx, 'frozen': optax.set_to_zero()},
        lambda params: jax.tree_util.tree_map(lambda f: 'frozen' if f else 'train', frozen(params)))
  return tx, lr
