"""big_vision's few-shot linear probe on frozen features, solved in closed form on the host.

From big_vision/evaluators/fewshot_lsr.py (0127fb6), l.27-110 and l.205-233, and the standard
settings of big_vision/configs/common_fewshot.py (shots (1, 5, 10, 25), l2 = 2^10, 3 seeds):
for each seed, a `np.random.default_rng(seed)` permutation of each class's training examples,
the first `shots` of each class; features standardised with the sampled set's mean and
std (+1e-5); a constant bias column of 100 (large, so almost unregularised); one-hot targets in
{-1, +1}; ridge regression (x^T x + l2 I)^-1 x^T y, through the eigendecomposition of the
smaller of x^T x and x x^T; accuracy of the argmax on the test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from isojax.evaluation.base import Evaluator
from isojax.models import features as model_features

BIAS_CONSTANT = 100.0
SHOTS = (1, 5, 10, 25)
L2_REG = 2.0**10
SEEDS = 3


def sample_shots(labels: np.ndarray, num_classes: int, shots: int, seed: int) -> np.ndarray:
  """Indices of `shots` examples per class: a seeded permutation of each class, its first `shots`."""
  rng = np.random.default_rng(seed)
  per_class = [rng.permutation(np.where(labels == c)[0]) for c in range(num_classes)]
  return np.concatenate([indices[:shots] for indices in per_class])


def probe_accuracy(
  train_x: np.ndarray,
  train_y: np.ndarray,
  test_x: np.ndarray,
  test_y: np.ndarray,
  num_classes: int,
  l2_reg: float = L2_REG,
) -> float:
  """Test accuracy of the l2-regularised least-squares classifier fitted on (train_x, train_y)."""
  train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
  if not (np.isfinite(train_x).all() and np.isfinite(test_x).all()):
    return float('nan')  # a diverged model's features: no probe to fit
  mean = train_x.mean(axis=0, keepdims=True)
  std = train_x.std(axis=0, keepdims=True) + 1e-5
  with_bias = lambda x: np.pad((x - mean) / std, ((0, 0), (0, 1)), constant_values=BIAS_CONSTANT)
  x, x_test = with_bias(train_x), with_bias(test_x)
  y = 2.0 * np.eye(num_classes)[train_y] - 1.0
  if x.shape[0] >= x.shape[1]:  # (x^T x + l2 I)^-1 x^T y, from the D x D Gram matrix
    eigs, q = np.linalg.eigh(x.T @ x)
    lhs, rhs = q, q.T @ (x.T @ y)
  else:  # x^T (x x^T + l2 I)^-1 y, from the N x N Gram matrix
    eigs, q = np.linalg.eigh(x @ x.T)
    lhs, rhs = x.T @ q, q.T @ y
  weights = (lhs / (eigs + l2_reg)[None, :]) @ rhs
  return float(np.mean((x_test @ weights).argmax(axis=1) == test_y))


def fewshot_metrics(
  train_x: np.ndarray,
  train_y: np.ndarray,
  test_x: np.ndarray,
  test_y: np.ndarray,
  num_classes: int,
  shots: Sequence[int] = SHOTS,
  seeds: int = SEEDS,
  l2_reg: float = L2_REG,
) -> dict:
  """{'{k}shot': mean accuracy over seeds, '{k}shot_seeds': [per seed]} for each k in `shots`."""
  out: dict[str, Any] = {}
  for k in shots:
    per_seed = [
      probe_accuracy(train_x[idx], train_y[idx], test_x, test_y, num_classes, l2_reg)
      for idx in (sample_shots(train_y, num_classes, k, seed) for seed in range(seeds))
    ]
    out[f'{k}shot'] = float(np.mean(per_seed))
    out[f'{k}shot_seeds'] = per_seed
  return out


def _gather(x: jax.Array, pmapped: bool) -> np.ndarray:
  """Every process's rows on every process, [rows, ...]: from pmap's output [devices, batch, ...], or from the
  jit path's global array [global batch, ...] (split over processes by rows)."""
  if not pmapped:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True) if jax.process_count() > 1 else x)
  local = np.concatenate([np.asarray(s.data) for s in x.addressable_shards], axis=0)
  if jax.process_count() > 1:
    local = np.asarray(multihost_utils.process_allgather(local, tiled=True))
  return local.reshape(-1, *local.shape[2:])


class FewshotEvaluator(Evaluator):
  """The probe on the model's `feature` (default the pre-logits) of `train_split` and `test_split`."""

  kind = 'fewshot'

  @staticmethod
  def higher_is_better(spec: dict) -> list[str]:
    return [f'{k}shot' for k in spec['shots']]

  def __init__(self, name, spec, model, num_classes, mesh=None):
    super().__init__(name, spec, model, num_classes, mesh)
    feature = spec['feature']

    def represent(variables, batch):
      _, found = model_features(model, variables, batch['image'])
      return found[feature].reshape(batch['image'].shape[0], -1), batch['label'], batch['mask']

    self.fn = self.parallel(represent)

  def validate(self) -> None:
    super().validate()
    for split in (self.spec['train_split'], self.spec['test_split']):
      self._check_split(split)
    channels = self.builder().info.features['image'].shape[-1]
    images = jax.ShapeDtypeStruct((1, self.spec['image_size'], self.spec['image_size'], channels), np.float32)
    # The feature must exist: trace the model once (no compute) and list what it offers.
    variables = jax.eval_shape(lambda x: self.model.init(jax.random.PRNGKey(0), x, train=False), images)
    _, found = jax.eval_shape(lambda v, x: model_features(self.model, v, x), variables, images)
    if self.spec['feature'] not in found:
      raise ValueError(
        f'Evaluator {self.name!r}: the model has no feature {self.spec["feature"]!r}; features: {sorted(found)}.'
      )

  def _represent(self, variables: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    feats, labels, masks = [], [], []
    pmapped = self.mesh is None
    for batch in self.batches(split):
      f, y, m = self.fn(variables, batch)
      feats.append(_gather(f, pmapped))
      labels.append(_gather(y, pmapped))
      masks.append(_gather(m, pmapped))
    keep = np.concatenate(masks) > 0
    return np.concatenate(feats)[keep], np.concatenate(labels)[keep]

  def run(self, variables):
    train_x, train_y = self._represent(variables, self.spec['train_split'])
    test_x, test_y = self._represent(variables, self.spec['test_split'])
    num_classes = self.builder().info.features['label'].num_classes
    return fewshot_metrics(
      train_x,
      train_y,
      test_x,
      test_y,
      num_classes,
      shots=self.spec['shots'],
      seeds=self.spec['seeds'],
      l2_reg=self.spec['l2_reg'],
    )
