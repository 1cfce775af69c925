"""What a trained isotropic model learned, as arrays ready to plot.

- ViT: attention rollout from the class token (or averaged over tokens for GAP models).
- Mixer: the token-mixing MLP's first-layer weights, one image per hidden unit.
- ConvMixer: the depthwise convolution kernels, one k x k image per channel.
- Any model: its shape profile, tokens x width after each block or stage (flat for isotropic
  models, shrinking for pyramids), from `models.features` without computing anything.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from isojax import models


def _blocks(params: dict) -> list[dict]:
  """Each block's parameters, unrolled (`scan=True` stacks them under `blocks`)."""
  params = models.unstack_blocks({'params': params})['params']
  count = sum(1 for k in params if k.startswith('block_'))
  return [params[f'block_{i}'] for i in range(count)]


def attention_maps(model: nn.Module, variables: dict, images: np.ndarray) -> list[np.ndarray]:
  """Per block, the head-averaged attention weights [N, tokens, tokens].

  Recomputed from each block's attention input (captured with `capture_intermediates`), so the
  fused attention used in training is left as it is. A scanned model is read unrolled.
  """
  model, variables = models.unrolled(model, variables)
  _, state = model.apply(
    variables,
    images,
    train=False,
    capture_intermediates=lambda module, _: module.name == 'norm1',
    mutable=['intermediates'],
  )
  maps = []
  for i, block in enumerate(_blocks(variables['params'])):
    y = state['intermediates'][f'block_{i}']['norm1']['__call__'][0]
    qkv = block['token_mixing']['attention']['qkv']
    heads = models.attention_heads(model)
    x = y @ qkv['kernel'] + qkv.get('bias', 0.0)  # timm's qkv_bias=False models have none
    batch, tokens, three_width = x.shape
    x = x.reshape(batch, tokens, 3, heads, three_width // 3 // heads)
    q, k = x[:, :, 0], x[:, :, 1]
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
    maps.append(np.asarray(jax.nn.softmax(logits, axis=-1).mean(axis=1)))
  return maps


def attention_rollout(model: nn.Module, variables: dict, images: np.ndarray) -> np.ndarray:
  """Abnar & Zuidema (2020): attention flowing to each patch through all blocks, [N, h, w]."""
  maps = attention_maps(model, variables, images)
  tokens = maps[0].shape[-1]
  rollout = np.tile(np.eye(tokens), (maps[0].shape[0], 1, 1))
  for attention in maps:
    attention = 0.5 * attention + 0.5 * np.eye(tokens)  # the residual connection
    attention /= attention.sum(-1, keepdims=True)
    rollout = attention @ rollout
  class_token = model.pooling_head.pool == 'token'
  flow = rollout[:, 0, 1:] if class_token else rollout.mean(axis=1)
  side = int(round(np.sqrt(flow.shape[-1])))
  return flow.reshape(-1, side, side)


def token_mixing_weights(variables: dict, block: int = 0) -> np.ndarray:
  """Mixer: [hidden_units, h, w], how each token-mixing unit weighs the patches."""
  kernel = np.asarray(_blocks(variables['params'])[block]['token_mixing']['mlp']['Dense_0']['kernel'])
  side = int(round(np.sqrt(kernel.shape[0])))
  return kernel.T.reshape(-1, side, side)


def depthwise_kernels(variables: dict, block: int = 0) -> np.ndarray:
  """ConvMixer: [channels, k, k], the depthwise filters of one block."""
  kernel = np.asarray(_blocks(variables['params'])[block]['token_mixing']['depthwise']['kernel'])
  return np.moveaxis(kernel[:, :, 0, :], -1, 0)


def shape_profile(model: nn.Module, image_size: int, channels: int = 3) -> list[tuple[str, int, int]]:
  """[(feature, tokens, width)] after each block ('block00', ...) or stage ('stage1', ...), in order.

  Tokens are every position of a feature map (h x w, or the sequence with any class token); a hybrid's ResNet
  stages ('stem/backbone/stage1', ...) come before its blocks.
  shapes only (`jax.eval_shape`): no parameters are initialised.
  """
  images = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)

  def run(x):
    return models.features(model, model.init(jax.random.PRNGKey(0), x, train=False), x)[1]

  found = jax.eval_shape(run, images)
  in_order = sorted(found, key=lambda name: (not name.startswith('stem/'), name))  # a stem's stages come first
  return [
    (name, int(np.prod(found[name].shape[1:-1])), int(found[name].shape[-1]))
    for name in in_order
    if name != models.PRE_LOGITS
  ]
