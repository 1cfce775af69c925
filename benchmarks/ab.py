"""isojax at two commits (or a commit and the working tree), side by side on this machine: did a change move speed?

    python benchmarks/ab.py REF_A REF_B [--models=ViT-S/16:16:224,ConvMixer-256/8:64:32:10] [--repeats=3]
    python benchmarks/ab.py HEAD~1 WORKTREE --out=/tmp/ab.md
    python benchmarks/ab.py 1fa7b07 HEAD --hlo     # and compare each model's optimised programs (hlo_diff.py)

A REF is anything `git rev-parse` takes, or WORKTREE (this checkout, uncommitted changes included). Each commit
is extracted (`git archive`) into a temporary folder and imported from there. Every measurement is
`python -m isojax.bench` (the train step of isojax.main and inference) in a fresh process, one at a time,
alternating A, B, A, B, ..., so both sides see the same machine. Per row: each side's median images/s, its
spread ((max - min) / median over the repeats) and B/A (above 1: B is faster). A change whose B/A lies within
both spreads has not been shown to change speed; run more repeats. With --hlo, the first repeat of each
side also dumps its optimised HLO (XLA writes it while compiling, before the timed steps), and each model's train
step and inference are compared A against B (hlo_diff.py): an identical program means a moved row moved outside
XLA's program.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from typing import Optional

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hlo_diff  # noqa: E402
import side_by_side  # noqa: E402

from isojax.core import command_line  # noqa: E402

WORKTREE = 'WORKTREE'
DEFAULT_MODELS = ['ViT-S/16:16:224', 'Mixer-S/16:16:224', 'ConvMixer-256/8:64:32:10', 'ConvMixer-768/32:4:224']
KINDS = ('train', 'inference')

FLAGS = flags.FlagValues()
_MODELS = flags.DEFINE_list(
  'models', DEFAULT_MODELS, 'NAME:BATCH:IMAGE_SIZE[:CLASSES], comma-separated.', flag_values=FLAGS
)
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Measurements per side and model (A, B, A, B, ...).', flag_values=FLAGS)
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per measurement (its median).', flag_values=FLAGS)
_TIMEOUT = flags.DEFINE_float('timeout', 1800, 'Seconds per measurement process.', flag_values=FLAGS)
_HLO = flags.DEFINE_bool(
  'hlo', False, "Also compare each model's optimised HLO at A and B (benchmarks/hlo_diff.py).", flag_values=FLAGS
)
_OUT = flags.DEFINE_string('out', None, 'Also write the table here (and the raw JSON beside it).', flag_values=FLAGS)


def extract(ref: str, folder: str) -> tuple[str, str]:
  """(source tree, label) of a ref: the checkout itself for WORKTREE, else `git archive` of the commit."""
  if ref == WORKTREE:
    dirty = subprocess.run(['git', 'status', '--porcelain'], cwd=side_by_side.ROOT, capture_output=True, text=True)
    return side_by_side.ROOT, 'worktree' + (' (uncommitted changes)' if dirty.stdout.strip() else '')
  rev = subprocess.run(
    ['git', 'rev-parse', '--short', f'{ref}^{{commit}}'], cwd=side_by_side.ROOT, capture_output=True, text=True
  )
  if rev.returncode:
    raise command_line.UsageError(f'{ref!r} is not a commit here ({rev.stderr.strip()}); or give {WORKTREE}')
  sha = rev.stdout.strip()
  tree = os.path.join(folder, sha)
  archive = subprocess.run(['git', 'archive', sha], cwd=side_by_side.ROOT, capture_output=True, check=True)
  with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
    tar.extractall(tree, filter='data')
  return tree, sha


def environment(tree: str) -> dict:
  """The environment in which `import isojax` is the tree's, whatever is installed."""
  return {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [tree, os.environ.get('PYTHONPATH')]))}


def check_imports_from(tree: str) -> None:
  where = subprocess.run(
    [sys.executable, '-c', 'import isojax; print(isojax.__file__)'],
    cwd=tree,
    env=environment(tree),
    capture_output=True,
    text=True,
  )
  path = where.stdout.strip()
  if where.returncode or not os.path.realpath(path).startswith(os.path.realpath(tree) + os.sep):
    raise command_line.UsageError(f'in {tree}, `import isojax` gives {path or where.stderr.strip()!r}, not the tree')


def bench_command(tree: str, case: dict, steps: int) -> list[str]:
  """`python -m isojax.bench` for one case, its flags spelled as the tree's own bench takes them: before the
  absl command lines (a4863d6, 2026-12-01) it was argparse with dashes (--batch-size)."""
  with open(os.path.join(tree, 'isojax', 'bench.py')) as f:
    dashed = "'--batch-size'" in f.read()
  args = side_by_side.bench_args(case, steps)
  if dashed:
    args = [a.replace('_', '-') if a.startswith('--') else a for a in args]
  return [sys.executable, '-m', 'isojax.bench', *args]


def images_per_sec(result: dict, case: dict) -> dict:
  """{'train': images/s, 'inference': images/s, 'gflops': {kind: GFLOP/img}} of one isojax.bench result, or
  {'error': ...}."""
  if 'error' in result:
    return result
  speeds = {kind: case['batch_size'] / (result[kind]['ms_per_step'] / 1000) for kind in KINDS}
  return {**speeds, 'gflops': {kind: result[kind].get('gflops_per_image') for kind in KINDS}}


def different_programs(labels: list[str], cases: list[dict], gflops: list) -> list[str]:
  """One line per case whose two sides' XLA FLOP counts per image differ by over 2%: a name that meant another
  architecture at one of the commits (a kernel size, a width), so its B/A compares two models."""
  lines = []
  for c, case in enumerate(cases):
    for kind in KINDS:
      a, b = gflops[0][c][kind], gflops[1][c][kind]
      if a and b and abs(b - a) > 0.02 * a:
        lines.append(
          f'{case["model"]} {kind}: {a:.3g} GFLOP/img at {labels[0]} but {b:.3g} at {labels[1]}: not the same program'
        )
  return lines


