"""Predictions with a run's own evaluation preprocessing: `isojax.predict(model, variables, config, images)`."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Union

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import tensorflow as tf

from isojax import models
from isojax.data import preprocess as pp

ImageLike = Union[str, np.ndarray]


def read_image(path: str, channels: int) -> np.ndarray:
  """A JPEG/PNG/GIF/BMP file as uint8 [height, width, channels]."""
  return tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False).numpy()


def preprocess(
  config: ml_collections.ConfigDict, images: Sequence[ImageLike] | np.ndarray, channels: int
) -> np.ndarray:
  """uint8 images (any size) or file paths -> the float batch the run evaluated on."""
  return preprocess_with(config.data.eval_pp, config.data.image_size, images, channels)


def preprocess_with(spec: str, image_size: int, images: Sequence[ImageLike] | np.ndarray, channels: int) -> np.ndarray:
  """uint8 images or file paths -> float images, by a preprocessing spec (an exported model's sidecar's)."""
  process = pp.build(spec, image_size, channels)
  batch = []
  for image in images:
    image = read_image(image, channels) if isinstance(image, str) else np.asarray(image)
    if image.ndim == 2:
      image = image[..., None]
    if image.shape[-1] != channels:
      raise ValueError(f'Image has {image.shape[-1]} channels; the run was trained on {channels}.')
    batch.append(process(tf.constant(image), tf.constant([0, 0], tf.int64)).numpy())
  return np.stack(batch)


@functools.lru_cache(maxsize=8)
def _apply(model: nn.Module):
  def probabilities(variables, x):
    logits: Any = model.apply(variables, x, train=False)
    return jax.nn.softmax(logits)

  return jax.jit(probabilities)


def predict(
  model: nn.Module,
  variables: dict,
  config: ml_collections.ConfigDict,
  images: Sequence[ImageLike] | np.ndarray,
  batch_size: int = 256,
) -> np.ndarray:
  """Class probabilities [N, num_classes] for uint8 images or image files."""
  channels = models.input_channels(variables)
  probabilities = []
  for start in range(0, len(images), batch_size):
    batch = preprocess(config, images[start : start + batch_size], channels)
    probabilities.append(np.asarray(_apply(model)(variables, batch)))
  return np.concatenate(probabilities)
