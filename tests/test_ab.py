"""benchmarks/ab.py: isojax at two refs, measured alternately in fresh processes, with medians, spreads and B/A."""

import os
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
import ab  # noqa: E402
import hlo_diff  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import side_by_side  # noqa: E402


def test_the_table_gives_each_sides_median_spread_and_the_ratio_of_medians():
  cases = [side_by_side.parse_case('ViT-S/16:16:224')]
  runs = [
    [{'train': [10.0, 12.0, 11.0], 'inference': [40.0, 40.0, 40.0]}],
    [{'train': [13.0, 13.0, 14.3], 'inference': [20.0, 30.0, 25.0]}],
  ]
  lines = ab.table(['abc1234', 'worktree'], cases, runs).splitlines()
  assert lines[0].startswith('A = abc1234, B = worktree; images/s, median of 3')
  train, inference = ([c.strip() for c in line.strip('|').split('|')] for line in lines[4:6])
  assert train == ['ViT-S/16 (224, 16)', 'train', '11.0', '18%', '13.0', '10%', '**1.18x**']
  assert inference == ['ViT-S/16 (224, 16)', 'inference', '40.0', '0%', '25.0', '40%', '**0.62x**']


def test_a_commit_is_extracted_and_imported_from_its_own_tree(tmp_path):
  tree, label = ab.extract('HEAD', str(tmp_path))
  head = subprocess.run(
    ['git', 'rev-parse', '--short', 'HEAD'], cwd=ab.side_by_side.ROOT, capture_output=True, text=True
  )
  assert label == head.stdout.strip() and os.path.exists(os.path.join(tree, 'isojax', 'bench.py'))
  ab.check_imports_from(tree)  # refuses a tree whose `import isojax` resolves elsewhere


def test_a_commit_from_before_the_absl_command_lines_gets_its_benchs_dashed_flags(tmp_path):
  case = side_by_side.parse_case('ConvMixer-256/8:64:32:10')
  old = tmp_path / 'old'  # isojax.bench at 1fa7b07 (argparse) declared its flags so
  (old / 'isojax').mkdir(parents=True)
  (old / 'isojax' / 'bench.py').write_text("parser.add_argument('--batch-size', type=int, default=64)\n")
  new = ab.side_by_side.ROOT
  assert ab.bench_command(old, case, 5)[3:] == [
    '--model', 'ConvMixer-256/8', '--batch-size', '64', '--image-size', '32', '--steps', '5', '--num-classes', '10'
  ]  # fmt: skip
  assert '--batch_size' in ab.bench_command(new, case, 5)


def test_two_sides_whose_flops_per_image_differ_are_named_as_different_programs():
  cases = [side_by_side.parse_case('ConvMixer-256/8:64:32:10')]
  same = [[{'train': 1.00, 'inference': 0.33}], [{'train': 1.01, 'inference': 0.33}]]  # a normalisation's FLOPs
  assert ab.different_programs(['a', 'b'], cases, same) == []
  other = [[{'train': 1.00, 'inference': 0.33}], [{'train': 0.60, 'inference': 0.20}]]  # another kernel size
  assert ab.different_programs(['a', 'b'], cases, other) == [
    'ConvMixer-256/8 train: 1 GFLOP/img at a but 0.6 at b: not the same program',
    'ConvMixer-256/8 inference: 0.33 GFLOP/img at a but 0.2 at b: not the same program',
  ]


def test_each_case_is_measured_a_then_b_in_every_repeat_and_only_the_first_repeat_dumps_its_hlo(monkeypatch):
  measured = []

  def run_json(command, timeout, cwd, env):
    measured.append((cwd, command[command.index('--model') + 1], '--xla_dump_to' in env.get('XLA_FLAGS', '')))
    assert env.get('JAX_ENABLE_COMPILATION_CACHE') == ('false' if measured[-1][2] else None)
    return {kind: {'ms_per_step': 100.0, 'gflops_per_image': 1.0} for kind in ab.KINDS}

  monkeypatch.setattr(ab.side_by_side, 'run_json', run_json)
  monkeypatch.delenv('JAX_ENABLE_COMPILATION_CACHE', raising=False)
  cases = [side_by_side.parse_case('ViT-S/16:16:224'), side_by_side.parse_case('ConvMixer-256/8:64:32:10')]
  root = ab.side_by_side.ROOT
  runs, _ = ab.measure_alternating([root, root + '/'], cases, repeats=2, steps=1, timeout=1, dumps='/tmp/d')
  first, second = [(cwd[-1] == '/', model, dumped) for cwd, model, dumped in measured][:4], measured[4:]
  assert first == [(False, 'ViT-S/16', True), (True, 'ViT-S/16', True)] + [
    (False, 'ConvMixer-256/8', True),
    (True, 'ConvMixer-256/8', True),
  ]
  assert [dumped for *_, dumped in second] == [False] * 4
  assert runs[0][0]['train'] == [160.0, 160.0]  # 16 images in 100 ms, each repeat


