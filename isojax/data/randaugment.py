"""RandAugment (Cubuk et al. 2020) with stateless randomness, for any channel count.

Images are float32 HWC holding uint8 values (randaugment rounds its input once, as every source runs its ops
on uint8 images), and every op gives its source's own pixels exactly, quantisation included:
tests/test_augmentation_fidelity.py runs timm's auto_augment.py and big_vision's autoaugment.py (vendored)
and compares with torchvision's stored outputs, op by op, at magnitudes 0..10 and both signs. The same
`randaugment(num_ops, magnitude)` means
different augmentation in each codebase, so `flavour` picks whose ops, magnitude scale and
probabilities apply (a config names the flavour of the source it reproduces):

  'timm'         timm/data/auto_augment.py `rand_augment_transform`: 15 ops
                 (_RAND_TRANSFORMS, or _RAND_INCREASING_TRANSFORMS with `increasing=True`,
                 timm's `inc1`), magnitude on 0..10 (_LEVEL_DENOM) with Gaussian noise
                 `magnitude_std` clipped to [0, 10], each chosen op applied with probability
                 0.5 (AugmentOp prob=0.5), random sign for symmetric ops, grey fill 128, PIL's
                 ops (ImageEnhance, ImageOps; geometric ops through Image.transform about the
                 top-left corner, Image.rotate about the centre, bilinear or bicubic: resample.py).
  'torchvision'  torchvision/transforms/autoaugment.py `RandAugment`: 14 ops, magnitude is a
                 bin of 31 (num_bins=31; m=9 is 9/30 of full strength), every chosen op applied,
                 random sign for signed ops; `_apply_op` on PIL images: PIL's ops, nearest
                 interpolation, black fill, shears about the top-left corner.
  'big_vision'   big_vision/pp/archive/autoaugment.py `distort_image_with_randaugment`
                 (l.662-700): 16 ops incl. Cutout and SolarizeAdd, magnitude on 0..10, every
                 chosen op applied (its per-op `prob` is drawn but unused), grey fill 128,
                 absolute translation 100 px, cutout 40 px, enhance factors 1.8 * m/10 + 0.1,
                 TensorFlow's ops on uint8 (nearest sampling through tensorflow_addons' transform,
                 Contrast towards the pixel count / 256, uint8 Solarize thresholds).
"""

from __future__ import annotations

import math
from typing import Optional

import tensorflow as tf

from isojax.data import resample

_MAX_LEVEL = 10.0
_FILL = 128.0


def as_uint8_values(image):
  """The image as the sources' ops see it: uint8 pixels (rounded, clipped), kept in float32."""
  return tf.clip_by_value(tf.round(image), 0.0, 255.0)


def _blend(degenerate, image, factor):
  """PIL's Image.blend (Blend.c) and big_vision's `blend`: degenerate + factor (image - degenerate) in
  float32, clipped to 0..255 and truncated to uint8."""
  return tf.floor(tf.clip_by_value(degenerate + tf.cast(factor, tf.float32) * (image - degenerate), 0.0, 255.0))


def _pil_grey(image):
  """PIL's convert('L') (Convert.c rgb2l: (19595 R + 38470 G + 7471 B + 0x8000) >> 16); other channel
  counts (no source has them) take the mean."""
  if image.shape[-1] == 3:
    weighted = tf.cast(image, tf.int32) * tf.constant([19595, 38470, 7471])
    return tf.cast(tf.bitwise.right_shift(tf.reduce_sum(weighted, -1, keepdims=True) + 0x8000, 16), tf.float32)
  return tf.floor(tf.reduce_mean(image, axis=-1, keepdims=True))


def _tf_grey(image):
  """tf.image.rgb_to_grayscale of the uint8 image (big_vision's `color` and `contrast`)."""
  if image.shape[-1] == 3:
    return tf.cast(tf.image.rgb_to_grayscale(tf.cast(image, tf.uint8)), tf.float32)
  return tf.floor(tf.reduce_mean(image, axis=-1, keepdims=True))


