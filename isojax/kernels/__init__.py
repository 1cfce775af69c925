"""CPU fast paths: the same numbers as the models' reference ops, in formulations XLA's CPU backend runs
faster. A model takes them only when built with `kernels='cpu'` (or `'auto'` resolved on a CPU backend by
`resolve`, once, when the model is built); a layer never looks at the backend. Each fast path has an
equivalence test (forward and gradients) against the reference op in tests/test_kernels.py.

    dense.py      a Dense layer's product as one 2-D matrix product (leading axes folded)
    attention.py  multi-head attention with batch and heads folded into one batch axis
    depthwise.py  the depthwise 'SAME' convolution as k*k shifted multiply-adds, with its own backward pass
"""

from __future__ import annotations

import jax

REFERENCE, CPU = 'reference', 'cpu'
CHOICES = ('auto', REFERENCE, CPU)


def resolve(choice: str) -> str:
  """`'reference'` or `'cpu'` for a build option; `'auto'` takes the CPU fast paths when JAX computes on the CPU."""
  if choice not in CHOICES:
    raise ValueError(
      f'kernels={choice!r}; expected one of {CHOICES} (reference: the plain ops, what export and '
      f'accelerators use; cpu: the fast paths of isojax/kernels; auto: cpu on a CPU backend).'
    )
  if choice == 'auto':
    return CPU if jax.default_backend() == 'cpu' else REFERENCE
  return choice


def check(choice: str) -> None:
  """Refuses anything but a resolved choice inside a layer: 'auto' must be resolved when the model is built."""
  if choice not in (REFERENCE, CPU):
    raise ValueError(
      f"A layer got kernels={choice!r}; layers take 'reference' or 'cpu'. Build the model through "
      f'isojax.models.create/build, which resolve {choice!r} once (isojax.kernels.resolve).'
    )
