"""isojax vs timm (PyTorch) vs a plain-Flax baseline, in one run on one machine, as a Markdown table.

    python benchmarks/side_by_side.py --timm_python=/path/to/timm-venv/bin/python \
        [--cases=ViT-S/16:16:224,Mixer-S/16:16:224,...] [--steps=5] [--out=benchmarks/results.md]

Each measurement runs in its own process, one after the other (never two at once), so
every column sees the same idle machine:
  isojax      python -m isojax.bench: the pmapped train step of isojax.main, and inference
  plain Flax  benchmarks/plain_flax.py: the same architecture written the usual Flax way
  timm        benchmarks/timm_bench.py in the timm venv: timm's model, AdamW, eager PyTorch
A case is NAME:BATCH:IMAGE_SIZE[:CLASSES]. Figures are images/s from the median step;
ratios above 1 mean isojax is faster. Without --timm_python the timm columns are left out.
"""

import datetime
import json
import os
import platform
import subprocess
import sys

from absl import flags

from isojax.core import command_line

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The CPU targets: the 224px models at a batch a 2-core machine steps in seconds,
# and the CIFAR ConvMixer at its training batch.
DEFAULT_CASES = ['ViT-S/16:16:224', 'Mixer-S/16:16:224', 'ConvMixer-768/32:8:224', 'ConvMixer-256/8:128:32:10']

FLAGS = flags.FlagValues()
_CASES = flags.DEFINE_list(
  'cases', DEFAULT_CASES, 'NAME:BATCH:IMAGE_SIZE[:CLASSES], comma-separated.', flag_values=FLAGS
)
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per measurement (median).', flag_values=FLAGS)
_TIMM_PYTHON = flags.DEFINE_string(
  'timm_python',
  os.environ.get('TIMM_PYTHON'),
  'The python of a venv with torch and timm (or $TIMM_PYTHON).',
  flag_values=FLAGS,
)
_TIMEOUT = flags.DEFINE_float('timeout', 1800, 'Seconds per measurement process.', flag_values=FLAGS)
_OUT = flags.DEFINE_string(
  'out', None, 'Also write the Markdown table (and the raw JSON next to it).', flag_values=FLAGS
)


def parse_case(text: str) -> dict:
  parts = text.split(':')
  if len(parts) not in (3, 4):
    raise SystemExit(f'Case {text!r} is not NAME:BATCH:IMAGE_SIZE[:CLASSES], e.g. ViT-S/16:16:224.')
  return {
    'model': parts[0],
    'batch_size': int(parts[1]),
    'image_size': int(parts[2]),
    'num_classes': int(parts[3]) if len(parts) == 4 else 1000,
  }


def run_json(cmd: list, timeout: float, cwd: str = ROOT, env: dict | None = None) -> dict:
  """Runs one measurement process and returns the JSON object on its last stdout line."""
  try:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {'error': f'did not finish within {timeout:.0f} s'}
  lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
  if proc.returncode or not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {'error': f'exit {proc.returncode}: ' + ' | '.join(tail)}
  return json.loads(lines[-1])


def bench_args(case: dict, steps: int) -> list[str]:
  """The command-line arguments every side's benchmark takes for one case."""
  return [
    '--model',
    case['model'],
    '--batch_size',
    str(case['batch_size']),
    '--image_size',
    str(case['image_size']),
    '--steps',
    str(steps),
    '--num_classes',
    str(case['num_classes']),
  ]


def measure(case: dict, steps: int, timm_python: str, timeout: float) -> dict:
  common = bench_args(case, steps)
  out = {}
  isojax = run_json([sys.executable, '-m', 'isojax.bench', *common], timeout)
  out['isojax'] = (
    isojax
    if 'error' in isojax
    else {
      'train_seconds': isojax['train']['ms_per_step'] / 1000,
      'inference_seconds': isojax['inference']['ms_per_step'] / 1000,
      'train_mfu': isojax['train']['mfu'],
      'inference_mfu': isojax['inference']['mfu'],
      'device_kind': isojax['device_kind'],
      'devices': isojax['devices'],
    }
  )
  out['plain'] = run_json([sys.executable, os.path.join(HERE, 'plain_flax.py'), *common], timeout)
  if timm_python:
    out['timm'] = run_json([timm_python, os.path.join(HERE, 'timm_bench.py'), *common], timeout)
  return out


def images_per_sec(result: dict, case: dict, kind: str):
  seconds = result.get(f'{kind}_seconds')
  return case['batch_size'] / seconds if seconds else None


def table(cases: list, results: list, with_timm: bool) -> str:
  fmt = lambda v, spec: format(v, spec) if v is not None else 'n/a'
  head = ['model', 'batch', 'image']
  for kind in ('train', 'inference'):
    head += [f'{kind} isojax img/s', 'MFU', 'plain Flax', 'vs plain']
    head += ['timm', 'vs timm'] if with_timm else []
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for case, res in zip(cases, results):
    row = [case['model'], str(case['batch_size']), str(case['image_size'])]
    for kind in ('train', 'inference'):
      ours = images_per_sec(res['isojax'], case, kind)
      row += [
        fmt(ours, ',.1f'),
        fmt(res['isojax'].get(f'{kind}_mfu') and 100 * res['isojax'][f'{kind}_mfu'], '.0f') + '%',
      ]
      others = [('plain', res['plain'])] + ([('timm', res['timm'])] if with_timm else [])
      for _, other in others:
        theirs = images_per_sec(other, case, kind)
        ratio = ours / theirs if ours and theirs else None
        row += [fmt(theirs, ',.1f'), f'**{ratio:.2f}x**' if ratio else 'n/a']
    lines.append('| ' + ' | '.join(row) + ' |')
  errors = [
    f'- {case["model"]} {name}: {r["error"]}'
    for case, res in zip(cases, results)
    for name, r in res.items()
    if 'error' in r
  ]
  return '\n'.join(lines + ([''] + errors if errors else []))


def cpu_name() -> str:
  """The CPU's model name (/proc/cpuinfo), or what the platform says."""
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), cpu)
  except OSError:
    pass
  return cpu


def machine(results: list) -> str:
  cpu = cpu_name()
  ours = next((r['isojax'] for r in results if 'error' not in r['isojax']), {})
  timm = next((r['timm'] for r in results if 'timm' in r and 'error' not in r['timm']), None)
  plain = next((r['plain'] for r in results if 'error' not in r['plain']), {})
  text = (
    f'{datetime.date.today()}, {os.cpu_count()} x {cpu}; isojax on {ours.get("devices", "?")} x '
    f'{ours.get("device_kind", "?")}, jax {plain.get("jax", "?")}'
  )
  if timm:
    text += f'; timm {timm["timm"]}, torch {timm["torch"]} ({timm["threads"]} threads)'
  return text


@command_line.command
def main(argv=None) -> int:
  command_line.parse(FLAGS, argv, __doc__)
  cases = [parse_case(c) for c in _CASES.value]
  results = []
  for case in cases:
    print(
      f'measuring {case["model"]} batch {case["batch_size"]} @ {case["image_size"]}px ...', file=sys.stderr, flush=True
    )
    results.append(measure(case, _STEPS.value, _TIMM_PYTHON.value, _TIMEOUT.value))
  command = 'python benchmarks/side_by_side.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
  text = f'{table(cases, results, bool(_TIMM_PYTHON.value))}\n\n{machine(results)}; `{command}`\n'
  print(text)
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      f.write(text)
    with open(os.path.splitext(_OUT.value)[0] + '.json', 'w') as f:
      json.dump([{**case, **res} for case, res in zip(cases, results)], f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
