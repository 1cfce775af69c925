"""The ImageNet training input pipeline beside timm's loader, a plain torchvision one and a plain tf.data one.

    python benchmarks/input_side_by_side.py --folder=/tmp/photos --make \
        --torch_python=/path/to/venv-with-torch/bin/python [--batch_size=64,128] [--batches=20] [--json=OUT.json]

Every loader reads the same JPEG folder (benchmarks/photo_folder.py; `--make` writes it if
missing) and makes training batches of `--batch_size` (each size its own table):

  isojax        `isojax.data.benchmark.bench_input`, the very measurement of `python -m isojax.bench
                --input=configs/imagenet_vit_s16.py --set=data.name=image_folder --set=data.data_dir=FOLDER
                --set=data.train_split=train --set=batch_size=B --set=data.shuffle_buffer=5000`: the config's
                train_pp (big_vision's Inception crop 224, resize without antialiasing, flip, RandAugment(2, 10)),
                uint8 batches (the normalisation is left to the device), with 1 and with 8 forced host devices,
                under isojax.main's CPU malloc settings (isojax/core/host_memory.py: one arena); once more
                with antialiased resizing (PIL always antialiases when it shrinks) and once with glibc's
                malloc defaults (ISOJAX_KEEP_HOST_MEMORY=0, what isojax.main keeps on an accelerator host);
  plain tf.data the same ops the way isojax read data before encoded buffers: decoded on read,
                one pipeline and one shuffle buffer (of decoded pixels) per device, float32
                batches normalised on the host (isojax's are uint8, normalised on the device);
  timm          torchvision ImageFolder + PIL + timm.data.create_transform(224, is_training=True,
                auto_augment='rand-m10-n2') (timm's RandAugment: the same 0..10 magnitude scale,
                its colour jitter off as with any auto_augment) in a torch DataLoader with 2
                workers, shuffled, drop_last: timm's default loader without the CUDA prefetcher;
  torchvision   ImageFolder + PIL + RandomResizedCrop(224), RandomHorizontalFlip, RandAugment(2, 9),
                ToTensor, Normalize(0.5, 0.5), the same DataLoader: the loader of a plain torch script.

Each runs in its own process, one after another, and is timed by one protocol
(isojax/core/throughput.py): images/s over `--batches` batches after `--warmup` untimed ones (the first
of them also fills isojax's 5,000-example buffer), seconds to the first batch, peak RSS (the process's
VmHWM; for the torch loaders the peak over the process and its workers, sampled every 0.5 s, of their
summed PSS, which counts pages shared after fork once) and the baseline: RSS with the libraries loaded
and JAX's devices up, before any pipeline. A torch worker imports nothing of isojax but that module.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

from isojax.core import throughput

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIG = os.path.join(ROOT, 'configs', 'imagenet_vit_s16.py')
TORCH_LOADERS = ('timm', 'torchvision')


# --- the worker side: one loader in this process ------------------------------------------------------


def _status_kib(field: str, pid: str = 'self') -> int:
  with open(f'/proc/{pid}/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1])
  return 0


def isojax_overrides(folder: str, batch: int, shuffle_buffer: int, antialias: bool = False) -> dict:
  """The `--set` overrides of CONFIG that point `isojax.bench --input` at the folder."""
  from isojax.core import loading

  overrides = {
    'data.name': 'image_folder',
    'data.data_dir': folder,
    'data.train_split': 'train',
    'batch_size': batch,
    'data.shuffle_buffer': shuffle_buffer,
  }
  if antialias:
    overrides['data.train_pp'] = loading.load(CONFIG).data.train_pp.replace('antialias=False', 'antialias=True')
  return overrides


def plain_tfdata_batches(folder: str, devices: int, batch: int, shuffle_buffer: int):
  """isojax's pipeline before encoded buffers: decoded on read, a pipeline and a buffer per device."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  from isojax.core import loading
  from isojax.data import image_folder, preprocess

  config = loading.load(CONFIG)
  builder = image_folder.open_folder(folder)
  process = preprocess.build(config.data.train_pp, 224, 3)
  n = len(builder._split_examples['train'])
  per_device = []
  for device in range(devices):
    ds = builder.as_dataset(split='train', shuffle_files=False).shard(devices, device)  # decodes every file
    ds = ds.shuffle(min(n // devices, shuffle_buffer), seed=device).repeat().enumerate()
    ds = ds.map(
      lambda i, ex, d=device: {
        'image': process(ex['image'], tf.stack([tf.constant(d, tf.int64), i])),
        'label': tf.cast(ex['label'], tf.int32),
      },
      num_parallel_calls=tf.data.AUTOTUNE,
    )
    per_device.append(ds.batch(batch // devices, drop_remainder=True))
  stack = lambda *parts: {k: tf.stack([p[k] for p in parts]) for k in parts[0]}
  ds = tf.data.Dataset.zip(tuple(per_device)).map(stack).prefetch(2)
  options = tf.data.Options()
  options.threading.private_threadpool_size = max(os.cpu_count() or 1, 2)
  return iter(tfds.as_numpy(ds.with_options(options)))


def _torch_batches(loader: str, folder: str, batch: int):
  """timm's training transform, or a plain torchvision one, in a DataLoader with 2 workers."""
  import torch
  import torchvision

  if loader == 'timm':
    import timm.data

    transform = timm.data.create_transform(
      224, is_training=True, auto_augment='rand-m10-n2', interpolation='bilinear', mean=(0.5,) * 3, std=(0.5,) * 3
    )
  else:
    t = torchvision.transforms
    transform = t.Compose(
      [
        t.RandomResizedCrop(224),
        t.RandomHorizontalFlip(),
        t.RandAugment(num_ops=2, magnitude=9),
        t.ToTensor(),
        t.Normalize((0.5,) * 3, (0.5,) * 3),
      ]
    )
  dataset = torchvision.datasets.ImageFolder(os.path.join(folder, 'train'), transform=transform)
  data_loader = torch.utils.data.DataLoader(
    dataset,
    batch_size=batch,
    shuffle=True,
    num_workers=2,
    drop_last=True,
    persistent_workers=True,
    generator=torch.Generator().manual_seed(0),
  )
  while True:
    yield from data_loader


def worker(loader: str, folder: str, devices: int, batch: int, batches: int, warmup: int, buffer: int) -> dict:
  """Measures one loader in this process; returns the figures."""
  if loader in TORCH_LOADERS:
    import torch  # noqa: F401

    baseline = _status_kib('VmRSS')
    timed = throughput.time_batches(_torch_batches(loader, folder, batch), batch, batches, warmup)
    shape = list(timed.pop('last_batch')[0].shape)
  else:
    from isojax.core import host_memory

    host_memory.keep_freed_memory()  # as isojax.main does
    import jax
    import tensorflow  # noqa: F401

    from isojax.data import benchmark

    assert jax.local_device_count() == devices, (jax.local_device_count(), devices)
    baseline = _status_kib('VmRSS')
    if loader == 'plain':
      timed = throughput.time_batches(plain_tfdata_batches(folder, devices, batch, buffer), batch, batches, warmup)
      shape = list(timed.pop('last_batch')['image'].shape)
    else:
      overrides = isojax_overrides(folder, batch, buffer, antialias=loader == 'isojax_antialias')
      timed = benchmark.bench_input(CONFIG, batches, overrides, warmup)
      shape = timed['image_batch_shape']
  return {
    'images_per_sec': timed['images_per_sec'],
    'first_batch_seconds': timed['first_batch_seconds'],
    'baseline_rss_bytes': baseline * 1024,
    'peak_rss_bytes': _status_kib('VmHWM') * 1024,
    'batch_shape': shape,
  }


# --- the parent side: every loader in its own process -------------------------------------------------


def _tree_pss_bytes(pid: int) -> int:
  """Summed PSS of `pid` and its descendants (pages shared after fork counted once)."""
  total, todo = 0, [pid]
  while todo:
    p = todo.pop()
    try:
      with open(f'/proc/{p}/smaps_rollup') as f:
        total += next(int(line.split()[1]) for line in f if line.startswith('Pss:')) * 1024
      for task in os.listdir(f'/proc/{p}/task'):
        with open(f'/proc/{p}/task/{task}/children') as f:
          todo.extend(int(c) for c in f.read().split())
    except (OSError, StopIteration):
      continue
  return total


def run_worker(
  python: str, loader: str, folder: str, devices: int, batch: int, args, env_extra: dict | None = None
) -> dict:
  """Runs one loader in a fresh process, sampling its process tree's memory."""
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3', 'CUDA_VISIBLE_DEVICES': '', **(env_extra or {})}
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  env['PYTHONPATH'] = os.pathsep.join([ROOT, env.get('PYTHONPATH', '')])
  command = [
    python,
    os.path.abspath(__file__),
    '--worker',
    loader,
    '--folder',
    folder,
    '--devices',
    str(devices),
    '--batch_size',
    str(batch),
    '--batches',
    str(args.batches),
    '--warmup',
    str(args.warmup),
    '--shuffle_buffer',
    str(args.shuffle_buffer),
  ]
  process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  peak = [0]
  done = threading.Event()

  def sample():  # only the multi-process loader: reading smaps stalls the sampled process's allocations
    while loader in TORCH_LOADERS and not done.wait(0.5):
      peak[0] = max(peak[0], _tree_pss_bytes(process.pid))

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  out, err = process.communicate()
  done.set()
  sampler.join()
  if process.returncode:
    return {'error': f'exit {process.returncode}: {err.strip().splitlines()[-1] if err.strip() else ""}'}
  result = json.loads(out.strip().splitlines()[-1])
  result['peak_tree_pss_bytes'] = peak[0]
  return result


TIMM = 'timm (torchvision + PIL), 2 workers'
TORCHVISION = 'torchvision (RandomResizedCrop, flip, RandAugment(2, 9)), 2 workers'


def table(rows: list[tuple[str, dict]], folder_bytes: int) -> str:
  """A Markdown table; speed relative to timm's and torchvision's loaders, memory against the baseline + 2x
  folder target."""
  speeds = {name: r.get('images_per_sec') for name, r in rows}
  ratio = lambda value, ref: f'{value / speeds[ref]:.2f}x' if speeds.get(ref) else 'n/a'
  lines = [
    '| loader | images/s | vs timm | vs torchvision | first batch s | baseline RSS MiB | peak RSS MiB | '
    'peak - baseline MiB |',
    '|---|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for name, r in rows:
    if 'error' in r:
      lines.append(f'| {name} | n/a | | | | | | {r["error"]} |')
      continue
    peak = r['peak_tree_pss_bytes'] if name.startswith(TORCH_LOADERS) else r['peak_rss_bytes']
    mib = lambda b: f'{b / 2**20:,.0f}'
    value = r['images_per_sec']
    lines.append(
      f'| {name} | {value:,.0f} | {ratio(value, TIMM)} | {ratio(value, TORCHVISION)} | '
      f'{r["first_batch_seconds"]:.1f} | {mib(r["baseline_rss_bytes"])} | {mib(peak)} | '
      f'{mib(peak - r["baseline_rss_bytes"])} |'
    )
  lines.append(
    f'\nFolder on disk: {folder_bytes / 2**20:,.0f} MiB; memory target: peak below baseline + '
    f'{2 * folder_bytes / 2**20:,.0f} MiB (twice the folder).'
  )
  return '\n'.join(lines)


def folder_bytes(folder: str) -> int:
  return sum(
    os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(os.path.join(folder, 'train')) for f in files
  )


# (row name, --loaders key, loader, forced host devices, extra environment); the Python is the torch one for
# TORCH_LOADERS.
PLAN = [
  ('isojax, 1 device (one malloc arena, as isojax.main on CPU)', 'isojax', 'isojax', 1, None),
  ('isojax, 8 devices (one malloc arena)', 'isojax_8', 'isojax', 8, None),
  (
    'isojax, 1 device, glibc malloc defaults (as on an accelerator host)',
    'isojax_glibc',
    'isojax',
    1,
    {'ISOJAX_KEEP_HOST_MEMORY': '0'},
  ),
  ('isojax, 1 device, antialiased resize (as PIL)', 'isojax_antialias', 'isojax_antialias', 1, None),
  ('plain tf.data (decoded buffers, float32 batches), 1 device', 'plain', 'plain', 1, None),
  ('plain tf.data (decoded buffers, float32 batches), 8 devices', 'plain_8', 'plain', 8, None),
  (TIMM, 'timm', 'timm', 1, None),
  (TORCHVISION, 'torchvision', 'torchvision', 1, None),
]


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--folder', required=True, help='a JPEG folder made by benchmarks/photo_folder.py')
  parser.add_argument('--make', action='store_true', help='write the 5,000-image folder first if missing')
  parser.add_argument('--torch_python', default=sys.executable, help='a Python with torch, torchvision and timm')
  parser.add_argument('--batch_size', default='128', help='images per batch; several, comma-separated: a table each')
  parser.add_argument('--batches', type=int, default=20, help='timed batches')
  parser.add_argument(
    '--warmup', type=int, default=throughput.WARMUP, help='untimed batches before (the first fills the buffer)'
  )
  parser.add_argument('--shuffle_buffer', type=int, default=5000)
  parser.add_argument('--loaders', default=','.join(key for _, key, *_ in PLAN), help='the rows to run')
  parser.add_argument('--json', help='also write the raw figures here')
  parser.add_argument('--worker', help=argparse.SUPPRESS)
  parser.add_argument('--devices', type=int, default=1, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  unknown = set(args.loaders.split(',')) - {key for _, key, *_ in PLAN}
  if unknown:
    parser.error(f'--loaders: no loader {sorted(unknown)}; the loaders are {[key for _, key, *_ in PLAN]}')
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.worker:
    figures = worker(
      args.worker, args.folder, args.devices, int(args.batch_size), args.batches, args.warmup, args.shuffle_buffer
    )
    print(json.dumps(figures))
    return
  if args.make and not os.path.isdir(os.path.join(args.folder, 'train')):
    sys.path.insert(0, HERE)
    import photo_folder

    photo_folder.make(args.folder)
  chosen = [row for row in PLAN if row[1] in args.loaders.split(',')]
  size, tables = folder_bytes(args.folder), {}
  for batch in [int(b) for b in args.batch_size.split(',')]:
    rows = []
    for name, _, loader, devices, env in chosen:
      python = args.torch_python if loader in TORCH_LOADERS else sys.executable
      rows.append((name, run_worker(python, loader, args.folder, devices, batch, args, env)))
      print(f'batch {batch}:', name, json.dumps(rows[-1][1]), file=sys.stderr, flush=True)
    print(
      f'\n{os.cpu_count()} CPU cores, {args.batches} timed batches of {batch} after {args.warmup}, '
      f'shuffle_buffer={args.shuffle_buffer}, {time.strftime("%Y-%m-%d")}\n'
    )
    print(table(rows, size))
    tables[batch] = rows
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'batches': tables, 'folder_bytes': size, 'cpu_count': os.cpu_count()}, f, indent=1)


if __name__ == '__main__':
  main()
