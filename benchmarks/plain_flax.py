"""The plain-Flax baseline of the side-by-side benchmark: the same models written the usual way.

    python benchmarks/plain_flax.py --model ViT-S/16 --batch_size 16 --image_size 224

ViT and Mixer are google-research/vision_transformer's own `models_vit.py` and `models_mixer.py`
(vendored verbatim in tests/reference/sources: flax's stock MultiHeadDotProductAttention with
separate query/key/value, heads as a middle axis; dropout set to 0 as in isojax's
column); ConvMixer uses nn.Conv for the patch,
depthwise (feature_group_count) and pointwise convolutions. The step is the flax-examples
one: `jax.jit` of value_and_grad + optax.adamw through flax's TrainState, with no buffer
donation. Architecture sizes come from isojax's registry tables and the timing from
isojax.training.benchmark; nothing else from isojax.
Prints one JSON line with the median seconds of a training step and of inference.
"""

import functools
import json
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import flags  # noqa: E402
from flax.training import train_state  # noqa: E402

from isojax.core import command_line  # noqa: E402
from isojax.models import convmixer, mixer, vit  # noqa: E402  (architecture sizes only)
from isojax.training.benchmark import median_seconds  # noqa: E402  (the same timing as the isojax column)
from tests.reference import sources  # noqa: E402


class PlainConvMixer(nn.Module):
  """ConvMixer as most Flax code writes it: nn.Conv everywhere, GELU then BatchNorm."""

  num_classes: int
  hidden_size: int
  depth: int
  kernel_size: int
  patch_size: int
  activation: str = 'gelu'  # ConvMixer-768/32 is ReLU

  @nn.compact
  def __call__(self, x, *, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
    act = nn.relu if self.activation == 'relu' else functools.partial(nn.gelu, approximate=False)
    p, k, dim = self.patch_size, self.kernel_size, self.hidden_size
    x = norm()(act(nn.Conv(dim, (p, p), strides=(p, p), padding='VALID')(x)))
    for _ in range(self.depth):
      x = x + norm()(act(nn.Conv(dim, (k, k), padding='SAME', feature_group_count=dim)(x)))
      x = norm()(act(nn.Conv(dim, (1, 1))(x)))
    return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def build(name: str, num_classes: int) -> nn.Module:
  models_vit, models_mixer = sources.vision_transformer()
  if name in vit.VARIANTS:
    v = vit.VARIANTS[name]
    return models_vit.VisionTransformer(
      num_classes=num_classes,
      patches=ml_collections.ConfigDict({'size': (v['patch_size'],) * 2}),
      hidden_size=v['hidden_size'],
      classifier='token',
      transformer=dict(
        num_layers=v['depth'],
        mlp_dim=v['mlp_dim'],
        num_heads=v['num_heads'],
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
      ),
    )
  if name in mixer.VARIANTS:
    v = mixer.VARIANTS[name]
    return models_mixer.MlpMixer(
      patches=ml_collections.ConfigDict({'size': (v['patch_size'],) * 2}),
      num_classes=num_classes,
      num_blocks=v['depth'],
      hidden_dim=v['hidden_size'],
      tokens_mlp_dim=v['tokens_mlp_dim'],
      channels_mlp_dim=v['channels_mlp_dim'],
    )
  if name in convmixer.VARIANTS:
    return PlainConvMixer(num_classes=num_classes, **convmixer.VARIANTS[name])
  raise SystemExit(f'No plain baseline for {name!r}; one of the ViT, Mixer or ConvMixer registry names.')


FLAGS = flags.FlagValues()
flags.DEFINE_string('model', None, 'A registered model name.', flag_values=FLAGS)
flags.DEFINE_integer('batch_size', None, 'Batch.', flag_values=FLAGS)
flags.DEFINE_integer('image_size', None, 'Image side in pixels.', flag_values=FLAGS)
flags.DEFINE_integer('steps', 5, 'Timed steps (the median is reported).', flag_values=FLAGS)
flags.DEFINE_integer('num_classes', 1000, 'Classes of the head.', flag_values=FLAGS)
flags.mark_flags_as_required(['model', 'batch_size', 'image_size'], flag_values=FLAGS)


@command_line.command
def main(argv=None) -> int:
  command_line.parse(FLAGS, argv, __doc__)
  args = FLAGS
  model = build(args.model, args.num_classes)
  batch_norm = isinstance(model, PlainConvMixer)
  rng = np.random.RandomState(0)
  images = jnp.asarray(rng.normal(size=(args.batch_size, args.image_size, args.image_size, 3)).astype(np.float32))
  labels = jnp.asarray(rng.randint(0, args.num_classes, args.batch_size))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(0), images[:1])
  state = train_state.TrainState.create(
    apply_fn=model.apply, params=variables['params'], tx=optax.adamw(1e-3, weight_decay=0.05)
  )
  batch_stats = variables.get('batch_stats')

  @jax.jit
  def train_step(state, batch_stats, images, labels):
    def loss_fn(params):
      if batch_norm:
        logits, updates = state.apply_fn(
          {'params': params, 'batch_stats': batch_stats}, images, train=True, mutable=['batch_stats']
        )
      else:
        logits, updates = state.apply_fn({'params': params}, images, train=True), {}
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates.get('batch_stats')

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), batch_stats, loss

  @jax.jit
  def infer(params, batch_stats, images):
    extra = {'batch_stats': batch_stats} if batch_norm else {}
    return state.apply_fn({'params': params, **extra}, images, train=False)

  result = {
    'framework': 'plain-flax',
    'model': args.model,
    'batch_size': args.batch_size,
    'image_size': args.image_size,
    'jax': jax.__version__,
  }
  holder = {'state': state, 'batch_stats': batch_stats}

  def one_step():
    holder['state'], holder['batch_stats'], loss = train_step(holder['state'], holder['batch_stats'], images, labels)
    return loss

  start = time.perf_counter()
  jax.block_until_ready(one_step())
  result['train_first_call_seconds'] = time.perf_counter() - start  # compile + one step
  result['train_seconds'] = median_seconds(one_step, args.steps)
  jax.block_until_ready(infer(holder['state'].params, holder['batch_stats'], images))
  result['inference_seconds'] = median_seconds(
    lambda: infer(holder['state'].params, holder['batch_stats'], images), args.steps
  )
  print(json.dumps(result))
  return 0


if __name__ == '__main__':
  sys.exit(main())
