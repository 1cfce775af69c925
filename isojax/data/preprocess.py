"""Per-example preprocessing ops and the spec strings that chain them.

A spec is `op|op(arg=value, ...)|...`, e.g. the CIFAR recipe
`random_crop(size=32, padding=4)|flip|randaugment(num_ops=2, magnitude=9)|normalize(cifar)`.
Every op is `fn(image, seed, **kwargs) -> image`, `image` float32 HWC in 0..255 until
`normalize`; a spec that ends with `normalize` can instead hand over uint8 pixels and leave the
normalisation to the device (`build(uint8=True)`, `device_normalization`). The input pipeline
hands over encoded bytes (PNG/JPEG/...): `build(encoded=True)` decodes first, and a leading
`inception_crop` of a JPEG decodes only the crop window (`tf.image.decode_and_crop_jpeg`, as
big_vision's `decode_jpeg_and_inception_crop`).
Randomness is stateless (`seed` is a [2] int tensor derived from the example's position in
the stream), so the data of a resumed run equals an unbroken one.
Adding an augmentation: write the function and add it to OPS.
"""

from __future__ import annotations

import ast
import inspect
import math
import re
from collections.abc import Callable
from typing import Any, Optional

import tensorflow as tf

from isojax.core.config import ERASING_FILLS
from isojax.data import randaugment

# Per-channel statistics in 0..255 units.
STATS = {
  'imagenet': ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
  # locuslab/convmixer-cifar10 train.py l.66-67
  'cifar': ((0.4914 * 255, 0.4822 * 255, 0.4465 * 255), (0.2471 * 255, 0.2435 * 255, 0.2616 * 255)),
  # CIFAR-100's training set, measured the same way (per channel over every pixel): weiaicunzai/pytorch-cifar100
  # conf/global_settings.py CIFAR100_TRAIN_MEAN / CIFAR100_TRAIN_STD, to four places
  'cifar100': ((0.5071 * 255, 0.4865 * 255, 0.4409 * 255), (0.2673 * 255, 0.2564 * 255, 0.2762 * 255)),
  'half': ((127.5,), (127.5,)),  # to [-1, 1], any channel count (big_vision's value_range(-1, 1))
}


def _split_seed(seed, n):
  return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def resize(image, seed, size: int, method: str = 'bilinear'):
  """Resize to size x size (no aspect preservation)."""
  return tf.image.resize(image, (size, size), method=method, antialias=True)


def resize_small(image, seed, size: int, method: str = 'bilinear', antialias: bool = True):
  """Resize so the shorter side is `size`, keeping the aspect ratio (ImageNet eval).

  big_vision's `resize_small` is method='area', antialias=False (big_vision/pp/ops_image.py l.108).
  """
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  ratio = tf.cast(size, tf.float32) / tf.cast(tf.minimum(h, w), tf.float32)
  new = tf.cast(tf.round(tf.cast(tf.stack([h, w]), tf.float32) * ratio), tf.int32)
  return tf.image.resize(image, new, method=method, antialias=antialias)


