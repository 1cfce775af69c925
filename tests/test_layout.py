"""The package's folders are its architecture: layers that import only downward, no cycles, no lazy imports.

    commands     isojax/main.py evaluate.py predict.py bench.py sweep.py export.py, and the package root (the facade)
    sweeps       trials of `isojax.main` runs and their table
    training     optimizer, train step, loop, plan, metrics, preemption, benchmark
    evaluation   evaluators, reports, inference, explain      weights   weight files, pretrained, runs
    models       skeleton, layers, one file per family        data      input pipeline, preprocessing, datasets
    kernels      CPU fast paths
    core         config schema, validation, loading; workdir and checkpoint format; devices; host memory; losses

An import must point to a lower layer or stay inside its own folder; folders of one layer know nothing of each
other; module by module there is no cycle. Every import counts, at module level or inside a function, read from
the source (AST). Inside the library no isojax import sits in a function, and a third-party one does only when
it is optional at run time (LAZY_THIRD_PARTY). The package root resolves its two public names on first use
(PEP 562, its `PUBLIC` table), so that an entry point can tune host memory before JAX and TensorFlow load: the
test reads that table as the root's imports.
"""

import ast
import os
import re
import tokenize

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'isojax')

LAYERS = [  # bottom first: (layer, module prefixes)
  ('core', ('isojax.core',)),
  ('kernels', ('isojax.kernels',)),
  ('models and data', ('isojax.models', 'isojax.data')),
  ('evaluation and weights', ('isojax.evaluation', 'isojax.weights')),
  ('training', ('isojax.training',)),
  ('sweeps', ('isojax.sweeps',)),
  (
    'commands',
    ('isojax.main', 'isojax.evaluate', 'isojax.predict', 'isojax.bench', 'isojax.sweep', 'isojax.export', 'isojax'),
  ),
]
COMMANDS = {'main', 'evaluate', 'predict', 'bench', 'sweep', 'export'}
# Imported inside a function because they are optional at run time, each for a reason.
LAZY_THIRD_PARTY = {
  'sklearn.datasets': 'only when the offline digits are prepared (the first run on a machine)',
  'PIL': 'only when an image folder is checked; TFDS decodes the images',
  'matplotlib.pyplot': 'after matplotlib.use("Agg"), which must come first',
  'jax_plugins': 'probing for accelerator plugins without starting JAX',
  'jax2onnx': 'the optional `export` extra, needed only for --format=onnx',
  'jax2onnx.plugins': 'the optional `export` extra, needed only for --format=onnx',
  'onnx': 'the optional `export` extra, needed only for --format=onnx',
  'onnxruntime': 'the optional `export` extra, needed only to run an ONNX file',
}


def modules() -> dict[str, str]:
  """{dotted module: path} of every .py file of the package."""
  out = {}
  for directory, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        out[os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.').removesuffix('.__init__')] = path
  return out


def _is_module(dotted: str) -> bool:
  path = os.path.join(ROOT, *dotted.split('.'))
  return os.path.isdir(path) or os.path.exists(path + '.py')


def _isojax_names(node: ast.AST) -> set[str]:
  """The isojax modules an import statement names (for `from isojax.x import y`: x.y if y is a module, else x)."""
  if isinstance(node, ast.Import):
    return {a.name for a in node.names if a.name.split('.')[0] == 'isojax'}
  if isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[0] == 'isojax' and not node.level:
    return {f'{node.module}.{a.name}' if _is_module(f'{node.module}.{a.name}') else node.module for a in node.names}
  return set()


def _function_level_imports(tree: ast.AST) -> list[ast.AST]:
  found = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      found += [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
  return found


def _facade_imports(tree: ast.AST) -> set[str]:
  """The modules of the root's `PUBLIC = {name: (module, attribute)}` table."""
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == 'PUBLIC' for t in node.targets):
      return {module for module, _ in ast.literal_eval(node.value).values()}
  return set()


def import_graph() -> dict[str, set[str]]:
  """{module: the isojax modules it imports, anywhere in the file}."""
  graph = {}
  for module, path in modules().items():
    tree = ast.parse(open(path).read())
    graph[module] = set().union(*(_isojax_names(n) for n in ast.walk(tree))) - {module}
    if module == 'isojax':
      graph[module] |= _facade_imports(tree)
  return graph


def layer_of(module: str) -> tuple[int, str]:
  """(rank, folder) of a module: the longest matching prefix of LAYERS decides."""
  best = max(
    (
      (rank, prefix)
      for rank, (_, prefixes) in enumerate(LAYERS)
      for prefix in prefixes
      if module == prefix or module.startswith(prefix + '.')
    ),
    key=lambda found: len(found[1]),
  )
  return best


def test_every_module_has_a_layer():
  assert all(layer_of(m) for m in modules())


def test_imports_point_down_the_layers_or_stay_in_their_folder():
  wrong = []
  for module, imported in import_graph().items():
    rank, folder = layer_of(module)
    for target in imported:
      target_rank, target_folder = layer_of(target)
      if target_rank > rank or (target_rank == rank and target_folder != folder):
        wrong.append(f'{module} ({LAYERS[rank][0]}) imports {target} ({LAYERS[target_rank][0]})')
  assert wrong == []


def test_the_module_graph_has_no_cycle():
  graph = import_graph()
  # A package's __init__ re-exports its modules: an edge from a module to its own package is not a dependency
  # on the modules the package re-exports, so `package -> its module` edges are left out of cycle detection.
  edges = {m: {t for t in targets if not (m.startswith(t + '.'))} for m, targets in graph.items()}
  state: dict[str, str] = {}

  def visit(node: str, path: list[str]) -> None:
    state[node] = 'open'
    for target in sorted(edges.get(node, ())):
      if state.get(target) == 'open':
        pytest.fail('import cycle: ' + ' -> '.join(path[path.index(target) :] + [node, target]))
      if target not in state:
        visit(target, path + [node])
    state[node] = 'done'

  for module in sorted(edges):
    if module not in state:
      visit(module, [])


def test_no_import_inside_a_function_but_named_optional_dependencies():
  found = []
  for module, path in modules().items():
    for node in _function_level_imports(ast.parse(open(path).read())):
      names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or '']
      found += [f'{module}: {name}' for name in names if name not in LAZY_THIRD_PARTY]
  assert found == []


