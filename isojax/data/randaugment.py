"""RandAugment (Cubuk et al. 2020) with stateless randomness, for any channel count.

Images are float32 HWC in 0..255. The same `randaugment(num_ops, magnitude)` means
different augmentation in each codebase, so `flavour` picks whose ops, magnitude scale and
probabilities apply (a config names the flavour of the source it reproduces):

  'timm'         timm/data/auto_augment.py `rand_augment_transform`: 15 ops
                 (_RAND_TRANSFORMS, or _RAND_INCREASING_TRANSFORMS with `increasing=True`,
                 timm's `inc1`), magnitude on 0..10 (_LEVEL_DENOM) with Gaussian noise
                 `magnitude_std` clipped to [0, 10], each chosen op applied with probability
                 0.5 (AugmentOp prob=0.5), random sign for symmetric ops, grey fill 128.
  'torchvision'  torchvision/transforms/autoaugment.py `RandAugment`: 14 ops, magnitude is a
                 bin of 31 (num_bins=31; m=9 is 9/30 of full strength), every chosen op applied,
                 random sign for signed ops, nearest interpolation, black fill, shears about
                 the top-left corner.
  'big_vision'   big_vision/pp/archive/autoaugment.py `distort_image_with_randaugment`
                 (l.662-700): 16 ops incl. Cutout and SolarizeAdd, magnitude on 0..10, every
                 chosen op applied (its per-op `prob` is drawn but unused), grey fill 128,
                 absolute translation 100 px, cutout 40 px, enhance factors 1.8 * m/10 + 0.1.
"""

from __future__ import annotations

import math
from typing import Optional

import tensorflow as tf

_MAX_LEVEL = 10.0
_FILL = 128.0


def _blend(degenerate, image, factor):
  return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def _grey(image):
  if image.shape[-1] == 3:
    return tf.reduce_sum(image * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
  return tf.reduce_mean(image, axis=-1, keepdims=True)


def _transform(image, matrix, fill=_FILL, interpolation='BILINEAR'):
  """Projective transform; `matrix` maps output pixel (x, y, 1) to input coordinates."""
  flat = tf.concat([tf.reshape(matrix, [-1])[:8]], axis=0)
  out = tf.raw_ops.ImageProjectiveTransformV3(
    images=image[None],
    transforms=flat[None],
    output_shape=tf.shape(image)[:2],
    fill_value=fill,
    interpolation=interpolation,
    fill_mode='CONSTANT',
  )
  return out[0]


def _around_centre(image, linear, fill=_FILL, interpolation='BILINEAR'):
  h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
  cx, cy = (w - 1) / 2, (h - 1) / 2
  to_centre = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) + tf.stack(
    [[0.0, 0.0, -cx], [0.0, 0.0, -cy], [0.0, 0.0, 0.0]]
  )
  back = tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) + tf.stack(
    [[0.0, 0.0, cx], [0.0, 0.0, cy], [0.0, 0.0, 0.0]]
  )
  return _transform(image, back @ linear @ to_centre, fill, interpolation)


# The image ops, each `fn(image, arg) -> image`: the argument is already in the op's units.


def identity(image, arg):
  return image


def auto_contrast(image, arg):
  lo = tf.reduce_min(image, axis=(0, 1), keepdims=True)
  hi = tf.reduce_max(image, axis=(0, 1), keepdims=True)
  scaled = (image - lo) * 255.0 / tf.maximum(hi - lo, 1e-3)
  return tf.where(hi > lo, scaled, image)


