"""Affine resampling exactly as the augmentation sources do it, on float32 HWC images holding 0..255.

Each source resamples its geometric ops (rotate, shear, translate) its own way, and the difference is
not small at the image's border, where most of what these ops change lies:

- PIL (timm's ops; torchvision's on PIL images), `Image.transform(size, AFFINE, (a, b, c, d, e, f))`:
  Pillow src/libImaging/Geometry.c `affine_transform` maps the output pixel's centre (x + 0.5, y + 0.5)
  to (a x' + b y' + c, d x' + e y' + f); `bilinear_filter32RGB` / `bicubic_filter32RGB` keep a sample
  only when that point lies inside [0, width) x [0, height) and otherwise leave the fill colour (nearest
  sampling takes ImagingScaleAffine or fixed-point affine_fixed instead, see `_nearest`); inside,
  the neighbours are clamped to the edge (XCLIP/YCLIP), the interpolation runs in double precision and the
  result is truncated to uint8 (bicubic clipped to 0..255 first; its cubic has a = -1, the BICUBIC macro).
- TensorFlow's ImageProjectiveTransformV3 (big_vision's ops through tensorflow_addons): the matrix maps
  output pixel indices to input indices, with TensorFlow's own sampling and fill.
"""

from __future__ import annotations

import tensorflow as tf

PIL_FILTERS = ('nearest', 'bilinear', 'bicubic')


def _pil_coordinates(coefficients, height, width):
  """Where each output pixel's centre samples the input (Geometry.c `affine_transform`), in float64."""
  a, b, c, d, e, f = tf.unstack(tf.cast(coefficients, tf.float64))
  ys = tf.cast(tf.range(height), tf.float64)[:, None] + 0.5
  xs = tf.cast(tf.range(width), tf.float64)[None, :] + 0.5
  return a * xs + b * ys + c, d * xs + e * ys + f