# The image ops, each `fn(image, arg) -> image` on uint8 values: the argument is already in the op's units.


def identity(image, arg):
  return image


def _auto_contrast(image, dtype):
  lo = tf.cast(tf.reduce_min(image, axis=(0, 1), keepdims=True), dtype)
  hi = tf.cast(tf.reduce_max(image, axis=(0, 1), keepdims=True), dtype)
  scale = 255.0 / tf.maximum(hi - lo, 1.0)
  scaled = tf.floor(tf.clip_by_value(tf.cast(image, dtype) * scale - lo * scale, 0.0, 255.0))
  return tf.where(hi > lo, tf.cast(scaled, tf.float32), image)


def auto_contrast(image, arg):
  """PIL's ImageOps.autocontrast: per channel, int(v * 255 / (hi - lo) - lo * scale) in double precision."""
  return _auto_contrast(image, tf.float64)


def auto_contrast_tf(image, arg):
  """big_vision's `autocontrast`: the same mapping in float32, cast to uint8."""
  return _auto_contrast(image, tf.float32)


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
  return tf.where(image < tf.cast(threshold, tf.float32), image, 255.0 - image)


def solarize_tf(image, threshold):
  """big_vision's `solarize` on uint8: `image < threshold` converts the threshold to uint8, which wraps
  modulo 256, so int(m / 10 * 256) at m = 10 (256) inverts every pixel and at m = 15 (384) thresholds
  at 128 (what the vendored source gives under TensorFlow 2.21)."""
  return solarize(image, tf.math.floormod(tf.cast(threshold, tf.int32), 256))


def solarize_add(image, add):
  """Adds `add` to the pixels below 128, clipped at 255."""
  return tf.where(image < 128.0, tf.minimum(image + tf.cast(add, tf.float32), 255.0), image)


def posterize(image, bits):
  """Keeps the `bits` most significant bits of each 8-bit value (PIL: 0 bits is black)."""
  shift = tf.cast(8 - tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8), tf.float32)
  step = tf.pow(2.0, shift)
  return tf.floor(image / step) * step


def posterize_tf(image, bits):
  """big_vision's `posterize`: uint8 (v >> s) << s with s = 8 - bits, where TensorFlow clamps a shift of 8
  to 7, so 0 bits keeps the top bit."""
  shift = tf.cast(8 - tf.cast(bits, tf.int32), tf.uint8)
  pixels = tf.cast(image, tf.uint8)
  return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(pixels, shift), shift), tf.float32)


def color(image, factor):
  """PIL's ImageEnhance.Color: blend with the image's convert('L')."""
  return _blend(tf.broadcast_to(_pil_grey(image), tf.shape(image)), image, factor)


def color_tf(image, factor):
  """big_vision's `color`: blend with tf.image.rgb_to_grayscale."""
  return _blend(tf.broadcast_to(_tf_grey(image), tf.shape(image)), image, factor)


def contrast(image, factor):
  """PIL's ImageEnhance.Contrast: blend with int(mean of convert('L') + 0.5)."""
  mean = tf.floor(tf.reduce_mean(tf.cast(_pil_grey(image), tf.float64)) + 0.5)
  return _blend(tf.fill(tf.shape(image), tf.cast(mean, tf.float32)), image, factor)


def contrast_big_vision(image, factor):
  """big_vision's `contrast` (pp/archive/autoaugment.py l.203-217): blends towards sum(histogram) / 256,
  the pixel count over 256 (196 for every 224 x 224 image), not the mean grey: tensorflow/tpu's quirk."""
  pixels = tf.cast(tf.shape(image)[0] * tf.shape(image)[1], tf.float32)
  grey = tf.floor(tf.clip_by_value(pixels / 256.0, 0.0, 255.0))
  return _blend(tf.fill(tf.shape(image), grey), image, factor)


