"""isojax: isotropic vision architectures (ViT, MLP-Mixer, ConvMixer) in JAX/Flax.

    import isojax
    model, variables, config = isojax.load(workdir)
    probabilities = isojax.predict(model, variables, config, images)
"""
__version__ = '0.1.0'


def load(workdir, step=None, ema=None):
  """(model, variables, config) of a training run: latest checkpoint, a step, or step='best'."""
  from isojax.weights import runs   # imported on use: `import isojax` stays light
  return runs.load(workdir, step=step, ema=ema)


def predict(model, variables, config, images, batch_size=256):
  """Class probabilities for uint8 images or image files, with the run's eval preprocessing."""
  from isojax import inference
  return inference.predict(model, variables, config, images, batch_size=batch_size)
