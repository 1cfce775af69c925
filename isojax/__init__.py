"""isojax: isotropic vision architectures (ViT, MLP-Mixer, ConvMixer and their relatives) in JAX/Flax.

    import isojax
    model, variables, config = isojax.load(workdir)
    probabilities = isojax.predict(model, variables, config, images)

The package root is a facade above every layer (isojax/core at the bottom, the command lines at the top; see
tests/test_layout.py). Its two names resolve on first use (PEP 562) from the modules in `PUBLIC`, so that
`python -m isojax.main` can tune host memory before JAX and TensorFlow load (isojax/core/host_memory.py) and
`import isojax.models` needs no TensorFlow (an accelerator host may lack it).
"""

import importlib
from typing import Any

__version__ = '0.9.0'

# name -> (module, attribute): what `isojax.load` and `isojax.predict` are.
PUBLIC = {'load': ('isojax.weights.runs', 'load'), 'predict': ('isojax.evaluation.inference', 'predict')}


def __getattr__(name: str) -> Any:
  if name in PUBLIC:
    module, attribute = PUBLIC[name]
    return getattr(importlib.import_module(module), attribute)
  raise AttributeError(
    f'module isojax has no attribute {name!r}; the public names are {sorted(PUBLIC)} and the '
    f'subpackages (isojax.models, isojax.data, ...).'
  )
