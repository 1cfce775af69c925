"""Starting from pretrained weights.

`create(path)` builds the model a weight file describes and loads it: `(model, variables)` with
the source's logits and no hand-set flags. `load(path, model, image_size)` fills a model you
built. `describe(path)` says what a file holds (architecture, classes, image size, assumptions).

Fine-tuning semantics (as in the ViT paper): when the class count differs the head is
re-initialised (as a fresh model of that family starts it: zeros for ViT and Mixer); when the image size
differs, learned position embeddings are resized bilinearly over their 2D grid, keeping the class token.
Blocks stacked by `scan=True` and unrolled ones load into each other (`models.blocks_like`, as big_vision's
`vit.load` converts with `pyloop_to_scan` / `scan_to_pyloop`). Any other mismatch is an error naming the first
parameter that does not fit.

Sources: the workdir of an isojax run (its latest checkpoint); the `.npz` files published by
google-research/vision_transformer and big_vision; timm (and facebookresearch) state dicts in `.pth`, `.bin`
or `.safetensors`, read without torch (files.py). Each family's reader, in the family's file, turns the
tensors into its parameters; the registry finds the one family that claims a file.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from isojax import models
from isojax.core import workdir as workdir_lib
from isojax.models.convert import Weights
from isojax.weights import archive, files, runs

# Parameters that are replaced, not loaded, when their shape differs from the target's.
REINIT_ON_MISMATCH = ('head/', 'pre_logits/')


def _flatten(tree: Any) -> dict[str, Any]:
  return {'/'.join(k): v for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


def resize_posemb(posemb: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
  """[1, (1+)g*g, C] -> [1, (1+)G*G, C]: bilinear over the 2D grid, class token kept as is."""
  tokens, width = target_shape[1], target_shape[2]
  extra = posemb.shape[1] - math.isqrt(posemb.shape[1]) ** 2  # a leading class token
  target_extra = tokens - math.isqrt(tokens) ** 2
  if extra != target_extra or posemb.shape[2] != width or extra > 1:
    raise ValueError(f'Cannot resize position embedding {posemb.shape} to {target_shape}.')
  head, grid = posemb[:, :extra], posemb[:, extra:]
  old, new = math.isqrt(grid.shape[1]), math.isqrt(tokens - extra)
  grid = grid.reshape(1, old, old, width)
  grid = jax.image.resize(grid, (1, new, new, width), method='bilinear')
  return np.concatenate([head, np.asarray(grid).reshape(1, new * new, width)], axis=1)


def adapt(source: dict, target: dict, strict: bool = True, initialise: Optional[Callable[[], dict]] = None) -> dict:
  """`target`-shaped variables filled from `source` with the fine-tuning rules above.

  `target` holds the model's variables, or only their shapes (`jax.eval_shape`) with `initialise`
  giving the values on demand: initialising a large model compiles for seconds, and only a
  re-initialised head needs fresh values.
  Every tensor of `source` must be used: one the model has no place for (LayerScale, fc_norm,
  pre_logits, a learned position embedding for a sin-cos model, ...) means the model is not
  configured as the weights were trained, and fails the load, listing the unused and the
  missing ones. `strict=False` loads anyway and reports them as a warning.
  """
  source = models.blocks_like(flax.core.unfreeze(source), flax.core.unfreeze(target))  # scanned <-> unrolled
  src, out, used, missing = _flatten(source), {}, set(), []
  initialised: dict = {}

  def fresh(path, init):  # a fresh layer (isojax heads start at zero, as the ViT paper fine-tunes)
    if not isinstance(init, jax.ShapeDtypeStruct):
      return init
    if not initialised:
      if initialise is None:
        raise ValueError(f'{path!r} starts fresh, but the target holds only shapes; pass initialise= to adapt.')
      initialised.update(_flatten(initialise()))
    return initialised[path]

  for path, init in _flatten(target).items():
    shape = tuple(init.shape)
    if path not in src:
      if path.startswith(tuple(f'params/{p}' for p in REINIT_ON_MISMATCH)):
        out[path] = fresh(path, init)
        missing.append(path)
        continue
      raise ValueError(f'Pretrained weights have no {path!r} (shape {shape}); they are for another architecture.')
    used.add(path)
    value = np.asarray(src[path])
    if value.shape == shape:
      out[path] = value.astype(init.dtype)
    elif path.split('/', 1)[1].startswith(REINIT_ON_MISMATCH):
      out[path] = fresh(path, init)
    elif path.endswith('pos_embedding'):
      out[path] = resize_posemb(value, shape).astype(init.dtype)
    else:
      raise ValueError(
        f'Pretrained {path!r} has shape {value.shape}, but the model expects '
        f'{shape}; they are for another architecture.'
      )
  unused = sorted(set(src) - used)
  if unused:
    message = (
      f'{len(unused)} tensor(s) in the weights are not used by the model: {unused[:8]}'
      f'{" ..." if len(unused) > 8 else ""}; re-initialised instead of loaded: {missing}. The model '
      f'is not configured as the weights were trained (LayerScale, fc_norm, pre_logits, pooling, '
      f'position embedding?).'
    )
    if strict:
      raise ValueError(message + ' Configure the model to match, or load with strict=False.')
    warnings.warn(message, stacklevel=2)
  return flax.traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in out.items()})


def describe(path: str, allow_non_finite: bool = False) -> Weights:
  """What the weight file at `path` holds: variables in isojax's layout plus the architecture
  (family, factory fields, classes, image size) its tensors show, and what had to be assumed."""
  file_format, tensors = files.read(path, allow_non_finite)
  try:
    return models.reader_for(file_format, tensors).read(tensors)
  except ValueError as e:
    raise ValueError(f'{path!r}: {e}') from None
  except KeyError as e:  # the family that claimed the file misses a tensor its layout needs
    raise ValueError(
      f"{path!r} has no tensor {e.args[0]!r}, which its family's layout needs; is it complete?"
    ) from None
  except (TypeError, IndexError, ArithmeticError) as e:  # a tensor of the wrong rank or size for its role
    raise ValueError(f'{path!r}: a tensor does not fit its role ({archive.cause(e)}).') from None


def read(path: str, allow_non_finite: bool = False) -> dict:
  """The variables stored at `path`, as nested dicts of host arrays, in isojax's layout."""
  if workdir_lib.is_run(path):
    _, variables, _ = runs.load(path)
    return variables
  return describe(path, allow_non_finite).variables