# JAX's private modules and what it deprecated or removed for the sharding APIs (issue 23): jax.shard_map,
# jax.set_mesh and NamedSharding replace them.
PRIVATE_OR_DEPRECATED_JAX = (
  r'jax\._src',
  r'jax\.experimental\.(shard_map|pjit|maps)',
  r'\bdevice_put_(replicated|sharded)\b',
  r'\bPmapSharding\b',
  r'^\s*with\s+(\w+\.)*mesh\s*:',
)


def test_no_module_uses_private_or_deprecated_jax_apis():
  found = []
  for module, path in modules().items():
    for number, code in _code_lines(path):
      found += [f'{module}:{number}: {code.strip()}' for p in PRIVATE_OR_DEPRECATED_JAX if re.search(p, code)]
  assert found == []


def _code_lines(path: str) -> list[tuple[int, str]]:
  """(line number, the line's code without strings and comments): docstrings may name what the code avoids."""
  lines: dict[int, str] = {}
  with open(path) as f:
    for token in tokenize.generate_tokens(f.readline):
      if token.type not in (tokenize.STRING, tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE):
        row, col = token.start
        line = lines.get(row, '')
        lines[row] = line + ' ' * (col - len(line)) + token.string
  return sorted(lines.items())


def test_the_top_level_holds_only_the_command_lines_and_the_layers_folders():
  top = {name[:-3] for name in os.listdir(PACKAGE) if name.endswith('.py')} - {'__init__'}
  assert top == COMMANDS
  folders = {n for n in os.listdir(PACKAGE) if os.path.isdir(os.path.join(PACKAGE, n)) and not n.startswith('__')}
  assert folders == {'core', 'kernels', 'models', 'data', 'evaluation', 'weights', 'training', 'sweeps'}


def test_models_know_no_data_and_the_input_pipeline_knows_no_model():
  graph = import_graph()
  assert not any(t.startswith('isojax.data') for m, ts in graph.items() if m.startswith('isojax.models') for t in ts)
  assert not any(t.startswith('isojax.models') for m, ts in graph.items() if m.startswith('isojax.data') for t in ts)


def test_weights_only_read_files_and_dispatch_to_the_families_readers():
  """A family's converters live in its file; weights/ never spells a family's parameter scopes."""
  scopes = ('token_mixing', 'channel_mixing', 'Dense_0', 'patch_embed', 'encoderblock', 'MixerBlock')
  for module, path in modules().items():
    if module.startswith('isojax.weights'):
      strings = {
        n.value
        for n in ast.walk(ast.parse(open(path).read()))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
      }
      assert not [s for s in strings if any(scope in s for scope in scopes)], module


def test_the_train_step_reads_no_data_files_or_configs():
  # placement (devices: pmap's axis; sharding: the jit path's mesh) and the losses; no data, files or configs
  step = import_graph()['isojax.training.train_step']
  assert step <= {'isojax.core.devices', 'isojax.core.sharding', 'isojax.core.losses'}, step


def test_no_two_modules_in_one_folder_differ_by_a_letter():
  for directory, _, files in os.walk(PACKAGE):
    names = sorted(f[:-3] for f in files if f.endswith('.py'))
    for a in names:
      for b in names:
        assert not (a < b and (a + 's' == b or a + '_results' == b)), (directory, a, b)


def test_the_workdir_file_names_are_spelled_in_one_module():
  spelled: dict[str, set] = {}
  for module, path in modules().items():
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.Constant) and node.value in ('config.json', 'metrics.jsonl', 'dataset.json'):
        spelled.setdefault(node.value, set()).add(module)
  assert spelled and all(where == {'isojax.core.workdir'} for where in spelled.values()), spelled


def test_no_function_is_longer_than_sixty_lines():
  long = []
  for folder in ('isojax', 'benchmarks', 'experiments'):
    for directory, _, files in os.walk(os.path.join(ROOT, folder)):
      for name in files:
        if name.endswith('.py'):
          path = os.path.join(directory, name)
          for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
              long.append(
                f'{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)'
              )
  assert long == []
