"""Evaluations for people: a Markdown table (isojax.evaluate) and the one-line eval summary of training."""

from __future__ import annotations

from typing import Optional


def table(results: dict[str, dict]) -> str:
  """A Markdown table: evaluator | metric | value (accuracies in %)."""
  lines = ['| evaluator | metric | value |', '|---|---|---|']
  for name, metrics in results.items():
    for metric, value in metrics.items():
      if isinstance(value, list):
        continue
      shown = (
        f'{value:.4f}'
        if metric == 'loss'
        else f'{value:.0f}'
        if metric in ('num_examples', 'images_per_sec')
        else f'{100 * value:.2f}%'
      )
      lines.append(f'| {name} | {metric} | {shown} |')
  return '\n'.join(lines)


def _headline(metrics: dict) -> list[str]:
  """What an evaluator shows first: top-1/top-5/loss, or its few-shot accuracies."""
  shown = [m for m in ('accuracy', 'top5', 'loss') if m in metrics]
  return shown or [m for m in metrics if m.endswith('shot')]


def _value(metric: str, value: float) -> str:
  return f'{metric} {value:.4f}' if metric == 'loss' else f'{metric} {100 * value:.2f}%'


def display(results: dict[str, dict], primary: str, chosen: Optional[list[str]] = None) -> str:
  """`accuracy 98.61% top5 100.00% loss 0.1317 | fewshot 10shot 94.71%`: the primary evaluator's
  headline unprefixed, then `chosen` ('name/metric'; by default each other evaluator's accuracy or 10-shot)."""
  segments = []
  if primary in results:
    segments.append(' '.join(_value(m, results[primary][m]) for m in _headline(results[primary])))
  if chosen is None:
    chosen = [
      f'{name}/{next((m for m in ("accuracy", "10shot", "5shot", "1shot") if m in r), "")}'
      for name, r in results.items()
      if name != primary
    ]
  for item in chosen:
    name, _, metric = item.partition('/')
    if metric in results.get(name, {}) and not (name == primary and metric in _headline(results[name])):
      segments.append(f'{name} {_value(metric, results[name][metric])}')
  return ' | '.join(segments)
