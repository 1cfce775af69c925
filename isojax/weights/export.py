"""A trained model shipped to people without JAX: ONNX (through jax2onnx) or serialized StableHLO (`jax.export`).

The artifact takes float32 images [batch, height, width, channels] (the batch symbolic) already preprocessed, and
returns logits. Beside it, `FILE.json` (the sidecar) says what the caller must do first: the run's evaluation
preprocessing as ops with their arguments and the normalisation's mean and std, the class names, the versions, and
the parity measured at export time. An artifact whose outputs differ from JAX's beyond the tolerance, or with
another top-1, is not written. The model is exported with the reference kernels, never the CPU fast paths.

`python -m isojax.export` is the command; docs/export.md the manual (the exporter's limits included).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.metadata
import io
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from isojax import models
from isojax.core import workdir as workdir_lib
from isojax.data import preprocess
from isojax.kernels import REFERENCE
from isojax.weights import pretrained, runs

FORMATS = ('onnx', 'stablehlo')
PARITY_BATCHES = (1, 7)  # one image, and a batch that is neither 1 nor a power of two
TOLERANCE = 1e-4  # max |logit difference| allowed, times max(1, max |logit|)
ONNX_OPSET = 23
# The newest jax2onnx whose requirements allow isojax's orbax-checkpoint (0.13.1 to 0.17.1 declare
# orbax-checkpoint<0.11.37); setup.cfg's `export` extra pins it.
JAX2ONNX_PIN = '0.13.0'
INPUT, OUTPUT = 'images', 'logits'
Runner = Callable[[np.ndarray], np.ndarray]


class ExportError(RuntimeError):
  """The model cannot be exported as asked: what stopped it, measured, and nothing was written."""


@dataclasses.dataclass(frozen=True)
class Exportable:
  """What an export needs: the model and its variables, its input and the caller's preprocessing."""

  module: nn.Module
  variables: dict
  image_size: int
  channels: int
  class_names: tuple[str, ...]
  preprocessing: Optional[dict]  # None for a weight file, which does not say how its images were prepared
  source: dict


def preprocessing_of(spec: str, image_size: int, channels: int) -> dict:
  """The evaluation preprocessing as data a caller without isojax applies: each op with its arguments
  (defaults filled in), and the final normalisation's mean and std over 0..255 pixel values."""
  ops = [{'op': name, **preprocess.defaults(name), **kwargs} for name, kwargs in preprocess.parse(spec)]
  stats = preprocess.device_normalization(spec)
  mean, std = stats if stats is not None else ((0.0,), (1.0,))
  return {
    'spec': spec,
    'ops': ops,
    'image_size': image_size,
    'mean': [float(m) for m in np.broadcast_to(mean, channels)],
    'std': [float(s) for s in np.broadcast_to(std, channels)],
    'pixel_range': [0, 255],
  }


def reference_kernels(family: models.Family) -> dict:
  """The build option that makes a family compute with the reference kernels (where it has fast paths)."""
  return {'kernels': REFERENCE} if 'kernels' in family.options() else {}


def from_run(workdir: str, step: Optional[int | str] = None) -> Exportable:
  """A run's model at `step` (latest, 'best' or a number), with its evaluation preprocessing and class names."""
  _, variables, config = runs.load(workdir, step=step)
  info = workdir_lib.read_dataset_info(workdir)
  channels = models.input_channels(variables)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.kernels = REFERENCE  # the model's meaning in plain lax, never the CPU fast paths
  # scanned blocks unrolled: the exported graph is the plain stack, with no loop for a converter to lower
  model, variables = models.unrolled(
    models.from_config(config, int(variables['params']['head']['bias'].shape[0])), variables
  )
  return Exportable(
    model,
    variables,
    int(config.data.image_size),
    channels,
    tuple(info.get('class_names') or ()),
    preprocessing_of(config.data.eval_pp, int(config.data.image_size), channels),
    {'workdir': os.path.abspath(workdir), 'step': runs.checkpoint_step(workdir, step)},
  )


def from_weights(path: str, image_size: Optional[int] = None) -> Exportable:
  """A published weight file's model, its architecture read from the file (as `pretrained.create`)."""
  weights = pretrained.describe(path)
  family = models.registry.family(weights.family)
  module, variables = pretrained.create(path, image_size=image_size, **reference_kernels(family))
  size = image_size or weights.image_size or models.default_image_size(models.name_for(weights.family, weights.fields))
  classes = int(variables['params']['head']['bias'].shape[0])
  return Exportable(
    module,
    variables,
    int(size),
    models.input_channels(variables),
    tuple(str(i) for i in range(classes)),
    None,
    {'weights': os.path.abspath(path)},
  )


