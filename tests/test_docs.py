"""The README and the manual (docs/) are tested like code: the site builds strictly, and every bash and Python
block runs, page by page in order, unless its first line says what it needs (docs/development.md)."""

import dataclasses
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md'] + sorted(
  os.path.join('docs', p) for p in os.listdir(os.path.join(ROOT, 'docs')) if p.endswith('.md')
)
LANGUAGES = {'bash': 'bash', 'sh': 'bash', 'python': 'python'}
NOT_RUN = (
  'needs: download',
  'needs: accelerator',
  'needs: time',
  'needs: fresh machine',
  'needs: database server',
  'needs: browser',
  'ci',
)
SLOW = 'slow'
FAST_TIER = 'python -m pytest -n 2 -m "not slow" tests'  # a subset of the suite CI runs
SHARED = ('configs', 'experiments', 'benchmarks', 'docs', 'mkdocs.yml', 'CHANGELOG.md')  # what commands see


@dataclasses.dataclass(frozen=True)
class Block:
  page: str
  line: int
  language: str
  code: str

  @property
  def marker(self) -> str:
    """What the first line says about running the block: '' (it runs), 'slow', or one of NOT_RUN."""
    first = self.code.lstrip().split('\n', 1)[0]
    match = re.match(r'#\s*(needs: [a-z ]+|slow|ci)\b', first)
    return match.group(1).strip() if match else ''


def blocks(page: str) -> list[Block]:
  """The fenced bash/python blocks of a page, in order."""
  found, lines = [], open(os.path.join(ROOT, page)).read().split('\n')
  i = 0
  while i < len(lines):
    fence = re.match(r'^```(\w*)\s*$', lines[i])
    if fence:
      end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith('```'))
      if fence.group(1) in LANGUAGES:
        found.append(Block(page, i + 1, LANGUAGES[fence.group(1)], '\n'.join(lines[i + 1 : end])))
      i = end
    i += 1
  return found


def test_every_block_runs_or_says_why_not_with_a_reason():
  for page in PAGES:
    for block in blocks(page):
      first = block.code.lstrip().split('\n', 1)[0]
      if first.startswith('# needs') or first.startswith('# slow') or first.startswith('# ci'):
        assert block.marker in NOT_RUN + (SLOW,), f'{page}:{block.line}: unknown marker {first!r}'
        assert re.search(r'\(.+\)|: .+', first), f'{page}:{block.line}: say why: {first!r}'


def test_ci_blocks_are_what_ci_runs():
  ci = open(os.path.join(ROOT, '.ci', 'run')).read()
  for page in PAGES:
    for block in (b for b in blocks(page) if b.marker == 'ci'):
      for line in block.code.split('\n')[1:]:
        command = line.split('#')[0].strip()
        for part in filter(None, (p.strip() for p in command.split('&&'))):
          assert part in ci or part == FAST_TIER, f'{page}:{block.line}: {part!r} is not a command .ci/run runs'


def test_the_readme_is_a_front_door():
  text = open(os.path.join(ROOT, 'README.md')).read()
  assert len(text.split('\n')) <= 200
  for target in re.findall(r'\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)', text):
    assert os.path.exists(os.path.join(ROOT, target)), target


def _page_env(folder: str) -> dict:
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # one device, as a user's machine
  return {
    **env,
    'TFDS_DATA_DIR': os.path.join(folder, 'tfds'),
    'JAX_PLATFORMS': 'cpu',
    'PYTHONUNBUFFERED': '1',
    'TF_CPP_MIN_LOG_LEVEL': '3',
    'MPLBACKEND': 'Agg',
    'NO_MKDOCS_2_WARNING': '1',
    'PYTHONPATH': os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])),
  }


def _run(block: Block, folder: str) -> None:
  command = (
    ['bash', '-euo', 'pipefail', '-c', block.code] if block.language == 'bash' else [sys.executable, '-c', block.code]
  )
  out = subprocess.run(command, cwd=folder, env=_page_env(folder), capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, (
    f'{block.page}:{block.line} ({block.language}) failed:\n{block.code}\n'
    f'--- stdout\n{out.stdout[-2000:]}\n--- stderr\n{out.stderr[-4000:]}'
  )


def _page_cases():
  # Every page is a subprocess per block (seconds to minutes): the slow tier's; the fast tier builds the site.
  for page in PAGES:
    if any(b.marker in ('', SLOW) for b in blocks(page)):
      yield pytest.param(page, marks=[pytest.mark.slow], id=page)


@pytest.mark.parametrize('page', list(_page_cases()))
def test_the_pages_code_runs(page, tmp_path):
  for name in SHARED:
    os.symlink(os.path.join(ROOT, name), tmp_path / name)
  for block in blocks(page):
    if block.marker in ('', SLOW):
      _run(block, str(tmp_path))


def test_the_docs_build_strictly(tmp_path):
  mkdocs = shutil.which('mkdocs') or pytest.fail('mkdocs is not installed: pip install -e ".[test]"')
  out = subprocess.run(
    [mkdocs, 'build', '--strict', '--site-dir', str(tmp_path / 'site')],
    cwd=ROOT,
    env={**os.environ, 'NO_MKDOCS_2_WARNING': '1'},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert os.path.exists(tmp_path / 'site' / 'index.html')