def _gather(image, rows, cols):
  """image[rows, cols] with both index grids clamped to the image (Geometry.c XCLIP, YCLIP)."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  rows = tf.clip_by_value(rows, 0, h - 1)
  cols = tf.clip_by_value(cols, 0, w - 1)
  return tf.gather_nd(image, tf.stack([rows, cols], axis=-1))


def _bilinear(image, x, y):
  """Geometry.c BILINEAR_HEAD/BODY: the four clamped neighbours of (x - 0.5, y - 0.5)."""
  x, y = x - 0.5, y - 0.5
  x0, y0 = tf.floor(x), tf.floor(y)
  dx, dy = (x - x0)[..., None], (y - y0)[..., None]
  xi, yi = tf.cast(x0, tf.int32), tf.cast(y0, tf.int32)
  row = lambda r: _gather(image, r, xi) + (_gather(image, r, xi + 1) - _gather(image, r, xi)) * dx
  top, bottom = row(yi), row(yi + 1)
  return tf.floor(top + (bottom - top) * dy)


def _cubic(v1, v2, v3, v4, d):
  """Geometry.c BICUBIC: the cubic through four samples at fraction d (Keys' kernel with a = -1)."""
  p2 = -v1 + v3
  p3 = 2 * (v1 - v2) + v3 - v4
  p4 = -v1 + v2 - v3 + v4
  return v2 + d * (p2 + d * (p3 + d * p4))


def _bicubic(image, x, y):
  """Geometry.c BICUBIC_HEAD/BODY: sixteen clamped neighbours, clipped to 0..255 and truncated."""
  x, y = x - 0.5, y - 0.5
  x0, y0 = tf.floor(x), tf.floor(y)
  dx, dy = (x - x0)[..., None], (y - y0)[..., None]
  xi, yi = tf.cast(x0, tf.int32) - 1, tf.cast(y0, tf.int32) - 1
  rows = []
  for j in range(4):
    v1, v2, v3, v4 = (_gather(image, yi + j, xi + i) for i in range(4))
    rows.append(_cubic(v1, v2, v3, v4, dx))
  return tf.floor(tf.clip_by_value(_cubic(rows[0], rows[1], rows[2], rows[3], dy), 0.0, 255.0))


def _coord(v):
  """Geometry.c COORD: int(v) for v >= 0, -1 below (so that -0.5 is outside, not pixel 0)."""
  return tf.where(v < 0, -1, tf.cast(v, tf.int32))


def _nearest(image, coefficients):
  """ImagingTransformAffine with NEAREST: a pure scale or translation (b = d = 0) goes through
  ImagingScaleAffine (COORD of c + a / 2 + a x), any other map through affine_fixed, 16.16 fixed point:
  FIX(v) = floor(v * 65536 + 0.5), the sample at (FIX(c + a/2 + b/2) + x FIX(a) + y FIX(b)) >> 16.
  (PIL falls back to floating point past 32768 pixels; not reproduced.) Returns (pixels, inside)."""
  a, b, c, d, e, f = tf.unstack(tf.cast(coefficients, tf.float64))
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  ys, xs = tf.cast(tf.range(h), tf.float64)[:, None], tf.cast(tf.range(w), tf.float64)[None, :]

  def scaled():
    grid = tf.stack([h, w])
    return tf.broadcast_to(_coord(f + e * 0.5 + e * ys), grid), tf.broadcast_to(_coord(c + a * 0.5 + a * xs), grid)

  def fixed():
    fix = lambda v: tf.cast(tf.floor(v * 65536.0 + 0.5), tf.int64)
    x64, y64 = tf.cast(xs, tf.int64), tf.cast(ys, tf.int64)
    cols = fix(c + a * 0.5 + b * 0.5) + x64 * fix(a) + y64 * fix(b)
    rows = fix(f + d * 0.5 + e * 0.5) + x64 * fix(d) + y64 * fix(e)
    return tf.cast(tf.bitwise.right_shift(rows, 16), tf.int32), tf.cast(tf.bitwise.right_shift(cols, 16), tf.int32)

  rows, cols = tf.cond((b == 0) & (d == 0), scaled, fixed)
  inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
  return _gather(tf.cast(image, tf.float64), rows, cols), inside


def pil_affine(image, coefficients, fill, interpolation: str = 'bilinear'):
  """PIL's `image.transform(image.size, Image.AFFINE, coefficients, resample, fillcolor=fill)`.

  `coefficients` (a, b, c, d, e, f) map output to input coordinates as PIL's do (pixel centres at
  +0.5); `fill` is a scalar or one value per channel."""
  if interpolation not in PIL_FILTERS:
    raise ValueError(f'PIL resampling {interpolation!r} is not implemented here; expected one of {PIL_FILTERS}.')
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  if interpolation == 'nearest':
    sampled, inside = _nearest(image, coefficients)
  else:
    x, y = _pil_coordinates(coefficients, h, w)
    inside = (x >= 0) & (x < tf.cast(w, tf.float64)) & (y >= 0) & (y < tf.cast(h, tf.float64))
    pixels = tf.cast(image, tf.float64)
    sampled = _bilinear(pixels, x, y) if interpolation == 'bilinear' else _bicubic(pixels, x, y)
  fill = tf.broadcast_to(tf.cast(fill, tf.float64), tf.shape(sampled))
  return tf.cast(tf.where(inside[..., None], sampled, fill), tf.float32)


def pil_rotation(degrees, height, width):
  """The coefficients of PIL's `Image.rotate(degrees)` about (width / 2, height / 2), counter-clockwise
  for positive degrees (Pillow src/PIL/Image.py `rotate`: matrix rounded to 15 decimals)."""
  angle = -tf.cast(degrees, tf.float64) * (3.141592653589793 / 180.0)
  round15 = lambda v: tf.round(v * 1e15) / 1e15
  cos, sin = round15(tf.cos(angle)), round15(tf.sin(angle))
  cx, cy = tf.cast(width, tf.float64) / 2, tf.cast(height, tf.float64) / 2
  return tf.stack([cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy])


def projective(image, matrix, fill, interpolation: str):
  """TensorFlow's ImageProjectiveTransformV3 with a constant fill: `matrix` (8 values) maps output pixel
  (x, y) to input (a x + b y + c, d x + e y + f) / (g x + h y + 1), in pixel indices."""
  out = tf.raw_ops.ImageProjectiveTransformV3(
    images=image[None],
    transforms=tf.reshape(tf.cast(matrix, tf.float32), [1, 8]),
    output_shape=tf.shape(image)[:2],
    fill_value=tf.cast(fill, tf.float32),
    interpolation=interpolation,
    fill_mode='CONSTANT',
  )
  return out[0]