def equalize(image, arg):
  """PIL's ImageOps.equalize per channel; works for any (also statically unknown) channel count."""
  pixels = tf.cast(tf.clip_by_value(image, 0, 255), tf.int32)
  channels = tf.shape(pixels)[-1]
  binned = pixels + tf.range(channels) * 256  # channel c's value v counts in bin 256 c + v
  histo = tf.reshape(
    tf.math.bincount(tf.reshape(binned, [-1]), minlength=256 * channels, maxlength=256 * channels), [channels, 256]
  )
  last = 255 - tf.argmax(tf.cast(tf.reverse(histo, [1]) > 0, tf.int32), axis=1, output_type=tf.int32)
  step = (tf.reduce_sum(histo, axis=1) - tf.gather(histo, last, batch_dims=1)) // 255  # [channels]
  lut = (tf.cumsum(histo, axis=1) + (step // 2)[:, None]) // tf.maximum(step, 1)[:, None]
  lut = tf.clip_by_value(tf.concat([tf.zeros([channels, 1], tf.int32), lut[:, :-1]], 1), 0, 255)
  equalized = tf.gather(tf.reshape(lut, [-1]), binned)
  return tf.cast(tf.where(step == 0, pixels, equalized), tf.float32)


def invert(image, arg):
  return 255.0 - image


def solarize(image, threshold):
  """Inverts the pixels at or above `threshold` (PIL ImageOps.solarize, torchvision F.solarize)."""
  return tf.where(image < threshold, image, 255.0 - image)


def solarize_add(image, add):
  """Adds `add` to the pixels below 128, clipped at 255."""
  return tf.where(image < 128.0, tf.minimum(image + add, 255.0), image)


def posterize(image, bits):
  """Keeps the `bits` most significant bits of each 8-bit value (0 bits: black)."""
  shift = tf.cast(8 - tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8), tf.float32)
  step = tf.pow(2.0, shift)
  return tf.floor(tf.clip_by_value(image, 0, 255) / step) * step


def color(image, factor):
  return _blend(tf.broadcast_to(_grey(image), tf.shape(image)), image, factor)


def contrast(image, factor):
  return _blend(tf.fill(tf.shape(image), tf.reduce_mean(_grey(image))), image, factor)


def brightness(image, factor):
  return _blend(tf.zeros_like(image), image, factor)


def sharpness(image, factor):
  """PIL's ImageEnhance.Sharpness: blend with a 3x3 smoothed image, borders untouched."""
  kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
  smooth = tf.nn.conv2d(tf.transpose(image, [2, 0, 1])[..., None], kernel[:, :, None, None], 1, 'VALID')
  smooth = tf.pad(tf.transpose(smooth[..., 0], [1, 2, 0]), [[1, 1], [1, 1], [0, 0]])
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  inside = tf.pad(tf.ones([h - 2, w - 2, 1]), [[1, 1], [1, 1], [0, 0]]) > 0
  return _blend(tf.where(inside, smooth, image), image, factor)


def _geometric(fn):
  """A geometric op `fn(image, arg, fill, interpolation)` bound to a flavour's fill and sampling."""
  return lambda fill, interpolation: lambda image, arg: fn(image, arg, fill, interpolation)


def rotate(image, degrees, fill, interpolation):
  angle = degrees * math.pi / 180.0
  c, s = tf.cos(angle), tf.sin(angle)
  return _around_centre(image, tf.stack([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]]), fill, interpolation)


