"""Evaluating models: a run's evaluators (`evaluators`: several per run, each with its own data and schedule,
big_vision style; `classification`, `fewshot`), reports for people (`report`), predictions with a run's own
preprocessing (`inference`, `isojax.predict`) and what a trained model learned (`explain`).

Metrics go to metrics.jsonl as `{"step", "split": "eval", "evaluator": name, ...}` and to TensorBoard as
`eval/<name>/<metric>`."""

from isojax.evaluation.base import Evaluator
from isojax.evaluation.evaluators import KINDS, best_metric, create, evaluate, specs
from isojax.evaluation.report import display, table

__all__ = ['KINDS', 'Evaluator', 'best_metric', 'create', 'display', 'evaluate', 'specs', 'table']
