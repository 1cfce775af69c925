"""The ImageNet training input pipeline beside timm's loader and a plain tf.data one, in one run.

    python benchmarks/input_side_by_side.py --folder=/tmp/photos --make \
        --torch_python=/path/to/venv-with-torch/bin/python [--batches=20] [--json=OUT.json]

Every loader reads the same JPEG folder (benchmarks/photo_folder.py; `--make` writes it if
missing) with the augmentations of configs/imagenet_vit_s16.py: decode, Inception crop 224,
flip, RandAugment(2, 10), normalise, batches of 128:

  isojax        isojax.data.train_batches with the config's train_pp (big_vision's crop, resize
                without antialiasing, RandAugment), uint8 batches (data.uint8_batches: the
                normalisation is left to the device), data.shuffle_buffer=5000, with 1 and with 8
                forced host devices; once more with antialiased resizing (PIL always antialiases
                when it shrinks) and once with glibc's malloc defaults (ISOJAX_KEEP_HOST_MEMORY=0);
  plain tf.data the same ops the way isojax read data before encoded buffers: decoded on read,
                one pipeline and one shuffle buffer (of decoded pixels) per device, float32
                batches normalised on the host (isojax's are uint8, normalised on the device);
  timm          torchvision ImageFolder + PIL + timm.data.create_transform(224, is_training=True,
                auto_augment='rand-m10-n2') (timm's RandAugment: the same 0..10 magnitude scale,
                its colour jitter off as with any auto_augment) in a torch DataLoader with 2
                workers, shuffled, drop_last: timm's default loader without the CUDA prefetcher.

Each runs in its own process, one after another. Reported: images/s over `--batches` batches
after `--warmup` (the first batch of isojax also fills its 5,000-example buffer), seconds to
the first batch, peak RSS (the process's VmHWM; for timm the peak over the process and its
workers, sampled every 0.5 s, of their summed PSS, which counts pages shared after fork once)
and the baseline: RSS with the libraries loaded and JAX's devices up, before any pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

from isojax.core import loading

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIG = os.path.join(ROOT, 'configs', 'imagenet_vit_s16.py')
BATCH = 128


# --- the worker side: one loader in this process ------------------------------------------------------


def _status_kib(field: str, pid: str = 'self') -> int:
  with open(f'/proc/{pid}/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1])
  return 0


def _isojax_batches(folder: str, devices: int, shuffle_buffer: int, antialias: bool = False):
  from isojax import data

  config = loading.load(CONFIG)
  builder = data.get_builder('image_folder', folder)
  pp = config.data.train_pp.replace('antialias=False', 'antialias=True') if antialias else config.data.train_pp
  return data.train_batches(
    builder,
    split='train',
    pp=pp,
    image_size=224,
    per_device_batch=BATCH // devices,
    local_devices=devices,
    seed=0,
    shuffle_buffer=shuffle_buffer,
    cache=False,
    uint8_batches=config.data.uint8_batches,
  )


def plain_tfdata_batches(folder: str, devices: int, shuffle_buffer: int):
  """isojax's pipeline before encoded buffers: decoded on read, a pipeline and a buffer per device."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

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
    per_device.append(ds.batch(BATCH // devices, drop_remainder=True))
  stack = lambda *parts: {k: tf.stack([p[k] for p in parts]) for k in parts[0]}
  ds = tf.data.Dataset.zip(tuple(per_device)).map(stack).prefetch(2)
  options = tf.data.Options()
  options.threading.private_threadpool_size = max(os.cpu_count() or 1, 2)
  return iter(tfds.as_numpy(ds.with_options(options)))


def _timm_batches(folder: str):
  import timm.data
  import torch
  import torchvision

  transform = timm.data.create_transform(
    224, is_training=True, auto_augment='rand-m10-n2', interpolation='bilinear', mean=(0.5,) * 3, std=(0.5,) * 3
  )
  dataset = torchvision.datasets.ImageFolder(os.path.join(folder, 'train'), transform=transform)
  loader = torch.utils.data.DataLoader(
    dataset,
    batch_size=BATCH,
    shuffle=True,
    num_workers=2,
    drop_last=True,
    persistent_workers=True,
    generator=torch.Generator().manual_seed(0),
  )
  while True:
    yield from loader


def worker(loader: str, folder: str, devices: int, batches: int, warmup: int, shuffle_buffer: int) -> dict:
  """Measures one loader in this process; returns the figures."""
  if loader == 'timm':
    import torch  # noqa: F401

    baseline = _status_kib('VmRSS')
    stream = _timm_batches(folder)
  else:
    from isojax.core import host_memory

    host_memory.keep_freed_memory()  # as isojax.main does
    import jax
    import tensorflow  # noqa: F401

    assert jax.local_device_count() == devices, (jax.local_device_count(), devices)
    baseline = _status_kib('VmRSS')
    if loader == 'plain':
      stream = plain_tfdata_batches(folder, devices, shuffle_buffer)
    else:
      stream = _isojax_batches(folder, devices, shuffle_buffer, antialias=loader == 'isojax_antialias')
  start = time.perf_counter()
  first = next(stream)
  first_seconds = time.perf_counter() - start
  for _ in range(warmup - 1):
    next(stream)
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(stream)
  seconds = time.perf_counter() - start
  image = batch['image'] if isinstance(batch, dict) else batch[0]
  shape = tuple(image.shape)
  del first
  return {
    'images_per_sec': batches * BATCH / seconds,
    'first_batch_seconds': first_seconds,
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


def run_worker(python: str, loader: str, folder: str, devices: int, args, env_extra: dict | None = None) -> dict:
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
    while loader == 'timm' and not done.wait(0.5):
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


def table(
  rows: list[tuple[str, dict]], folder_bytes: int, reference: str = 'timm (torchvision + PIL), 2 workers'
) -> str:
  """A Markdown table; speed relative to `reference`, memory against the baseline + 2x folder target."""
  ref = dict(rows).get(reference, {}).get('images_per_sec')
  lines = [
    '| loader | images/s | vs timm | first batch s | baseline RSS MiB | peak RSS MiB | peak - baseline MiB |',
    '|---|---:|---:|---:|---:|---:|---:|',
  ]
  for name, r in rows:
    if 'error' in r:
      lines.append(f'| {name} | n/a | | | | | {r["error"]} |')
      continue
    peak = r['peak_tree_pss_bytes'] if name.startswith('timm') else r['peak_rss_bytes']
    mib = lambda b: f'{b / 2**20:,.0f}'
    ratio = f'{r["images_per_sec"] / ref:.2f}x' if ref else 'n/a'
    lines.append(
      f'| {name} | {r["images_per_sec"]:,.0f} | {ratio} | {r["first_batch_seconds"]:.1f} | '
      f'{mib(r["baseline_rss_bytes"])} | {mib(peak)} | {mib(peak - r["baseline_rss_bytes"])} |'
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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--folder', required=True, help='a JPEG folder made by benchmarks/photo_folder.py')
  parser.add_argument('--make', action='store_true', help='write the 5,000-image folder first if missing')
  parser.add_argument('--torch_python', default=sys.executable, help='a Python with torch, torchvision and timm')
  parser.add_argument('--batches', type=int, default=20, help='timed batches of 128')
  parser.add_argument('--warmup', type=int, default=2, help='batches before timing (the first fills the buffer)')
  parser.add_argument('--shuffle_buffer', type=int, default=5000)
  parser.add_argument('--json', help='also write the raw figures here')
  parser.add_argument('--worker', help=argparse.SUPPRESS)
  parser.add_argument('--devices', type=int, default=1, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker(args.worker, args.folder, args.devices, args.batches, args.warmup, args.shuffle_buffer)))
    return
  if args.make and not os.path.isdir(os.path.join(args.folder, 'train')):
    sys.path.insert(0, HERE)
    import photo_folder

    photo_folder.make(args.folder)
  plan = [
    ('isojax, 1 device', sys.executable, 'isojax', 1, None),
    ('isojax, 8 devices', sys.executable, 'isojax', 8, None),
    ('isojax, 1 device, glibc malloc defaults', sys.executable, 'isojax', 1, {'ISOJAX_KEEP_HOST_MEMORY': '0'}),
    ('isojax, 1 device, antialiased resize (as PIL)', sys.executable, 'isojax_antialias', 1, None),
    ('plain tf.data (decoded buffers, float32 batches), 1 device', sys.executable, 'plain', 1, None),
    ('plain tf.data (decoded buffers, float32 batches), 8 devices', sys.executable, 'plain', 8, None),
    ('timm (torchvision + PIL), 2 workers', args.torch_python, 'timm', 1, None),
  ]
  rows = []
  for name, python, loader, devices, env in plan:
    rows.append((name, run_worker(python, loader, args.folder, devices, args, env)))
    print(name, json.dumps(rows[-1][1]), file=sys.stderr, flush=True)
  size = folder_bytes(args.folder)
  print(
    f'{os.cpu_count()} CPU cores, {args.batches} timed batches of {BATCH} after {args.warmup}, '
    f'shuffle_buffer={args.shuffle_buffer}, {time.strftime("%Y-%m-%d")}'
  )
  print(table(rows, size))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'rows': rows, 'folder_bytes': size, 'cpu_count': os.cpu_count()}, f, indent=1)


if __name__ == '__main__':
  main()
