"""Loading config files (`path/to/config.py[:ARG]`) and applying dotted overrides to them.

Overrides follow the command line's rules (`--config.optimizer.lr=3e-3`): the field must exist and keep
its type. A config file is a Python module with `get_config(arg)`, opening with its run command.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any

import ml_collections


def load(spec: str, overrides: dict[str, Any] | None = None) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:ARG]` and applies dotted overrides {'optimizer.lr': 1e-3}."""
  path, _, arg = spec.partition(':')
  if not os.path.exists(path):
    raise FileNotFoundError(f'No config file {path!r}.')
  module_spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  if module_spec is None or module_spec.loader is None:
    raise ValueError(f'{path!r} is not a Python config file (expected a .py file with get_config(arg)).')
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'{path!r} has no get_config(arg) function; a config file defines one.')
  config = module.get_config(arg or None)
  for dotted, value in (overrides or {}).items():
    override(config, dotted, value)
  return config


def override(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  """Sets one dotted field, refusing unknown fields with the names that do exist."""
  *parents, leaf = dotted.split('.')
  node = config
  for i, key in enumerate(parents):
    if key not in node:
      raise ValueError(
        f'Config has no field {".".join(parents[: i + 1])!r} (in {dotted!r}); fields there: {sorted(node.keys())}.'
      )
    node = node[key]
  if leaf not in node:
    raise ValueError(f'Config has no field {dotted!r}; fields there: {sorted(node.keys())}.')
  try:
    node[leaf] = value
  except (TypeError, KeyError) as e:  # ml_collections refuses a value of another type
    reason = ' '.join(str(e).split())  # one line: ml_collections' message holds the value as written
    raise ValueError(f'Config field {dotted!r} cannot be set to {value!r}: {reason}') from None


def literal(text: str) -> Any:
  """A command-line value: '1e-3' -> 0.001, 'True' -> True, "(1, 2)" -> (1, 2); anything else stays a string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
  """['data.name=image_folder', 'batch_size=128'] -> {'data.name': 'image_folder', 'batch_size': 128}."""
  parsed = [item.partition('=') for item in pairs]
  if any(not sep or not key for key, sep, _ in parsed):
    raise ValueError(f'An override is KEY=VALUE (e.g. data.name=image_folder); got {list(pairs)}.')
  return {key: literal(value) for key, _, value in parsed}
