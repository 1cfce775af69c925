"""Are two builds' compiled programs the same? Every module that two XLA dump folders share, its optimised HLO
compared instruction by instruction, with what two builds of one program may differ in stripped (value names,
metadata with its source lines, backend configs).

    XLA_FLAGS="--xla_dump_to=/tmp/hlo_a --xla_dump_hlo_as_text" python -m isojax.bench --model=ViT-S/16 ...
    (the same at the other commit, into /tmp/hlo_b)
    python benchmarks/hlo_diff.py /tmp/hlo_a /tmp/hlo_b

`python benchmarks/ab.py A B --hlo` makes both dumps and this comparison for every model it times. A row whose
programs are identical at both commits did not change speed inside XLA's program: what moved it is outside
(the host process, the machine, noise). Where they differ, the op kinds whose counts changed say where to look.
"""

from __future__ import annotations

import collections
import difflib
import os
import re
import sys

_MODULE = re.compile(r'^module_\d+\.(?P<name>.+)\.\w+_after_optimizations\.txt$')  # .cpu_, .gpu_, ...
_OP = re.compile(r'=\s*(?:\([^)]*\)|\S+)\s+([a-z][\w-]*)\(')


def modules(folder: str) -> list[tuple[str, str]]:
  """(name, path) of the optimised modules of an XLA dump folder in compile order; a name that repeats (several
  `jit__fun`) is told apart by its turn: `jit__fun`, `jit__fun #2`, ..."""
  seen: collections.Counter = collections.Counter()
  found = []
  for file in sorted(os.listdir(folder)):
    match = _MODULE.match(file)
    if match:
      name = match.group('name')
      seen[name] += 1
      found.append((name if seen[name] == 1 else f'{name} #{seen[name]}', os.path.join(folder, file)))
  return found


def instructions(path: str) -> list[str]:
  """The module's instructions without value names, metadata and backend configs."""
  lines = []
  with open(path) as f:
    for line in f:
      if ' = ' in line:
        line = re.sub(r',?\s*metadata=\{[^}]*\}', '', line.strip())
        line = re.sub(r',?\s*backend_config=(\{.*\}|"[^"]*"|\S+)', '', line)
        lines.append(re.sub(r'%[\w.\-]+', '%', line))
  return lines


def op_counts(lines: list[str]) -> collections.Counter:
  """Instructions per op kind (fusion, dot, custom-call, ...)."""
  return collections.Counter(m.group(1) for m in map(_OP.search, lines) if m)


def compare(path_a: str, path_b: str) -> dict:
  """Instruction counts, how many instructions differ and the op kinds whose counts differ, of one module."""
  a, b = instructions(path_a), instructions(path_b)
  diff = [d for d in difflib.unified_diff(a, b, lineterm='', n=0) if d[:1] in '+-' and d[:3] not in ('+++', '---')]
  ops_a, ops_b = op_counts(a), op_counts(b)
  changed = {op: (ops_a[op], ops_b[op]) for op in sorted(set(ops_a) | set(ops_b)) if ops_a[op] != ops_b[op]}
  return {'instructions': (len(a), len(b)), 'differing': len(diff), 'op_counts': changed}


def compare_dumps(folder_a: str, folder_b: str, min_instructions: int = 100) -> list[str]:
  """One line per module of at least `min_instructions` (the steps, not the RNG seeding) in both folders."""
  a, b = dict(modules(folder_a)), dict(modules(folder_b))
  lines = []
  for name in [n for n in a if n in b]:
    result = compare(a[name], b[name])
    count_a, count_b = result['instructions']
    if max(count_a, count_b) < min_instructions:
      continue
    if not result['differing']:
      lines.append(f'{name}: identical ({count_a:,} instructions)')
      continue
    lines.append(f'{name}: {result["differing"]:,} instructions differ ({count_a:,} -> {count_b:,}; {_ops(result)})')
  lines += [f'{name}: only in {folder_a}' for name in a if name not in b and _size(a[name]) >= min_instructions]
  lines += [f'{name}: only in {folder_b}' for name in b if name not in a and _size(b[name]) >= min_instructions]
  return lines


def _ops(result: dict, most: int = 8) -> str:
  """The `most` largest changes of op counts, e.g. 'dot 33 -> 9, fusion 135 -> 74, +5 more'."""
  changed = sorted(result['op_counts'].items(), key=lambda item: -abs(item[1][1] - item[1][0]))
  text = ', '.join(f'{op} {x} -> {y}' for op, (x, y) in changed[:most]) or 'the same op counts'
  return text + (f', +{len(changed) - most} more' if len(changed) > most else '')


def _size(path: str) -> int:
  return len(instructions(path))


def main(argv: list[str]) -> int:
  if len(argv) != 2 or not all(os.path.isdir(p) for p in argv):
    raise SystemExit(f'give two XLA dump folders (--xla_dump_to), A and B; got {argv}')
  print('\n'.join(compare_dumps(*argv)) or 'no shared module of 100 instructions or more')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