def logits_function(model: Exportable) -> jax.stages.Wrapped:
  """The jitted forward pass at inference (train=False): what every export is measured against."""
  return jax.jit(lambda images: model.module.apply(model.variables, images, train=False))


def parity_inputs(model: Exportable) -> list[np.ndarray]:
  """Seeded images in the range preprocessed pixels take, at each of PARITY_BATCHES."""
  shape = (max(PARITY_BATCHES), model.image_size, model.image_size, model.channels)
  images = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), shape, jnp.float32, -2.0, 2.0))
  return [images[:batch] for batch in PARITY_BATCHES]


def measure_parity(run: Runner, reference: Callable, inputs: list[np.ndarray]) -> dict:
  """{'batch_N': {'max_abs_diff', 'max_abs_logit', 'top1_equal'}} of `run` against JAX."""
  out = {}
  for images in inputs:
    want, got = np.asarray(reference(images)), np.asarray(run(images))
    if got.shape != want.shape:
      raise ExportError(f'The exported model returned shape {got.shape} at batch {len(images)}; JAX {want.shape}.')
    out[f'batch_{len(images)}'] = {
      'max_abs_diff': float(np.abs(got - want).max()),
      'max_abs_logit': float(np.abs(want).max()),
      'top1_equal': bool((got.argmax(-1) == want.argmax(-1)).all()),
    }
  return out


def check_parity(parity: dict, tolerance: float, fmt: str) -> None:
  """Refuses an export whose logits differ beyond `tolerance` x max(1, max |logit|), or whose top-1 differs."""
  for batch, m in parity.items():
    bound = tolerance * max(1.0, m['max_abs_logit'])
    if not m['max_abs_diff'] <= bound or not m['top1_equal']:
      raise ExportError(
        f'The {fmt} export does not compute what JAX computes at {batch}: max |logit difference| '
        f'{m["max_abs_diff"]:.3g} (allowed {bound:.3g}: tolerance {tolerance:g} x max(1, max |logit| '
        f'{m["max_abs_logit"]:.3g})), same top-1: {m["top1_equal"]}; nothing was written.'
      )


# --- the two formats ---------------------------------------------------------------------------


def _sub_jaxprs(params: dict) -> Iterator[Any]:
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      inner = getattr(item, 'jaxpr', item)
      if hasattr(inner, 'eqns'):
        yield inner


def primitives_with_modules(jaxpr) -> Iterator[tuple[str, str]]:
  """(primitive name, the flax module path it came from) of every equation, nested jaxprs included."""
  for eqn in jaxpr.eqns:
    yield eqn.primitive.name, str(eqn.source_info.name_stack) or '(top level)'
    for inner in _sub_jaxprs(eqn.params):
      yield from primitives_with_modules(inner)


def _require(module: str):
  """An optional dependency of the `export` extra, or an ExportError saying how to install it."""
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError:
    raise ExportError(
      f"ONNX export needs {module!r}: pip install 'isojax[export]' (jax2onnx {JAX2ONNX_PIN}, onnx, onnxruntime)."
    ) from None


def _jax2onnx_primitives() -> set[str]:
  plugin_system = _require('jax2onnx.plugins.plugin_system')
  plugin_system.import_all_plugins()
  return set(plugin_system.PLUGIN_REGISTRY)


def check_convertible(model: Exportable, known: set[str]) -> None:
  """Refuses, before converting, a primitive jax2onnx has no conversion for, naming it and its module."""
  images = jax.ShapeDtypeStruct((1, model.image_size, model.image_size, model.channels), jnp.float32)
  jaxpr = jax.make_jaxpr(logits_function(model))(images)
  missing: dict[str, str] = {}
  for primitive, module in primitives_with_modules(jaxpr.jaxpr):
    if primitive not in known:
      missing.setdefault(primitive, module)
  if missing:
    found = '; '.join(f'{p!r} in module {m}' for p, m in sorted(missing.items()))
    raise ExportError(
      f'jax2onnx {_version("jax2onnx")} cannot convert the primitive(s) {found}; export --format=stablehlo '
      f'(any primitive), or write that module with primitives ONNX has.'
    )


@contextlib.contextmanager
def _quiet_jax2onnx() -> Iterator[None]:
  """jax2onnx 0.13 logs a traceback per plugin it skips (dm_pix's, which JAX 0.10 breaks and no isojax model uses)
  and prints `DEBUG:` lines from its flax Conv plugin to stdout; neither says anything about the export."""
  logger = logging.getLogger('jax2onnx')
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    logger.setLevel(level)


