"""tensorflow_addons.image, as far as big_vision's pp/archive/autoaugment.py calls it: a shim over the raw op.

tensorflow-addons is unmaintained since 2023 and built for TensorFlow <= 2.15, so the vendored
big_vision file runs with this module in its place. Each function is tensorflow/addons@d208d75's, reduced
to the single-image, constant-fill case big_vision uses:
- `transform`: image/transform_ops.py l.35-134, ImageProjectiveTransformV3 with interpolation 'nearest',
  fill_mode 'constant' and fill_value 0 by default;
- `rotate`: l.287-345 with `angles_to_projective_transforms` l.233-284;
- `translate`: image/translate_ops.py l.74-123 with `translations_to_projective_transforms` l.25-71.
"""

import tensorflow as tf


def transform(images, transforms, interpolation='nearest', fill_mode='constant', output_shape=None, fill_value=0.0):
  images = tf.convert_to_tensor(images)
  single = len(images.shape) == 3
  batch = images[None] if single else images
  transforms = tf.convert_to_tensor(transforms, tf.float32)
  transforms = transforms[None] if len(transforms.shape) == 1 else transforms
  output = tf.raw_ops.ImageProjectiveTransformV3(
    images=batch,
    transforms=transforms,
    output_shape=tf.shape(batch)[1:3] if output_shape is None else output_shape,
    interpolation=interpolation.upper(),
    fill_mode=fill_mode.upper(),
    fill_value=tf.convert_to_tensor(fill_value, tf.float32),
  )
  return output[0] if single else output


def angles_to_projective_transforms(angles, image_height, image_width):
  angles = tf.convert_to_tensor(angles, tf.float32)
  angles = angles[None] if len(angles.shape) == 0 else angles
  cos_angles, sin_angles = tf.math.cos(angles), tf.math.sin(angles)
  x_offset = ((image_width - 1) - (cos_angles * (image_width - 1) - sin_angles * (image_height - 1))) / 2.0
  y_offset = ((image_height - 1) - (sin_angles * (image_width - 1) + cos_angles * (image_height - 1))) / 2.0
  num_angles = tf.shape(angles)[0]
  return tf.concat(
    [
      cos_angles[:, None],
      -sin_angles[:, None],
      x_offset[:, None],
      sin_angles[:, None],
      cos_angles[:, None],
      y_offset[:, None],
      tf.zeros((num_angles, 2), tf.float32),
    ],
    axis=1,
  )


def rotate(images, angles, interpolation='nearest', fill_mode='constant', fill_value=0.0):
  images = tf.convert_to_tensor(images)
  height = tf.cast(tf.shape(images)[-3], tf.float32)[None]
  width = tf.cast(tf.shape(images)[-2], tf.float32)[None]
  return transform(
    images, angles_to_projective_transforms(angles, height, width), interpolation, fill_mode, fill_value=fill_value
  )


def translations_to_projective_transforms(translations):
  translations = tf.convert_to_tensor(translations, tf.float32)
  translations = translations[None] if len(translations.shape) == 1 else translations
  n = tf.shape(translations)[0]
  ones, zeros = tf.ones((n, 1), tf.float32), tf.zeros((n, 1), tf.float32)
  return tf.concat(
    [ones, zeros, -translations[:, 0, None], zeros, ones, -translations[:, 1, None], tf.zeros((n, 2), tf.float32)],
    axis=1,
  )


def translate(images, translations, interpolation='nearest', fill_mode='constant', fill_value=0.0):
  return transform(
    images, translations_to_projective_transforms(translations), interpolation, fill_mode, fill_value=fill_value
  )