def test_a_ref_that_is_not_a_commit_is_refused_naming_it(tmp_path):
  with pytest.raises(ab.command_line.UsageError, match=r"'no-such-ref' is not a commit here"):
    ab.extract('no-such-ref', str(tmp_path))


@pytest.mark.slow
def test_ab_measures_both_sides_and_compares_their_programs_end_to_end(tmp_path):
  out = subprocess.run(
    [
      sys.executable,
      os.path.join(ab.side_by_side.HERE, 'ab.py'),
      'HEAD',
      ab.WORKTREE,
      '--models=ConvMixer-32/1:8:14:10',
      '--repeats=1',  # the order of several repeats is the fast test's above
      '--steps=2',
      '--hlo',
      f'--out={tmp_path / "ab.md"}',
    ],
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  order = [line.split(': ')[0].rsplit(' ', 1)[-1] for line in out.stdout.splitlines() if line.startswith('repeat ')]
  assert order == ['A', 'B']
  rows = [line for line in (tmp_path / 'ab.md').read_text().splitlines() if line.startswith('| ConvMixer-32/1')]
  assert len(rows) == 2 and all(row.endswith('x** |') for row in rows)
  # The train step's program at least (this model's inference is under hlo_diff's 100-instruction floor).
  programs = [line for line in out.stdout.splitlines() if line.startswith('- ConvMixer-32/1: ')]
  assert programs and all(re.search(r': (identical|[\d,]+ instructions differ) \(', p) for p in programs)


def _dump(folder, *functions):
  """An XLA dump folder as `--xla_dump_to` writes one: each function's optimised HLO, named jit_step, in turn."""
  folder.mkdir()
  x = jnp.ones((64, 64))
  for i, f in enumerate(functions):
    text = jax.jit(f).lower(x).compile().as_text()
    (folder / f'module_{i:04d}.jit_step.cpu_after_optimizations.txt').write_text(text)
  return str(folder)


def test_hlo_diff_calls_one_program_built_twice_identical_and_names_the_ops_another_one_changes(tmp_path):
  def gelu_mlp(x):
    return jax.nn.gelu(x @ x, approximate=False).sum()

  def same_program_other_source_lines(y):  # other names and metadata, the same instructions
    return jax.nn.gelu(y @ y, approximate=False).sum()

  def tanh_gelu(x):
    return jax.nn.gelu(x @ x, approximate=True).sum()

  big = lambda x: sum((x @ x + i).sum() for i in range(40))  # over the 100 instructions a step has
  a = _dump(tmp_path / 'a', gelu_mlp, big)
  b = _dump(tmp_path / 'b', same_program_other_source_lines, big)
  c = _dump(tmp_path / 'c', tanh_gelu, big)
  assert [name for name, _ in hlo_diff.modules(a)] == ['jit_step', 'jit_step #2']
  assert hlo_diff.compare(hlo_diff.modules(a)[0][1], hlo_diff.modules(b)[0][1])['differing'] == 0
  changed = hlo_diff.compare(hlo_diff.modules(a)[0][1], hlo_diff.modules(c)[0][1])
  assert changed['differing'] > 0 and changed['op_counts']['tanh'][0] == 0 < changed['op_counts']['tanh'][1]
  same, other = hlo_diff.compare_dumps(a, b), hlo_diff.compare_dumps(a, c)
  assert [line.split(' (')[0] for line in same] == ['jit_step: identical', 'jit_step #2: identical']
  assert re.match(r'jit_step: [\d,]+ instructions differ \([\d,]+ -> [\d,]+; \w', other[0]), other
  assert other[1].startswith('jit_step #2: identical (')