def brightness(image, factor):
  return _blend(tf.zeros_like(image), image, factor)


def _inside_border(smooth, image):
  """A VALID 3x3 filter's output, clipped and truncated to uint8, inside `image`'s one-pixel border, which
  both PIL's filter and big_vision's keep as it was."""
  smooth = tf.pad(tf.floor(tf.clip_by_value(smooth, 0.0, 255.0)), [[1, 1], [1, 1], [0, 0]])
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  inside = tf.pad(tf.ones([h - 2, w - 2, 1]), [[1, 1], [1, 1], [0, 0]]) > 0
  return tf.where(inside, smooth, image)


def _pil_smooth(image):
  """PIL's ImageFilter.SMOOTH (Filter.c ImagingFilter3x3): float32 sums row y+1, y, y-1, each
  left-to-right with the kernel / 13, plus 0.5, truncated; the border rows and columns copied."""
  k1, k5 = tf.constant(1.0) / 13.0, tf.constant(5.0) / 13.0
  h, w = tf.shape(image)[0], tf.shape(image)[1]

  def row(r, middle):
    left, centre, right = image[r : r + h - 2, 0 : w - 2], image[r : r + h - 2, 1 : w - 1], image[r : r + h - 2, 2:w]
    return left * k1 + centre * middle + right * k1

  return _inside_border(((0.5 + row(2, k1)) + row(1, k5)) + row(0, k1), image)


def _tf_smooth(image):
  """big_vision's `sharpness` degenerate: a VALID depthwise 3x3 convolution (kernel / 13) in float32,
  clipped and truncated, the border kept."""
  kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], shape=[3, 3, 1, 1]) / 13.0
  kernel = tf.tile(kernel, [1, 1, tf.shape(image)[-1], 1])
  return _inside_border(tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], padding='VALID')[0], image)


def sharpness(image, factor):
  """PIL's ImageEnhance.Sharpness: blend with the SMOOTH-filtered image."""
  return _blend(_pil_smooth(image), image, factor)


def sharpness_tf(image, factor):
  return _blend(_tf_smooth(image), image, factor)


# Geometric ops. PIL's (timm; torchvision on PIL images) take coefficients mapping output pixel centres to
# input coordinates; the TensorFlow ones (big_vision through tensorflow_addons) map pixel indices.


def _pil(coefficients):
  """A PIL geometric op `fn(image, arg)` -> `fn(fill, interpolation)(image, arg)`."""
  return lambda fill, interpolation: (
    lambda image, arg: resample.pil_affine(image, coefficients(image, arg), fill, interpolation)
  )


_one, _zero = lambda: tf.constant(1.0, tf.float64), lambda: tf.constant(0.0, tf.float64)
_f64 = lambda v: tf.cast(v, tf.float64)

# timm auto_augment.py rotate/shear_x/shear_y/translate_x_abs/translate_y_abs (l.63-88, 98): PIL
# `img.rotate(degrees)` (counter-clockwise about the centre) and `img.transform(size, AFFINE, ...)`.
pil_rotate = _pil(lambda image, degrees: resample.pil_rotation(degrees, tf.shape(image)[0], tf.shape(image)[1]))
pil_shear_x = _pil(lambda image, k: tf.stack([_one(), _f64(k), _zero(), _zero(), _one(), _zero()]))
pil_shear_y = _pil(lambda image, k: tf.stack([_one(), _zero(), _zero(), _f64(k), _one(), _zero()]))
pil_translate_x = _pil(lambda image, px: tf.stack([_one(), _zero(), _f64(px), _zero(), _one(), _zero()]))
pil_translate_y = _pil(lambda image, px: tf.stack([_one(), _zero(), _zero(), _zero(), _one(), _f64(px)]))


