"""isojax: isotropic vision architectures (ViT, MLP-Mixer, ConvMixer) in JAX/Flax.

    import isojax
    model, variables, config = isojax.load(workdir)
"""
__version__ = '0.1.0'


def load(workdir, step=None, ema=None):
  """(model, variables, config) of a training run; see isojax.runs.load."""
  from isojax import runs   # imported on use: `import isojax` stays light
  return runs.load(workdir, step=step, ema=ema)