@contextlib.contextmanager
def _batch_norm_as_primitives() -> Iterator[None]:
  """jax2onnx 0.13's flax BatchNorm plugin writes its output NCHW into an NHWC graph when BatchNorm follows a
  convolution (a residual add after it then fails: ResNet); without it, BatchNorm is exported as the lax ops it
  is at inference, a per-channel scale and shift of constants that onnxruntime folds."""
  plugin_system = _require('jax2onnx.plugins.plugin_system')
  plugin_system.import_all_plugins()
  plugin = plugin_system.PLUGIN_REGISTRY.pop('linen.batch_norm', None)
  try:
    yield
  finally:
    if plugin is not None:
      plugin_system.PLUGIN_REGISTRY['linen.batch_norm'] = plugin


def to_onnx(model: Exportable) -> bytes:
  """The model as an ONNX file's bytes, batch symbolic, checked by `onnx.checker`."""
  jax2onnx, onnx = _require('jax2onnx'), _require('onnx')
  with _quiet_jax2onnx(), _batch_norm_as_primitives():
    check_convertible(model, _jax2onnx_primitives())
    proto = jax2onnx.to_onnx(
      logits_function(model),
      [('batch', model.image_size, model.image_size, model.channels)],
      model_name='isojax',
      opset=ONNX_OPSET,
      input_names=[INPUT],
      output_names=[OUTPUT],
    )
  onnx.checker.check_model(proto, full_check=True)
  return proto.SerializeToString()


def onnx_runner(data: bytes) -> Runner:
  session = _require('onnxruntime').InferenceSession(data, providers=['CPUExecutionProvider'])
  return lambda images: session.run(None, {session.get_inputs()[0].name: np.asarray(images, np.float32)})[0]


def to_stablehlo(model: Exportable) -> bytes:
  """The model serialized by `jax.export`, batch symbolic: `jax.export.deserialize(data).call(images)`."""
  (batch,) = jax.export.symbolic_shape('batch')
  images = jax.ShapeDtypeStruct((batch, model.image_size, model.image_size, model.channels), jnp.float32)
  return bytes(jax.export.export(logits_function(model))(images).serialize())


def stablehlo_runner(data: bytes) -> Runner:
  exported = jax.export.deserialize(bytearray(data))
  return lambda images: np.asarray(exported.call(jnp.asarray(images, jnp.float32)))


CONVERTERS: dict[str, tuple[Callable[[Exportable], bytes], Callable[[bytes], Runner]]] = {
  'onnx': (to_onnx, onnx_runner),
  'stablehlo': (to_stablehlo, stablehlo_runner),
}


# --- the artifact and its sidecar --------------------------------------------------------------


def _version(package: str) -> Optional[str]:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def sidecar(model: Exportable, fmt: str, parity: dict, tolerance: float) -> dict:
  exporter = {'onnx': ['jax2onnx', 'onnx', 'onnxruntime'], 'stablehlo': ['jaxlib']}[fmt]
  return {
    'format': fmt,
    'onnx_opset': ONNX_OPSET if fmt == 'onnx' else None,
    'input': {
      'name': INPUT,
      'layout': 'NHWC',
      'dtype': 'float32',
      'shape': ['batch', model.image_size, model.image_size, model.channels],
    },
    'output': {'name': OUTPUT, 'shape': ['batch', len(model.class_names)], 'meaning': 'logits (softmax is yours)'},
    'image_size': model.image_size,
    'preprocessing': model.preprocessing,
    'class_names': list(model.class_names),
    'source': model.source,
    'versions': {p: _version(p) for p in ['isojax', 'jax', 'flax', *exporter]},
    'parity': {'tolerance': tolerance, 'against': 'jax.jit of the same model on this machine', **parity},
  }


def export(model: Exportable, fmt: str, output: str, tolerance: float = TOLERANCE) -> dict:
  """Writes `output` (and `output.json`) when its logits equal JAX's; the sidecar. Nothing on failure."""
  if fmt not in CONVERTERS:
    raise ExportError(f'format={fmt!r}; expected one of {FORMATS}.')
  convert, runner = CONVERTERS[fmt]
  data = convert(model)
  parity = measure_parity(runner(data), logits_function(model), parity_inputs(model))
  check_parity(parity, tolerance, fmt)
  meta = sidecar(model, fmt, parity, tolerance)
  tmp = f'{output}.{os.getpid()}.tmp'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, output)
  workdir_lib.write_json(output + '.json', meta)
  return meta


def read_sidecar(path: str) -> dict:
  """The sidecar of an exported file, refused naming the file when it is missing."""
  if not os.path.exists(path + '.json'):
    raise FileNotFoundError(f'{path!r} has no sidecar {path + ".json"!r}; export it with python -m isojax.export.')
  return workdir_lib.read_json(path + '.json')


def load_runner(path: str) -> tuple[Runner, dict]:
  """(run(images) -> logits, sidecar) of an exported file, by the format its sidecar names."""
  meta = read_sidecar(path)
  with open(path, 'rb') as f:
    return CONVERTERS[meta['format']][1](f.read()), meta