def _fresh(model: nn.Module, image_size: int, channels: int) -> dict:
  """`adapt`'s target and initialise: the model's variable shapes now, their values if a layer is re-initialised."""
  init = lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, channels)), train=False)
  return {'target': jax.eval_shape(init), 'initialise': lambda: jax.device_get(jax.jit(init)())}


def load(
  path: str, model: nn.Module, image_size: int, channels: int = 3, strict: bool = True, allow_non_finite: bool = False
) -> dict:
  """Variables for `model` at `image_size`, initialised from the weights at `path` (see `adapt`)."""
  if workdir_lib.is_run(path):
    return _adapted(path, read(path), model, image_size, channels, strict)
  weights = describe(path, allow_non_finite)
  _check_heads(path, weights, model)
  return _adapted(path, weights.variables, model, image_size, channels, strict)


def _adapted(path: str, variables: dict, model: nn.Module, image_size: int, channels: int, strict: bool) -> dict:
  """`adapt`, with a mismatch between the weights and the model named after the file."""
  try:
    return adapt(variables, **_fresh(model, image_size, channels), strict=strict)
  except ValueError as e:
    raise ValueError(f'{path!r}: {e}') from None


def _check_heads(path: str, weights: Weights, model: nn.Module) -> None:
  """Attention heads leave no trace in the fused qkv shape: compare them where the file shows them."""
  heads = models.attention_heads(model)
  shown = weights.fields.get('num_heads')
  if heads is not None and shown is not None and 'num_heads' not in weights.assumed and heads != shown:
    raise ValueError(
      f'{path!r} has {shown} attention heads (its query kernel is [width, {shown}, width/{shown}]), '
      f'but the model has num_heads={heads}; build it with num_heads={shown}, or use '
      f'isojax.weights.pretrained.create(path).'
    )


def create(
  path: str,
  num_classes: Optional[int] = None,
  image_size: Optional[int] = None,
  strict: bool = True,
  allow_non_finite: bool = False,
  **overrides: Any,
) -> tuple[nn.Module, dict]:
  """(model, variables) for the weights at `path`, the model built from what the file shows.

  Official vision_transformer / big_vision `.npz` files and timm state dicts carry their own architecture
  (`describe`); the workdir of an isojax run carries its config. `num_classes` and `image_size` default to the
  file's: another class count re-initialises the head, another image size resizes learned position embeddings
  (fine-tuning semantics of `adapt`). `overrides` set what a file cannot show (timm's head count) or run-time
  options (`dtype`, `drop_path_rate`, `kernels`, ...); one that contradicts the file is an error.
  A tensor holding NaN or inf is refused unless `allow_non_finite`.
  """
  if workdir_lib.is_run(path):
    return _create_from_run(path, num_classes, image_size, strict, overrides)
  weights = describe(path, allow_non_finite)
  for field, value in overrides.items():
    if field in weights.fields and weights.fields[field] != value and field not in weights.assumed:
      raise ValueError(
        f'{path!r} holds a model with {field}={weights.fields[field]!r}; the override '
        f'{field}={value!r} contradicts the file.'
      )
  fields = {**weights.fields, **overrides}
  classes = num_classes or weights.num_classes
  if classes is None:
    raise ValueError(f'{path!r} has no classification head (a feature extractor); pass num_classes= to add one.')
  name = models.name_for(weights.family, fields)
  model = models.create(name, classes, **fields)
  if weights.assumed and not set(weights.assumed) <= set(overrides):
    logging.info(
      'pretrained.create(%r) assumed %s', path, {k: v for k, v in weights.assumed.items() if k not in overrides}
    )
  size = image_size or weights.image_size or models.default_image_size(name)
  return model, _adapted(path, weights.variables, model, size, weights.channels, strict)


def _create_from_run(
  path: str, num_classes: Optional[int], image_size: Optional[int], strict: bool, overrides: dict
) -> tuple[nn.Module, dict]:
  model, variables, config = runs.load(path)
  if num_classes is None and image_size is None and not overrides:
    return model, variables
  size = image_size or config.data.image_size
  classes = num_classes or int(variables['params']['head']['bias'].shape[0])
  fields = models.config_fields(config)
  model = models.create(config.model.name, classes, **{**fields, **overrides})
  return model, _adapted(path, variables, model, size, models.input_channels(variables), strict)
