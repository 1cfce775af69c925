"""The CPU fast paths (isojax/kernels) compute the reference ops' numbers, forward and backward, and a model
takes them only when built to: what it computes never depends on where it is traced."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isojax import kernels, models
from isojax.kernels import attention, dense, depthwise
from isojax.models.layers import Dense, DepthwiseConv, multihead_attention


def assert_close_with_gradients(fast, reference, args, rtol=1e-5, atol=1e-5):
  """Equal outputs, and equal gradients of a random projection of them for every argument."""
  np.testing.assert_allclose(fast(*args), reference(*args), rtol=rtol, atol=atol)
  weights = jax.random.normal(jax.random.PRNGKey(42), jnp.shape(reference(*args)))
  grads = [
    jax.grad(lambda *a, f=f: (f(*a) * weights).sum(), argnums=tuple(range(len(args))))(*args) for f in (fast, reference)
  ]
  for a, b in zip(*map(jax.tree_util.tree_leaves, grads)):
    np.testing.assert_allclose(a, b, rtol=10 * rtol, atol=10 * atol)


@pytest.mark.slow
@pytest.mark.parametrize('kernel_size,batch', [(3, 2), (4, 3), (5, 6)])
def test_the_shifted_depthwise_convolution_is_the_grouped_convolution(kernel_size, batch):
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, 6, 6, 8))
  shift, conv = DepthwiseConv(kernel_size, kernels='cpu'), DepthwiseConv(kernel_size, kernels='reference')
  variables = jax.tree_util.tree_map(lambda p: p + 0.1, shift.init(jax.random.PRNGKey(1), x))  # a non-zero bias too
  # Gradients for the parameters and the input (the shifted form has its own backward pass).
  assert_close_with_gradients(shift.apply, conv.apply, (variables, x), rtol=1e-5, atol=1e-5)


def test_the_depthwise_kernel_gradient_is_the_same_whatever_the_batch_chunking():
  x, dy = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 5, 5, 8))
  conv = lambda k: jax.lax.conv_general_dilated(
    x, k, (1, 1), 'SAME', feature_group_count=8, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  expected = jax.vjp(conv, jnp.zeros((3, 3, 1, 8)))[1](dy)[0]
  image_bytes = 5 * 5 * 8 * 4
  for chunk_bytes in (1, 2 * image_bytes, 4 * image_bytes, 1 << 20):  # chunks of 1, 2, 3 (6 % 4) and 6 images
    np.testing.assert_allclose(depthwise.kernel_gradient(x, dy, 3, chunk_bytes), expected, rtol=1e-5, atol=1e-5)


def test_the_folded_dense_has_nn_dense_parameters_and_numbers():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 4))
  variables = nn.Dense(6).init(jax.random.PRNGKey(1), x)
  for choice in ('reference', 'cpu'):
    assert jax.tree_util.tree_map(
      jnp.shape, Dense(6, kernels=choice).init(jax.random.PRNGKey(1), x)
    ) == jax.tree_util.tree_map(jnp.shape, variables)
  folded = lambda v, x: dense.folded(lambda y: nn.Dense(6).apply(v, y), x)
  assert_close_with_gradients(folded, nn.Dense(6).apply, (variables, x), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_the_reference_attention_is_jax_dot_product_attention_and_the_folded_one_equals_it(dtype):
  batch, tokens, heads, head_dim = 2, 7, 3, 4
  qkv = jax.random.normal(jax.random.PRNGKey(0), (batch, tokens, 3 * heads * head_dim)).astype(dtype)
  q, k, v = jnp.split(qkv.reshape(batch, tokens, 3, heads, head_dim), 3, axis=2)
  expected = jax.nn.dot_product_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0]).reshape(batch, tokens, -1)
  tol = 1e-5 if dtype == jnp.float32 else 3e-2
  for attend in (multihead_attention, attention.folded):
    np.testing.assert_allclose(attend(qkv, heads).astype(jnp.float32), expected.astype(jnp.float32), rtol=tol, atol=tol)
  if dtype == jnp.float32:
    assert_close_with_gradients(lambda x: attention.folded(x, heads), lambda x: multihead_attention(x, heads), (qkv,))


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
  'name',
  [
    'ConvMixer-32/1-k3-p4',
    *(pytest.param(n, marks=SLOW) for n in ('ViT-32x1/4-h2-m64', 'ConvNeXt-iso-32x1-p4-k3', 'CaiT-32x1/4-h4')),
  ],
)
def test_a_model_on_the_fast_paths_computes_what_the_reference_model_computes(name):
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  fast, reference = models.create(name, 5, kernels='cpu'), models.create(name, 5, kernels='reference')
  variables = jax.jit(lambda x: reference.init(jax.random.PRNGKey(0), x))(images)
  variables = jax.tree_util.tree_map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape), variables)
  apply = lambda model: jax.jit(lambda v, x: model.apply(v, x, train=False))
  assert_close_with_gradients(apply(fast), apply(reference), (variables, images), rtol=1e-4, atol=1e-4)


def test_kernels_are_chosen_once_when_the_model_is_built_never_by_the_backend_inside_a_layer():
  assert kernels.resolve('reference') == 'reference' and kernels.resolve('cpu') == 'cpu'
  assert kernels.resolve('auto') == ('cpu' if jax.default_backend() == 'cpu' else 'reference')
  model = models.create('ConvMixer-32/2-k3-p4', 5, kernels='reference')
  images = jnp.zeros((1, 16, 16, 3))
  variables = model.init(jax.random.PRNGKey(0), images)
  grad = lambda m: jax.make_jaxpr(jax.grad(lambda v: m.apply(v, images, train=False).sum()))(variables)
  assert 'custom_vjp' not in str(grad(model)) and 'conv_general_dilated' in str(grad(model))
  assert 'custom_vjp' in str(grad(models.create('ConvMixer-32/2-k3-p4', 5, kernels='cpu')))
  with pytest.raises(ValueError, match=r"A layer got kernels='auto'.*resolve"):
    DepthwiseConv(3, kernels='auto').init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 2)))
  with pytest.raises(ValueError, match=r"kernels='fast'; expected one of \('auto', 'reference', 'cpu'\)"):
    models.create('ViT-32x2/4-h2-m64', 5, kernels='fast')