def _tf_projective(matrix):
  """A TensorFlow geometric op: `matrix(image, arg)` gives the 8 projective values; nearest sampling and
  a constant fill, which is what big_vision's wrap/unwrap does with tfa.image's default `nearest`."""
  return lambda fill, interpolation: (
    lambda image, arg: resample.projective(image, matrix(image, arg), fill, interpolation)
  )


def _tfa_rotation(image, degrees):
  """tensorflow_addons image/transform_ops.py angles_to_projective_transforms, for big_vision's `rotate`
  (degrees converted with math.pi / 180; positive turns counter-clockwise as displayed)."""
  angle = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
  cos, sin = tf.cos(angle), tf.sin(angle)
  x_offset = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
  y_offset = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
  return tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])


_f32 = lambda v: tf.cast(v, tf.float32)
tf_rotate = _tf_projective(_tfa_rotation)
# big_vision shear_x/shear_y: contrib_image.transform(wrap(image), [1, level, 0, 0, 1, 0, 0, 0]) (l.267-286).
tf_shear_x = _tf_projective(lambda image, k: tf.stack([1.0, _f32(k), 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
tf_shear_y = _tf_projective(lambda image, k: tf.stack([1.0, 0.0, 0.0, _f32(k), 1.0, 0.0, 0.0, 0.0]))
# big_vision translate_x: contrib_image.translate(wrap(image), [-pixels, 0]) -> transform [1, 0, pixels, ...].
tf_translate_x = _tf_projective(lambda image, px: tf.stack([1.0, 0.0, _f32(px), 0.0, 1.0, 0.0, 0.0, 0.0]))
tf_translate_y = _tf_projective(lambda image, px: tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, _f32(px), 0.0, 0.0]))


def _torchvision_shear(image, m):
  """torchvision _apply_op ShearX: F.affine(shear=[degrees(atan(m)), 0], center=[0, 0]) on a PIL image, whose
  _get_inverse_affine_matrix (functional.py l.1006-1058) gives PIL (1, tan(radians(shear)), 0, 0, 1, 0)."""
  return tf.tan(tf.atan(_f64(m)) * (180.0 / math.pi) * (math.pi / 180.0))


def _torchvision_shear_y(image, m):
  """ShearY: shear=[0, degrees(atan(m))] gives (1, 0, 0, sin(sy) / cos(sy), 1, 0)."""
  sy = tf.atan(_f64(m)) * (180.0 / math.pi) * (math.pi / 180.0)
  return tf.sin(sy) / tf.cos(sy)


# torchvision's ops on PIL images (torchvision/transforms/_functional_pil.py), nearest sampling, fill 0.
tv_shear_x = _pil(lambda image, m: tf.stack([_one(), _torchvision_shear(image, m), _zero(), _zero(), _one(), _zero()]))
tv_shear_y = _pil(
  lambda image, m: tf.stack([_one(), _zero(), _zero(), _torchvision_shear_y(image, m), _one(), _zero()])
)
# F.affine(translate=[int(m), 0]) about the centre: (1, 0, -tx, 0, 1, -ty): the content moves by +tx.
tv_translate_x = _pil(lambda image, px: tf.stack([_one(), _zero(), -_f64(px), _zero(), _one(), _zero()]))
tv_translate_y = _pil(lambda image, px: tf.stack([_one(), _zero(), _zero(), _zero(), _one(), -_f64(px)]))


def _torch_linspace(start, end, steps: int, index):
  """torch.linspace(start, end, steps)[index] in float32 as ATen's CPU kernel computes it: from the start
  for the first half, from the end for the second (RangeFactoriesKernel.cpp); start and end are doubles
  (Python floats) rounded to float32 first."""
  start32, end32 = tf.cast(start, tf.float32), tf.cast(end, tf.float32)
  step = (end32 - start32) / float(steps - 1)
  index = tf.cast(index, tf.float32)
  value = tf.where(index < steps // 2, start32 + step * index, end32 - step * (steps - 1 - index))
  return tf.cast(value, tf.float64)


def _width(image):
  return tf.cast(tf.shape(image)[1], tf.float64)


def _height(image):
  return tf.cast(tf.shape(image)[0], tf.float64)


# Each flavour: op name -> (fn(image, arg), level_to_arg(level, sign, image)); `level` is the
# magnitude on the flavour's own scale, `sign` is +-1 drawn per op.
_signed = lambda scale: lambda level, sign, image: sign * level / _MAX_LEVEL * scale
_enhance_increasing = lambda level, sign, image: 1.0 + sign * level / _MAX_LEVEL * 0.9
_enhance = lambda level, sign, image: level / _MAX_LEVEL * 1.8 + 0.1
_none = lambda level, sign, image: 0.0
_GREY = _FILL


def _pil_resampling(fn, interpolation: str, seed):
  """A PIL geometric op with a fixed filter, or timm's `_interpolation`: random.choice of bilinear and
  bicubic on each call (auto_augment.py l.50-54) when its hparams carry no interpolation."""
  if interpolation != 'random':
    return fn(_GREY, interpolation)
  bicubic = tf.random.stateless_uniform([], seed) < 0.5
  return lambda image, arg: tf.cond(
    bicubic, lambda: fn(_GREY, 'bicubic')(image, arg), lambda: fn(_GREY, 'bilinear')(image, arg)
  )


def _timm_ops(increasing: bool, interpolation: str, seed) -> dict:
  """timm auto_augment.py LEVEL_TO_ARG with hparams translate_pct=0.45, img_mean grey."""
  g = lambda fn: _pil_resampling(fn, interpolation, seed)
  ops = {
    'AutoContrast': (auto_contrast, _none),
    'Equalize': (equalize, _none),
    'Invert': (invert, _none),
    'Rotate': (g(pil_rotate), _signed(30.0)),
    'SolarizeAdd': (solarize_add, lambda level, sign, image: tf.minimum(tf.floor(level / _MAX_LEVEL * 110.0), 128.0)),
    'ShearX': (g(pil_shear_x), _signed(0.3)),
    'ShearY': (g(pil_shear_y), _signed(0.3)),
    'TranslateXRel': (g(pil_translate_x), lambda level, sign, image: _signed(0.45)(level, sign, image) * _width(image)),
    'TranslateYRel': (
      g(pil_translate_y),
      lambda level, sign, image: _signed(0.45)(level, sign, image) * _height(image),
    ),
  }
  bits = lambda level: tf.floor(level / _MAX_LEVEL * 4.0)
  threshold = lambda level: tf.minimum(tf.floor(level / _MAX_LEVEL * 256.0), 256.0)
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
  order = 'AutoContrast Equalize Invert Rotate Posterize Solarize SolarizeAdd Color Contrast Brightness Sharpness'
  order += ' ShearX ShearY TranslateXRel TranslateYRel'  # timm's _RAND_TRANSFORMS
  return {name: ops[name] for name in order.split()}


def _torchvision_ops(num_bins: int = 31) -> dict:
  """torchvision RandAugment._augmentation_space(num_bins, image_size) (autoaugment.py), in its order, as
  _apply_op runs each op on a PIL image: magnitudes are float32 linspaces read at the bin `level`."""
  g = lambda fn: fn(0.0, 'nearest')
  bins = lambda top: lambda level: _torch_linspace(0.0, top, num_bins, level)
  signed = lambda top: lambda level, sign, image: sign * bins(top)(level)
  enhance = lambda level, sign, image: 1.0 + sign * bins(0.9)(level)
  # linspace(0.0, 150.0 / 331.0 * image_size[1], num_bins), then _apply_op's int(magnitude): towards zero
  reach = lambda image, axis: 150.0 / 331.0 * tf.cast(tf.shape(image)[axis], tf.float64)
  translate = lambda axis: (
    lambda level, sign, image: tf.cast(
      tf.cast(sign * _torch_linspace(0.0, reach(image, axis), num_bins, level), tf.int32), tf.float64
    )
  )
  return {
    'Identity': (identity, _none),
    'ShearX': (g(tv_shear_x), signed(0.3)),
    'ShearY': (g(tv_shear_y), signed(0.3)),
    'TranslateX': (g(tv_translate_x), translate(1)),
    'TranslateY': (g(tv_translate_y), translate(0)),
    'Rotate': (g(pil_rotate), signed(30.0)),
    'Brightness': (brightness, enhance),
    'Color': (color, enhance),
    'Contrast': (contrast, enhance),
    'Sharpness': (sharpness, enhance),
    # 8 - (arange(num_bins) / ((num_bins - 1) / 4)).round().int(); linspace(255.0, 0.0, num_bins)
    'Posterize': (posterize, lambda level, sign, image: 8.0 - tf.round(level / ((num_bins - 1) / 4.0))),
    'Solarize': (solarize, lambda level, sign, image: _torch_linspace(255.0, 0.0, num_bins, level)),
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
  g = lambda fn: fn(_GREY, 'NEAREST')
  return {
    'AutoContrast': (auto_contrast_tf, _none),
    'Equalize': (equalize, _none),
    'Invert': (invert, _none),
    'Rotate': (g(tf_rotate), _signed(30.0)),
    'Posterize': (posterize_tf, lambda level, sign, image: tf.floor(level / _MAX_LEVEL * 4.0)),
    'Solarize': (solarize_tf, lambda level, sign, image: tf.floor(level / _MAX_LEVEL * 256.0)),
    'Color': (color_tf, _enhance),
    'Contrast': (contrast_big_vision, _enhance),
    'Brightness': (brightness, _enhance),
    'Sharpness': (sharpness_tf, _enhance),
    'ShearX': (g(tf_shear_x), _signed(0.3)),
    'ShearY': (g(tf_shear_y), _signed(0.3)),
    'TranslateX': (g(tf_translate_x), _signed(100.0)),
    'TranslateY': (g(tf_translate_y), _signed(100.0)),
    'Cutout': (
      lambda image, half: cutout(image, half, seed),
      lambda level, sign, image: tf.floor(level / _MAX_LEVEL * 40.0),
    ),
    'SolarizeAdd': (solarize_add, lambda level, sign, image: tf.floor(level / _MAX_LEVEL * 110.0)),
  }


FLAVOURS = ('timm', 'torchvision', 'big_vision')
TIMM_INTERPOLATIONS = ('bilinear', 'bicubic', 'random')


def _flavour_table(flavour: str, increasing: bool, seed, interpolation: str) -> dict:
  if flavour == 'timm':
    return _timm_ops(increasing, interpolation, seed)
  if flavour == 'torchvision':
    return _torchvision_ops()
  if flavour == 'big_vision':
    return _big_vision_ops(seed)
  raise ValueError(f'Unknown randaugment flavour {flavour!r}; expected one of {FLAVOURS}.')


def ops_of(flavour: str, increasing: bool = False, seed=None, interpolation: str = 'bilinear') -> dict:
  """The op table of a flavour: {name: (fn, level_to_arg)}, in the source's order; `seed` draws
  big_vision's cutout box and timm's random interpolation. The arguments are computed in double
  precision, as the sources compute them in Python."""
  table = _flavour_table(flavour, increasing, tf.zeros([2], tf.int32) if seed is None else seed, interpolation)
  in_double = lambda to_arg: (
    lambda level, sign, image: to_arg(tf.cast(level, tf.float64), tf.cast(sign, tf.float64), image)
  )
  return {name: (fn, in_double(to_arg)) for name, (fn, to_arg) in table.items()}


def randaugment(
  image,
  seed,
  num_ops: int = 2,
  magnitude: float = 9.0,
  magnitude_std: float = 0.0,
  flavour: str = 'timm',
  increasing: bool = False,
  prob: Optional[float] = None,
  interpolation: str = 'bilinear',
):
  """Applies `num_ops` ops drawn uniformly (with replacement) from `flavour`'s table at `magnitude`.

  The image is first rounded to uint8 values, which is what every source's ops run on. `prob`
  (default: the flavour's, 0.5 for timm, 1 otherwise) is the chance that a drawn op is applied;
  `magnitude_std` adds timm's Gaussian magnitude noise; `interpolation` is the timm flavour's PIL
  resampling for its geometric ops ('bilinear', 'bicubic', or 'random': timm's choice of either per
  op when its loader's `--train-interpolation` is random).
  """
  if flavour != 'timm' and (magnitude_std or increasing or interpolation != 'bilinear'):
    raise ValueError(
      f'magnitude_std, increasing and interpolation are timm options; flavour={flavour!r} has none of them.'
    )
  if interpolation not in TIMM_INTERPOLATIONS:
    raise ValueError(f'randaugment interpolation={interpolation!r}; expected one of {TIMM_INTERPOLATIONS}.')
  if magnitude < 0 or (flavour == 'torchvision' and magnitude > 30):
    raise ValueError(
      f"randaugment magnitude={magnitude} is outside flavour {flavour!r}'s scale "
      f'({"0..30, a bin of 31" if flavour == "torchvision" else "0..10, larger extrapolates"}).'
    )
  prob = (0.5 if flavour == 'timm' else 1.0) if prob is None else prob
  image = as_uint8_values(image)
  slot = _one_op if tf.executing_eagerly() else _traced_one_op  # eager calls run the ops as they are
  for op_seed in tf.unstack(tf.random.experimental.stateless_split(seed, num_ops)):
    image = slot(image, op_seed, float(magnitude), float(magnitude_std), flavour, increasing, prob, interpolation)
  return image


def _one_op(image, op_seed, magnitude, magnitude_std, flavour, increasing, prob, interpolation):
  """One RandAugment slot: an op drawn from the table and applied with probability `prob`. A function of its
  own, traced once per image shape and set of options, so a pipeline of `num_ops` slots traces the table's
  branches once rather than once per slot (the seed is an argument, not a constant of the graph)."""
  s_op, s_mag, s_sign, s_apply, s_cut = tf.unstack(tf.random.experimental.stateless_split(op_seed, 5))
  table = ops_of(flavour, increasing, s_cut, interpolation)
  index = tf.random.stateless_uniform([], s_op, 0, len(table), dtype=tf.int32)
  level = tf.constant(magnitude, tf.float64)  # the sources compute their op arguments in double
  if magnitude_std:
    noise = tf.random.stateless_normal([], s_mag, dtype=tf.float64)
    level = tf.clip_by_value(level + magnitude_std * noise, 0.0, _MAX_LEVEL)
  sign = tf.where(tf.random.stateless_uniform([], s_sign) < 0.5, tf.constant(-1.0, tf.float64), 1.0)
  branches = [
    lambda fn=fn, to_arg=to_arg, x=image, level=level, sign=sign: fn(x, to_arg(level, sign, x))
    for fn, to_arg in table.values()
  ]
  if prob >= 1:  # big_vision, torchvision: every drawn op applies
    return tf.ensure_shape(tf.switch_case(index, branches), image.shape)
  apply = tf.random.stateless_uniform([], s_apply) < prob  # the skipped op is not computed at all
  chosen = lambda index=index, branches=branches: tf.switch_case(index, branches)
  return tf.ensure_shape(tf.cond(apply, chosen, lambda x=image: x), image.shape)


_traced_one_op = tf.function(_one_op, autograph=False)


def color_jitter(image, seed, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0):
  """torchvision ColorJitter(brightness, contrast, saturation): factors U[max(0, 1 - j), 1 + j],
  applied in a random order (torchvision/transforms/transforms.py ColorJitter.get_params/forward)."""
  s_order, s_b, s_c, s_s = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
  image = as_uint8_values(image)
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
