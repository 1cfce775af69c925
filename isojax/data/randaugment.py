"""RandAugment (Cubuk et al. 2020) with stateless randomness, for any channel count.

Images are float32 HWC in 0..255. Magnitudes follow timm's `rand-m{M}-n{N}` scaling
(M in 0..10, random sign for symmetric ops); geometric ops fill with grey (128).
"""
from __future__ import annotations

import math

import tensorflow as tf

_MAX_LEVEL = 10.0
_FILL = 128.0


def _blend(degenerate, image, factor):
  return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0)


def _grey(image):
  if image.shape[-1] == 3:
    return tf.reduce_sum(image * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
  return tf.reduce_mean(image, axis=-1, keepdims=True)


def _transform(image, matrix):
  """Projective transform; `matrix` maps output pixel (x, y, 1) to input coordinates."""
  flat = tf.concat([tf.reshape(matrix, [-1])[:8]], axis=0)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=flat[None], output_shape=tf.shape(image)[:2],
      fill_value=_FILL, interpolation='BILINEAR', fill_mode='CONSTANT')
  return out[0]


def _around_centre(image, linear):
  h, w = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
  cx, cy = (w - 1) / 2, (h - 1) / 2
  to_centre = tf.constant([[1., 0., 0.], [0., 1., 0.], [0., 0., 1.]]) + tf.stack(
      [[0., 0., -cx], [0., 0., -cy], [0., 0., 0.]])
  back = tf.constant([[1., 0., 0.], [0., 1., 0.], [0., 0., 1.]]) + tf.stack(
      [[0., 0., cx], [0., 0., cy], [0., 0., 0.]])
  return _transform(image, back @ linear @ to_centre)


def identity(image, level):
  return image


def auto_contrast(image, level):
  lo = tf.reduce_min(image, axis=(0, 1), keepdims=True)
  hi = tf.reduce_max(image, axis=(0, 1), keepdims=True)
  scaled = (image - lo) * 255.0 / tf.maximum(hi - lo, 1e-3)
  return tf.where(hi > lo, scaled, image)


def equalize(image, level):
  def channel(im):
    im = tf.cast(tf.clip_by_value(im, 0, 255), tf.int32)
    histo = tf.histogram_fixed_width(im, [0, 255], nbins=256)
    nonzero = tf.boolean_mask(histo, histo > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    lut = tf.clip_by_value(tf.concat([[0], ((tf.cumsum(histo) + step // 2) // tf.maximum(step, 1))[:-1]], 0), 0, 255)
    return tf.cast(tf.cond(step == 0, lambda: im, lambda: tf.gather(lut, im)), tf.float32)
  return tf.stack([channel(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def rotate(image, level):
  angle = level / _MAX_LEVEL * 30.0 * math.pi / 180.0
  c, s = tf.cos(angle), tf.sin(angle)
  return _around_centre(image, tf.stack([[c, s, 0.], [-s, c, 0.], [0., 0., 1.]]))


def shear_x(image, level):
  k = level / _MAX_LEVEL * 0.3
  return _around_centre(image, tf.stack([[1., k, 0.], [0., 1., 0.], [0., 0., 1.]]))


def shear_y(image, level):
  k = level / _MAX_LEVEL * 0.3
  return _around_centre(image, tf.stack([[1., 0., 0.], [k, 1., 0.], [0., 0., 1.]]))


def translate_x(image, level):
  dx = level / _MAX_LEVEL * 0.45 * tf.cast(tf.shape(image)[1], tf.float32)
  return _transform(image, tf.stack([[1., 0., dx], [0., 1., 0.], [0., 0., 1.]]))


def translate_y(image, level):
  dy = level / _MAX_LEVEL * 0.45 * tf.cast(tf.shape(image)[0], tf.float32)
  return _transform(image, tf.stack([[1., 0., 0.], [0., 1., dy], [0., 0., 1.]]))


def solarize(image, level):
  threshold = 256.0 - tf.abs(level) / _MAX_LEVEL * 256.0
  return tf.where(image < threshold, image, 255.0 - image)


def posterize(image, level):
  shift = tf.cast(tf.abs(level) / _MAX_LEVEL * 4.0, tf.int32)
  step = tf.cast(tf.bitwise.left_shift(1, shift), tf.float32)
  return tf.floor(image / step) * step


def color(image, level):
  return _blend(tf.broadcast_to(_grey(image), tf.shape(image)), image, 1.0 + level / _MAX_LEVEL * 0.9)


def contrast(image, level):
  mean = tf.reduce_mean(_grey(image))
  return _blend(tf.fill(tf.shape(image), mean), image, 1.0 + level / _MAX_LEVEL * 0.9)


def brightness(image, level):
  return _blend(tf.zeros_like(image), image, 1.0 + level / _MAX_LEVEL * 0.9)


def sharpness(image, level):
  kernel = tf.constant([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13.0
  channels = image.shape[-1]
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
  smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], 'VALID')[0]
  smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  border = tf.pad(tf.ones([h - 2, w - 2, channels]), [[1, 1], [1, 1], [0, 0]]) > 0
  degenerate = tf.where(border, smooth, image)
  return _blend(degenerate, image, 1.0 + level / _MAX_LEVEL * 0.9)


TRANSFORMS = (identity, auto_contrast, equalize, rotate, solarize, color, posterize,
              contrast, brightness, sharpness, shear_x, shear_y, translate_x, translate_y)


def randaugment(image, seed, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5):
  """Applies `num_ops` transforms drawn uniformly, each at a (noisy) magnitude with a random sign."""
  for op_seed in tf.unstack(tf.random.experimental.stateless_split(seed, num_ops)):
    s_op, s_mag, s_sign = tf.unstack(tf.random.experimental.stateless_split(op_seed, 3))
    index = tf.random.stateless_uniform([], s_op, 0, len(TRANSFORMS), dtype=tf.int32)
    level = magnitude + magnitude_std * tf.random.stateless_normal([], s_mag)
    level = tf.clip_by_value(level, 0.0, _MAX_LEVEL)
    level = tf.where(tf.random.stateless_uniform([], s_sign) < 0.5, -level, level)
    branches = [lambda f=f: f(image, level) for f in TRANSFORMS]
    image = tf.ensure_shape(tf.switch_case(index, branches), image.shape)
  return image