def with_dump(env: dict, folder: str) -> dict:
  """`env` with XLA's dump of every compiled module into `folder` (written while compiling, before timed steps).
  JAX's persistent cache is off there: its key leaves the dump flags out, so a hit would compile, and dump, nothing."""
  flags_ = f'{env.get("XLA_FLAGS", "")} --xla_dump_to={folder} --xla_dump_hlo_as_text'.strip()
  return {**env, 'XLA_FLAGS': flags_, 'JAX_ENABLE_COMPILATION_CACHE': 'false'}


def dump_folder(folder: str, c: int, side: int) -> str:
  return os.path.join(folder, f'hlo-{c}-{"AB"[side]}')


def measure_alternating(
  trees: list[str], cases: list[dict], repeats: int, steps: int, timeout: float, dumps: Optional[str] = None
):
  """(runs, gflops): runs[side][case][kind] -> images/s of every repeat, measured A, B, A, B (each case in
  turn); gflops[side][case][kind] -> XLA's FLOPs per image, in GFLOP. With `dumps` (a folder), the first repeat
  also dumps each side's optimised HLO there, for compare_programs."""
  runs = [[{kind: [] for kind in KINDS} for _ in cases] for _ in trees]
  gflops: list = [[{} for _ in cases] for _ in trees]
  for repeat in range(repeats):
    for c, case in enumerate(cases):
      for side, tree in enumerate(trees):
        command, env = bench_command(tree, case, steps), environment(tree)
        if dumps and repeat == 0:
          env = with_dump(env, dump_folder(dumps, c, side))
        result = images_per_sec(side_by_side.run_json(command, timeout, cwd=tree, env=env), case)
        if 'error' in result:
          raise SystemExit(f'{case["model"]} on side {"AB"[side]} (repeat {repeat + 1}): {result["error"]}')
        for kind in KINDS:
          runs[side][c][kind].append(result[kind])
        gflops[side][c] = result['gflops']
        print(f'repeat {repeat + 1} {case["model"]} {"AB"[side]}: ' + ', '.join(f'{k} {result[k]:.1f}' for k in KINDS))
  return runs, gflops


def compare_programs(cases: list[dict], dumps: str) -> list[str]:
  """Per case, hlo_diff's line for every module both sides compiled in the first repeat."""
  lines = []
  for c, case in enumerate(cases):
    compared = hlo_diff.compare_dumps(dump_folder(dumps, c, 0), dump_folder(dumps, c, 1))
    lines += [f'{case["model"]}: {line}' for line in compared or ['no program of 100+ instructions at both sides']]
  return lines


def summary(values: list[float]) -> tuple[float, float]:
  """(median, spread): the spread is (max - min) / median, 0 for one value."""
  median = statistics.median(values)
  return median, (max(values) - min(values)) / median if median else 0.0


def table(labels: list[str], cases: list[dict], runs: list) -> str:
  """A Markdown table: per model and kind, each side's median images/s and spread, and B/A."""
  lines = [
    f'A = {labels[0]}, B = {labels[1]}; images/s, median of {len(runs[0][0]["train"])} (spread = (max - min) / median)',
    '',
    '| model (res, batch) | | A img/s | A spread | B img/s | B spread | B/A |',
    '|---|---|---|---|---|---|---|',
  ]
  for c, case in enumerate(cases):
    for kind in KINDS:
      (a, a_spread), (b, b_spread) = summary(runs[0][c][kind]), summary(runs[1][c][kind])
      lines.append(
        f'| {case["model"]} ({case["image_size"]}, {case["batch_size"]}) | {kind} | {a:.1f} | {100 * a_spread:.0f}% '
        f'| {b:.1f} | {100 * b_spread:.0f}% | **{b / a:.2f}x** |'
      )
  return '\n'.join(lines)


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return '?'


def main(argv=None) -> int:
  refs = command_line.parse(FLAGS, argv, __doc__)
  if len(refs) != 2:
    raise SystemExit(f'give two refs, A and B (commits or {WORKTREE}); got {refs}')
  cases = [side_by_side.parse_case(text) for text in _MODELS.value]
  with tempfile.TemporaryDirectory(prefix='isojax-ab-') as folder:
    trees, labels = zip(*(extract(ref, folder) for ref in refs))
    for tree in trees:
      check_imports_from(tree)
    dumps = folder if _HLO.value else None
    runs, gflops = measure_alternating(list(trees), cases, _REPEATS.value, _STEPS.value, _TIMEOUT.value, dumps)
    programs = compare_programs(cases, dumps) if dumps else []
  machine = f'{datetime.date.today()}, {os.cpu_count()} x {side_by_side.cpu_name()}, jax {_version("jax")}'
  text = machine + '\n\n' + table(list(labels), cases, runs)
  text += ''.join(f'\n\nWARNING: {line}' for line in different_programs(list(labels), cases, gflops))
  if programs:
    text += '\n\nOptimised HLO, A against B (benchmarks/hlo_diff.py):\n\n' + '\n'.join(f'- {p}' for p in programs)
  print(text)
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      f.write(f'`python benchmarks/ab.py {" ".join(sys.argv[1:] if argv is None else argv)}`\n\n{text}\n')
    with open(os.path.splitext(_OUT.value)[0] + '.json', 'w') as f:
      raw = {'refs': list(refs), 'labels': labels, 'cases': cases, 'runs': runs, 'gflops': gflops, 'hlo': programs}
      json.dump(raw, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
