"""The package's folders are its architecture, and imports run one way (top uses bottom).

    models/      knows nothing of data, training, weights files or sweeps
    data/        knows no model (and nothing of training)
    training/    builds its model through models/, not through the module that opens finished runs
    weights/     published files and finished runs -> models
    sweeps/      trials of `isojax.main` runs and their table
    top level    thin entry points (`python -m isojax.X`) and notebook tools only

Read from the source (AST), so a forbidden import anywhere in a file fails, even inside a function.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'isojax')

ENTRY_POINTS = {'main', 'predict', 'bench', 'evaluate', 'sweep'}
NOTEBOOK_TOOLS = {'explain', 'inference'}    # isojax.predict / attention maps on finished models
PROCESS_SETUP = {'host_memory'}              # malloc settings the entry points and the input pipeline apply first


def _modules(folder: str) -> dict[str, str]:
  """{dotted module: path} of every .py file under isojax/`folder`."""
  out = {}
  for directory, _, files in os.walk(os.path.join(PACKAGE, folder)):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        out[dotted.removesuffix('.__init__')] = path
  return out


def _isojax_imports(path: str) -> set[str]:
  """Every isojax module `path` imports (for `from isojax.x import y`, both x and x.y)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith('isojax')}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('isojax') and not node.level:
      for alias in node.names:   # `from isojax.x import y`: the module y if there is one, else x
        full = f'{node.module}.{alias.name}'
        found.add(full if _is_module(full) else node.module)
  return found


def _is_module(dotted: str) -> bool:
  path = os.path.join(ROOT, *dotted.split('.'))
  return os.path.isdir(path) or os.path.exists(path + '.py')


def _violations(folder: str, allowed: tuple[str, ...]) -> list[str]:
  bad = []
  for module, path in _modules(folder).items():
    for imported in _isojax_imports(path):
      if not any(imported == a or imported.startswith(a + '.') for a in allowed):
        bad.append(f'{module} imports {imported}')
  return bad


@pytest.mark.parametrize('folder,allowed', [
    ('models', ('isojax.models',)),
    ('data', ('isojax.data', 'isojax.host_memory')),
    ('weights/formats', ('isojax.weights.formats', 'isojax.models')),
    ('evaluation', ('isojax.evaluation', 'isojax.data', 'isojax.models', 'isojax.training.parallel',
                    'isojax.training.config_base')),
])
def test_lower_layers_import_nothing_above_them(folder, allowed):
  assert _violations(folder, allowed) == []


def test_training_builds_models_through_models_not_through_finished_runs():
  imports = {m: _isojax_imports(p) for m, p in _modules('training').items()}
  assert not any('isojax.weights.runs' in found for found in imports.values()), imports
  assert not any(i.startswith('isojax.sweeps') for found in imports.values() for i in found)
  # the train step is a pure function of (state, batch, rng): it reads no data, files or configs
  step = {i for i in imports['isojax.training.train_step'] if i != 'isojax.training'}
  assert step <= {'isojax.training.parallel'}, step


def test_the_top_level_holds_only_entry_points_and_notebook_tools():
  top = {name[:-3] for name in os.listdir(PACKAGE) if name.endswith('.py')} - {'__init__'}
  assert top == ENTRY_POINTS | NOTEBOOK_TOOLS | PROCESS_SETUP
  folders = {n for n in os.listdir(PACKAGE) if os.path.isdir(os.path.join(PACKAGE, n)) and not n.startswith('__')}
  assert folders == {'models', 'data', 'training', 'evaluation', 'weights', 'sweeps'}


def test_no_two_modules_in_one_folder_differ_by_a_letter():
  for directory, _, files in os.walk(PACKAGE):
    names = sorted(f[:-3] for f in files if f.endswith('.py'))
    for a in names:
      for b in names:
        assert not (a < b and (a + 's' == b or a + '_results' == b)), (directory, a, b)


def test_the_workdir_file_names_are_spelled_in_one_module():
  spelled = {}
  for module, path in _modules('').items():
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.Constant) and node.value in ('config.json', 'metrics.jsonl', 'dataset.json'):
        spelled.setdefault(node.value, set()).add(module)
  assert spelled and all(where == {'isojax.training.workdir'} for where in spelled.values()), spelled
