"""The depthwise k x k 'SAME' convolution as k*k shifted multiply-adds, with a hand-written backward pass.

On CPU, XLA's grouped convolution (and above all its gradient) is an order of magnitude slower than the same
sum written as shifted multiply-adds, which XLA fuses into one loop near memory speed. Padding is placed as
XLA places 'SAME' (for even k too), so the numbers equal `lax.conv_general_dilated(..., 'SAME',
feature_group_count=C)`, the reference in `isojax.models.layers.DepthwiseConv`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _shifted_sum(x: jax.Array, kernel: jax.Array, lo: int, hi: int) -> jax.Array:
  """sum_ij x[h + i - lo, w + j - lo] * kernel[i, j]: one loop fusion XLA runs near memory speed."""
  k, (h, w) = kernel.shape[0], x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
  taps = [padded[:, i : i + h, j : j + w, :] * kernel[i, j, 0] for i in range(k) for j in range(k)]
  return functools.reduce(jnp.add, taps)


def kernel_gradient(x: jax.Array, dy: jax.Array, k: int, chunk_bytes: int = 1 << 20) -> jax.Array:
  """d(loss)/d(kernel)[i, j, c] = sum over b, h, w of x[b, h + i - lo, w + j - lo, c] * dy[b, h, w, c].

  The k*k reductions run over about a megabyte of images at a time (a scan over the batch), so each tap's
  product is read from cache rather than from memory: 2-3x faster than reducing each tap over the whole batch.
  """
  lo, hi = (k - 1) // 2, k // 2
  batch, h, w, width = x.shape
  image_bytes = h * w * width * x.dtype.itemsize
  chunk = max(1, min(batch, chunk_bytes // image_bytes))
  while batch % chunk:
    chunk -= 1
  padded = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
  padded = padded.reshape(batch // chunk, chunk, *padded.shape[1:])
  dy = dy.reshape(batch // chunk, chunk, *dy.shape[1:])

  def add_chunk(total, chunk_arrays):
    xc, dc = chunk_arrays
    taps = [
      jnp.sum(xc[:, i : i + h, j : j + w, :] * dc, axis=(0, 1, 2), dtype=jnp.float32)
      for i in range(k)
      for j in range(k)
    ]
    return total + jnp.stack(taps), None

  total, _ = jax.lax.scan(add_chunk, jnp.zeros((k * k, width), jnp.float32), (padded, dy))
  return total.reshape(k, k, 1, width)


@jax.custom_vjp
def shifted(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Depthwise 'SAME' convolution of NHWC `x` with an HWIO kernel [k, k, 1, C], as k*k shifted multiply-adds."""
  k = kernel.shape[0]
  return _shifted_sum(x, kernel, (k - 1) // 2, k // 2)


def _shifted_fwd(x, kernel):
  return shifted(x, kernel), (x, kernel)


def _shifted_bwd(residuals, dy):
  # Written out because autodiff of the shifted sum pads and slices dy once per tap and
  # reduces each tap over the whole batch: 2x (ConvMixer-256/8) to 3x slower.
  x, kernel = residuals
  k = kernel.shape[0]
  dx = _shifted_sum(dy, kernel[::-1, ::-1], k // 2, (k - 1) // 2)  # correlation with the flipped kernel
  return dx, kernel_gradient(x, dy, k).astype(kernel.dtype)


shifted.defvjp(_shifted_fwd, _shifted_bwd)