def central_crop(image, seed, size: int):
  """The central size x size crop."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  top, left = (h - size) // 2, (w - size) // 2
  return image[top : top + size, left : left + size]


def random_crop(image, seed, size: int, padding: int = 0):
  """Zero-pad by `padding` then take a random size x size crop (the CIFAR recipe)."""
  if padding:
    image = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
  channels = image.shape[-1]
  return tf.image.stateless_random_crop(image, (size, size, channels), seed=seed)


def _inception_window(shape, seed, area_min: float, area_max: float, ratio_min: float, ratio_max: float):
  """(offset, size) of a random crop of an image of `shape` [h, w, c]: a random area and aspect ratio."""
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
    shape,
    tf.zeros([0, 0, 4], tf.float32),
    seed=seed,
    area_range=(area_min, area_max),
    aspect_ratio_range=(ratio_min, ratio_max),
    min_object_covered=0,
    use_image_if_no_bounding_boxes=True,
  )
  return begin, crop_size


def inception_crop(
  image,
  seed,
  size: int,
  area_min: float = 0.08,
  area_max: float = 1.0,
  ratio_min: float = 3 / 4,
  ratio_max: float = 4 / 3,
  method: str = 'bilinear',
  antialias: bool = True,
):
  """Random-resized crop (Inception / ImageNet): a random area and aspect ratio, resized.

  The defaults are torchvision's RandomResizedCrop (scale=(0.08, 1), antialiased bilinear);
  big_vision's `decode_jpeg_and_inception_crop` is area_min=0.05, ratio_max=1.33,
  antialias=False (big_vision/pp/ops_image.py l.199-201).
  """
  begin, crop_size = _inception_window(tf.shape(image), seed, area_min, area_max, ratio_min, ratio_max)
  return tf.image.resize(tf.slice(image, begin, crop_size), (size, size), method=method, antialias=antialias)


def decode(data, channels: int):
  """Encoded PNG/JPEG/GIF/BMP bytes -> uint8 [h, w, channels] (grey and RGBA files converted)."""
  return tf.io.decode_image(data, channels=channels, dtype=tf.uint8, expand_animations=False)


def decode_and_inception_crop(
  data,
  seed,
  channels: int,
  size: int,
  area_min: float = 0.08,
  area_max: float = 1.0,
  ratio_min: float = 3 / 4,
  ratio_max: float = 4 / 3,
  method: str = 'bilinear',
  antialias: bool = True,
):
  """`inception_crop` of the encoded image `data`; a JPEG is decoded only inside the crop window.

  The window is the one `inception_crop` draws for the decoded image (same seed, same shape), so
  the two agree exactly on PNGs and 4:4:4 JPEGs; on chroma-subsampled JPEGs libjpeg upsamples the
  window's border columns without their outside neighbours (a few levels on the edge pixels).
  """

  def jpeg():
    height_width = tf.image.extract_jpeg_shape(data)[:2]
    shape = tf.concat([height_width, [channels]], 0)
    begin, crop_size = _inception_window(shape, seed, area_min, area_max, ratio_min, ratio_max)
    window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    crop = tf.image.decode_and_crop_jpeg(data, window, channels=channels)
    return tf.image.resize(tf.cast(crop, tf.float32), (size, size), method=method, antialias=antialias)

  def other():  # PNG, GIF, BMP: decode whole, then crop
    return inception_crop(
      tf.cast(decode(data, channels), tf.float32),
      seed,
      size,
      area_min,
      area_max,
      ratio_min,
      ratio_max,
      method,
      antialias,
    )

  return tf.cond(tf.io.is_jpeg(data), jpeg, other)


def flip(image, seed):
  """Random left-right flip."""
  return tf.image.stateless_random_flip_left_right(image, seed=seed)


def _stats(stats: str = 'imagenet') -> tuple[tuple[float, ...], tuple[float, ...]]:
  if stats not in STATS:
    raise ValueError(f'Unknown normalize stats {stats!r}; expected one of {sorted(STATS)}.')
  return STATS[stats]


def normalize(image, seed, stats: str = 'imagenet'):
  """(image - mean) / std with named per-channel statistics (see STATS)."""
  mean, std = _stats(stats)
  return (image - tf.constant(mean)) / tf.constant(std)


def device_normalization(spec: str) -> Optional[tuple[tuple[float, ...], tuple[float, ...]]]:
  """(mean, std) of the `normalize` that ends `spec`, or None if it does not end with one.

  Such a spec can stop on the host at uint8 pixels (`build(uint8=True)`) and leave this
  normalisation to the device: a batch then takes a quarter of the host memory and of the
  host-to-device traffic (timm's CUDA prefetcher does the same).
  """
  ops = parse(spec)
  return _stats(**ops[-1][1]) if ops and ops[-1][0] == 'normalize' else None


def to_uint8(image):
  """Float pixels in 0..255 -> uint8, rounded to the nearest level and clipped."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def random_erasing(
  image,
  seed,
  prob: float = 0.25,
  area_min: float = 0.02,
  area_max: float = 1 / 3,
  fill: str = 'noise',
  aspect_min: float = 0.3,
  aspect_max: Optional[float] = None,
):
  """Random erasing (Zhong et al.) of one image, as timm's RandomErasing._erase and torchvision's
  RandomErasing.get_params draw it: with probability `prob`, up to 10 attempts of an area
  U(area_min, area_max) x the image's and a log-uniform aspect in [aspect_min, aspect_max]
  (default 1 / aspect_min, timm's; torchvision's is 3.3); h = round(sqrt(area aspect)), w =
  round(sqrt(area / aspect)); the first box with h < height and w < width is erased at a uniform
  top-left corner, and none if no attempt fits. Apply after `normalize`, as both do.

  `fill`: 'noise' N(0, 1) per pixel (timm `--remode pixel`), 'channel' N(0, 1) per channel (timm
  'rand'), 'zero' (timm 'const', torchvision's value=0)."""
  if fill not in ERASING_FILLS:
    raise ValueError(f'random_erasing fill={fill!r}; expected one of {ERASING_FILLS}.')
  aspect_max = 1 / aspect_min if aspect_max is None else aspect_max
  s_apply, s_area, s_ratio, s_pos, s_noise = _split_seed(seed, 5)
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  area = tf.cast(h * w, tf.float32) * tf.random.stateless_uniform([10], s_area, area_min, area_max)
  aspect = tf.exp(tf.random.stateless_uniform([10], s_ratio, math.log(aspect_min), math.log(aspect_max)))
  heights = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
  widths = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
  fits = (heights < h) & (widths < w)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  eh, ew = heights[first], widths[first]
  pos = tf.random.stateless_uniform([2], s_pos, 0, 1)  # randint(0, h - eh) inclusive
  top = tf.minimum(tf.cast(pos[0] * tf.cast(h - eh + 1, tf.float32), tf.int32), h - eh)
  left = tf.minimum(tf.cast(pos[1] * tf.cast(w - ew + 1, tf.float32), tf.int32), w - ew)
  rows, cols = tf.range(h)[:, None], tf.range(w)[None, :]
  inside = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
  noise_shape = {'noise': tf.shape(image), 'channel': tf.shape(image)[-1:]}
  noise = tf.random.stateless_normal(noise_shape[fill], s_noise) if fill != 'zero' else 0.0
  values = tf.broadcast_to(tf.cast(noise, image.dtype), tf.shape(image))
  apply = (tf.random.stateless_uniform([], s_apply) < prob) & tf.reduce_any(fits)
  return tf.where(apply & inside[..., None], values, image)