def shear_x(image, k, fill, interpolation):
  return _around_centre(image, tf.stack([[1.0, k, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), fill, interpolation)


def shear_y(image, k, fill, interpolation):
  return _around_centre(image, tf.stack([[1.0, 0.0, 0.0], [k, 1.0, 0.0], [0.0, 0.0, 1.0]]), fill, interpolation)


def shear_x_corner(image, k, fill, interpolation):
  """torchvision's ShearX: F.affine(shear=atan(k) degrees, center=[0, 0]): about the top-left corner."""
  return _transform(image, tf.stack([[1.0, k, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), fill, interpolation)


def shear_y_corner(image, k, fill, interpolation):
  return _transform(image, tf.stack([[1.0, 0.0, 0.0], [k, 1.0, 0.0], [0.0, 0.0, 1.0]]), fill, interpolation)


def translate_x(image, pixels, fill, interpolation):
  return _transform(image, tf.stack([[1.0, 0.0, pixels], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), fill, interpolation)


def translate_y(image, pixels, fill, interpolation):
  return _transform(image, tf.stack([[1.0, 0.0, 0.0], [0.0, 1.0, pixels], [0.0, 0.0, 1.0]]), fill, interpolation)


def _width(image):
  return tf.cast(tf.shape(image)[1], tf.float32)


def _height(image):
  return tf.cast(tf.shape(image)[0], tf.float32)


# Each flavour: op name -> (fn(image, arg), level_to_arg(level, sign, image)); `level` is the
# magnitude on the flavour's own scale, `sign` is +-1 drawn per op.
_signed = lambda scale: lambda level, sign, image: sign * level / _MAX_LEVEL * scale
_enhance_increasing = lambda level, sign, image: 1.0 + sign * level / _MAX_LEVEL * 0.9
_enhance = lambda level, sign, image: level / _MAX_LEVEL * 1.8 + 0.1
_none = lambda level, sign, image: 0.0
_GREY, _BILINEAR = _FILL, 'BILINEAR'


def _timm_ops(increasing: bool) -> dict:
  """timm auto_augment.py LEVEL_TO_ARG with hparams translate_pct=0.45, img_mean grey."""
  g = lambda fn: _geometric(fn)(_GREY, _BILINEAR)
  ops = {
    'AutoContrast': (auto_contrast, _none),
    'Equalize': (equalize, _none),
    'Invert': (invert, _none),
    'Rotate': (g(rotate), _signed(30.0)),
    'SolarizeAdd': (solarize_add, lambda level, sign, image: tf.minimum(128.0, tf.floor(level / _MAX_LEVEL * 110.0))),
    'ShearX': (g(shear_x), _signed(0.3)),
    'ShearY': (g(shear_y), _signed(0.3)),
    'TranslateXRel': (g(translate_x), lambda level, sign, image: _signed(0.45)(level, sign, image) * _width(image)),
    'TranslateYRel': (g(translate_y), lambda level, sign, image: _signed(0.45)(level, sign, image) * _height(image)),
  }
  bits = lambda level: tf.floor(level / _MAX_LEVEL * 4.0)
  threshold = lambda level: tf.minimum(256.0, tf.floor(level / _MAX_LEVEL * 256.0))
  if increasing:  # _posterize_increasing / _solarize_increasing / _enhance_increasing_level_to_arg
    ops.update(
      {
        'Posterize': (posterize, lambda level, sign, image: 4.0 - bits(level)),
        'Solarize': (solarize, lambda level, sign, image: 256.0 - threshold(level)),
      }
    )
    enhance = _enhance_increasing
  else:  # _posterize / _solarize / _enhance_level_to_arg
    ops.update(
      {
        'Posterize': (posterize, lambda level, sign, image: bits(level)),
        'Solarize': (solarize, lambda level, sign, image: threshold(level)),
      }
    )
    enhance = _enhance
  ops.update(
    {
      'Color': (color, enhance),
      'Contrast': (contrast, enhance),
      'Brightness': (brightness, enhance),
      'Sharpness': (sharpness, enhance),
    }
  )
  order = (
    'AutoContrast',
    'Equalize',
    'Invert',
    'Rotate',
    'Posterize',
    'Solarize',
    'SolarizeAdd',
    'Color',
    'Contrast',
    'Brightness',
    'Sharpness',
    'ShearX',
    'ShearY',
    'TranslateXRel',
    'TranslateYRel',
  )
  return {name: ops[name] for name in order}


def _torchvision_ops(num_bins: int = 31) -> dict:
  """torchvision RandAugment._augmentation_space(num_bins, image_size), in its order."""
  g = lambda fn: _geometric(fn)(0.0, 'NEAREST')
  # magnitudes = linspace(0, max, num_bins)[m]: level m on 0..num_bins-1 -> m / (num_bins - 1) * max.
  fraction = lambda level: level / (num_bins - 1)
  signed = lambda top: lambda level, sign, image: sign * fraction(level) * top
  enhance = lambda level, sign, image: 1.0 + sign * fraction(level) * 0.9
  return {
    'Identity': (identity, _none),
    'ShearX': (g(shear_x_corner), signed(0.3)),
    'ShearY': (g(shear_y_corner), signed(0.3)),
    'TranslateX': (
      g(translate_x),
      lambda level, sign, image: sign * tf.floor(fraction(level) * 150.0 / 331.0 * _width(image)),
    ),
    'TranslateY': (
      g(translate_y),
      lambda level, sign, image: sign * tf.floor(fraction(level) * 150.0 / 331.0 * _height(image)),
    ),
    'Rotate': (g(rotate), signed(30.0)),
    'Brightness': (brightness, enhance),
    'Color': (color, enhance),
    'Contrast': (contrast, enhance),
    'Sharpness': (sharpness, enhance),
    # 8 - (arange(num_bins) / ((num_bins - 1) / 4)).round().int(); linspace(255.0, 0.0, num_bins)
    'Posterize': (posterize, lambda level, sign, image: 8.0 - tf.round(level / ((num_bins - 1) / 4.0))),
    'Solarize': (solarize, lambda level, sign, image: 255.0 - fraction(level) * 255.0),
    'AutoContrast': (auto_contrast, _none),
    'Equalize': (equalize, _none),
  }


def cutout(image, half_size, seed):
  """A (2 * half_size)^2 square at a uniformly drawn centre set to grey (big_vision's `cutout`)."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  centre = tf.random.stateless_uniform([2], seed, 0, 1)
  cy, cx = tf.cast(centre[0] * tf.cast(h, tf.float32), tf.int32), tf.cast(centre[1] * tf.cast(w, tf.float32), tf.int32)
  half = tf.cast(half_size, tf.int32)
  rows, cols = tf.range(h)[:, None], tf.range(w)[None, :]
  inside = (rows >= cy - half) & (rows < cy + half) & (cols >= cx - half) & (cols < cx + half)
  return tf.where(inside[..., None], tf.fill(tf.shape(image), _FILL), image)


def _big_vision_ops(seed) -> dict:
  """big_vision/pp/archive/autoaugment.py level_to_arg (l.506-530), translate_const=100, cutout_const=40."""
  g = lambda fn: _geometric(fn)(_GREY, _BILINEAR)
  return {
    'AutoContrast': (auto_contrast, _none),
    'Equalize': (equalize, _none),
    'Invert': (invert, _none),
    'Rotate': (g(rotate), _signed(30.0)),
    'Posterize': (posterize, lambda level, sign, image: tf.floor(level / _MAX_LEVEL * 4.0)),
    'Solarize': (solarize, lambda level, sign, image: tf.floor(level / _MAX_LEVEL * 256.0)),
    'Color': (color, _enhance),
    'Contrast': (contrast, _enhance),
    'Brightness': (brightness, _enhance),
    'Sharpness': (sharpness, _enhance),
    'ShearX': (g(shear_x), _signed(0.3)),
    'ShearY': (g(shear_y), _signed(0.3)),
    'TranslateX': (g(translate_x), _signed(100.0)),
    'TranslateY': (g(translate_y), _signed(100.0)),
    'Cutout': (
      lambda image, half: cutout(image, half, seed),
      lambda level, sign, image: tf.floor(level / _MAX_LEVEL * 40.0),
    ),
    'SolarizeAdd': (solarize_add, lambda level, sign, image: tf.floor(level / _MAX_LEVEL * 110.0)),
  }


FLAVOURS = ('timm', 'torchvision', 'big_vision')


def ops_of(flavour: str, increasing: bool = False, seed=None) -> dict:
  """The op table of a flavour: {name: (fn, level_to_arg)}, in the source's order."""
  if flavour == 'timm':
    return _timm_ops(increasing)
  if flavour == 'torchvision':
    return _torchvision_ops()
  if flavour == 'big_vision':
    return _big_vision_ops(tf.zeros([2], tf.int32) if seed is None else seed)
  raise ValueError(f'Unknown randaugment flavour {flavour!r}; expected one of {FLAVOURS}.')


def randaugment(
  image,
  seed,
  num_ops: int = 2,
  magnitude: float = 9.0,
  magnitude_std: float = 0.0,
  flavour: str = 'timm',
  increasing: bool = False,
  prob: Optional[float] = None,
):
  """Applies `num_ops` ops drawn uniformly from `flavour`'s table at `magnitude` on its scale.

  `prob` (default: the flavour's, 0.5 for timm, 1 otherwise) is the chance that a drawn op is
  applied; `magnitude_std` adds timm's Gaussian magnitude noise.
  """
  if flavour != 'timm' and (magnitude_std or increasing):
    raise ValueError(f'magnitude_std and increasing are timm options; flavour={flavour!r} has neither.')
  if magnitude < 0 or (flavour == 'torchvision' and magnitude > 30):
    raise ValueError(
      f"randaugment magnitude={magnitude} is outside flavour {flavour!r}'s scale "
      f'({"0..30, a bin of 31" if flavour == "torchvision" else "0..10, larger extrapolates"}).'
    )
  prob = (0.5 if flavour == 'timm' else 1.0) if prob is None else prob
  for op_seed in tf.unstack(tf.random.experimental.stateless_split(seed, num_ops)):
    s_op, s_mag, s_sign, s_apply, s_cut = tf.unstack(tf.random.experimental.stateless_split(op_seed, 5))
    table = ops_of(flavour, increasing, s_cut)
    index = tf.random.stateless_uniform([], s_op, 0, len(table), dtype=tf.int32)
    level = tf.constant(float(magnitude))
    if magnitude_std:
      level = tf.clip_by_value(level + magnitude_std * tf.random.stateless_normal([], s_mag), 0.0, _MAX_LEVEL)
    sign = tf.where(tf.random.stateless_uniform([], s_sign) < 0.5, -1.0, 1.0)
    branches = [
      lambda fn=fn, to_arg=to_arg, x=image, level=level, sign=sign: fn(x, to_arg(level, sign, x))
      for fn, to_arg in table.values()
    ]
    if prob >= 1:  # big_vision, torchvision: every drawn op applies
      image = tf.ensure_shape(tf.switch_case(index, branches), image.shape)
    else:  # the skipped op is not computed at all
      apply = tf.random.stateless_uniform([], s_apply) < prob
      chosen = lambda index=index, branches=branches: tf.switch_case(index, branches)
      image = tf.ensure_shape(tf.cond(apply, chosen, lambda x=image: x), image.shape)
  return image


def color_jitter(image, seed, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0):
  """torchvision ColorJitter(brightness, contrast, saturation): factors U[max(0, 1 - j), 1 + j],
  applied in a random order (torchvision/transforms/transforms.py ColorJitter.get_params/forward)."""
  s_order, s_b, s_c, s_s = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
  jitters = []
  for amount, op, op_seed in (
    (brightness, globals()['brightness'], s_b),
    (contrast, globals()['contrast'], s_c),
    (saturation, color, s_s),
  ):
    if amount:
      factor = tf.random.stateless_uniform([], op_seed, max(0.0, 1.0 - amount), 1.0 + amount)
      jitters.append(lambda im, op=op, factor=factor: op(im, factor))
  if not jitters:
    return image
  order = tf.argsort(tf.random.stateless_uniform([len(jitters)], s_order))
  for position in range(len(jitters)):
    image = tf.switch_case(order[position], [lambda j=j, x=image: j(x) for j in jitters])
  return image