OPS: dict[str, Callable[..., tf.Tensor]] = {
  'resize': resize,
  'resize_small': resize_small,
  'central_crop': central_crop,
  'random_crop': random_crop,
  'inception_crop': inception_crop,
  'flip': flip,
  'randaugment': randaugment.randaugment,
  'color_jitter': randaugment.color_jitter,
  'normalize': normalize,
  'random_erasing': random_erasing,
}

_OP_RE = re.compile(r'^\s*(\w+)\s*(?:\((.*)\))?\s*$')


def _literal(node: ast.AST) -> Any:
  """A Python literal, or a bare word as a string: `normalize(cifar)` == `normalize('cifar')`."""
  return node.id if isinstance(node, ast.Name) else ast.literal_eval(node)


def parse(spec: str) -> list[tuple[str, dict[str, Any]]]:
  """'a|b(x=1)|c(imagenet)' -> [('a', {}), ('b', {'x': 1}), ('c', {'stats': 'imagenet'})]."""
  ops = []
  for part in filter(None, (p.strip() for p in spec.split('|'))):
    match = _OP_RE.match(part)
    if not match or match.group(1) not in OPS:
      name = match.group(1) if match else part
      raise ValueError(f'Unknown preprocessing op {name!r} in {spec!r}; known ops: {sorted(OPS)}.')
    name, args = str(match.group(1)), match.group(2) or ''
    try:
      ops.append((name, _arguments(name, args)))
    except (SyntaxError, ValueError, TypeError, IndexError) as e:
      reason = ' '.join(str(getattr(e, 'msg', e)).split())
      params = [p.name for p in _parameters(name)]
      where = repr(part) if part == spec.strip() else f'{part!r} in {spec!r}'
      raise ValueError(f'{where}: {reason}; {name} takes {params} as Python literals.') from None
  return ops


def _parameters(name: str) -> list[inspect.Parameter]:
  """The op's parameters after image and seed: what a spec sets."""
  return list(inspect.signature(OPS[name]).parameters.values())[2:]


def defaults(name: str) -> dict[str, Any]:
  """The op's parameters with their defaults: what a spec leaves out."""
  return {p.name: p.default for p in _parameters(name) if p.default is not inspect.Parameter.empty}


def _arguments(name: str, args: str) -> dict[str, Any]:
  """The keyword arguments of `name(args)`, bound to the op's parameters (after image and seed)."""
  call = ast.parse(f'f({args})', mode='eval').body
  if not isinstance(call, ast.Call) or any(kw.arg is None for kw in call.keywords):
    raise ValueError('not a plain argument list')
  kwargs = {str(kw.arg): _literal(kw.value) for kw in call.keywords}
  first = [p.name for p in _parameters(name)]
  if len(call.args) > len(first):
    raise TypeError(f'{len(call.args)} positional arguments for {len(first)} parameters')
  kwargs.update({first[i]: _literal(a) for i, a in enumerate(call.args)})  # positional: the first parameters
  inspect.signature(OPS[name]).bind(None, None, **kwargs)  # a TypeError names what does not fit
  return kwargs


def build(
  spec: str, image_size: int, channels: int, fixed_shape: bool = True, encoded: bool = False, uint8: bool = False
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
  """Compiles a spec into `fn(image, seed) -> float32 [image_size, image_size, channels]` (or uint8).

  `image` is uint8 pixels, or with `encoded=True` the encoded file's bytes (decoded here, fused
  with a leading `inception_crop`). `uint8=True` stops before the spec's final `normalize` and
  returns uint8 pixels (`to_uint8`; `device_normalization(spec)` is what is left to do).
  `fixed_shape=False` leaves the final shape check to the caller (the input pipeline names the file).
  Each op's seed is the same with and without `uint8`, so both see the same crops and flips.
  """
  ops = parse(spec)
  if uint8 and device_normalization(spec) is None:
    raise ValueError(
      f'uint8 output needs a spec that ends with normalize(...), which is left to the device; got {spec!r}.'
    )

  def apply(image, seed):
    steps = list(zip(ops, _split_seed(seed, max(len(ops), 1))))
    if encoded and steps and steps[0][0][0] == 'inception_crop':
      (_, kwargs), op_seed = steps.pop(0)
      image = decode_and_inception_crop(image, op_seed, channels, **kwargs)
    elif encoded:
      image = decode(image, channels)
    image = tf.cast(image, tf.float32)
    if uint8:
      steps.pop()  # the final normalize, done on the device
    for (name, kwargs), op_seed in steps:
      image = OPS[name](image, op_seed, **kwargs)
    if uint8:
      image = to_uint8(image)
    return tf.ensure_shape(image, (image_size, image_size, channels)) if fixed_shape else image

  return apply
