#!/usr/bin/env bash
# One accelerator check, one table: the pmap tests on the real devices, isojax.bench for ViT-B/16 in
# bfloat16 (MFU) and ConvMixer-1536/20, ViT-B/16 under pmap and the jit path side by side, ViT-H/14's training
# step compiled with unrolled and with scanned blocks, and the ImageNet training input pipeline on all host cores.
#
#   bash benchmarks/accelerator_check.sh [WHEELS_DIR]       # about 5 minutes on one H100/H200
#
# Needs jax with its accelerator plugin (preinstalled on such machines). Brings the rest: isojax's
# requirements that do not import are pip-installed from PyPI, or without a network from WHEELS_DIR
# (made elsewhere with `pip download -d WHEELS_DIR tensorflow-cpu tensorflow-datasets ml-collections
# scikit-learn pytest einops --python-version 3.12 --only-binary=:all:`). A step whose requirements
# still do not import is reported as skipped, with the reason, and the others run: without
# TensorFlow (its wheel is ~250 MB) the pmap tests and both benches still run (ml-collections and
# pytest are all they need; the two train-step tests that use tf say so and skip). Without an
# accelerator it runs the same steps on the CPU with small batches (a check of the script itself).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:-}
OUT=${ISOJAX_CHECK_OUT:-/tmp/isojax_accelerator_check}
rm -rf "$OUT" && mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1
unset XLA_FLAGS
start=$(date +%s)

missing=$(python - <<'EOF'
import importlib.util
need = {'ml_collections': 'ml-collections', 'tensorflow': 'tensorflow-cpu', 'tensorflow_datasets': 'tensorflow-datasets',
        'sklearn': 'scikit-learn', 'pytest': 'pytest', 'einops': 'einops', 'optax': 'optax', 'flax': 'flax',
        'orbax.checkpoint': 'orbax-checkpoint', 'safetensors': 'safetensors', 'PIL': 'pillow', 'etils': 'etils[epath]',
        'importlib_resources': 'importlib_resources', 'matplotlib': 'matplotlib'}
def importable(module):
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:
    return False
print(' '.join(package for module, package in need.items() if not importable(module)))
EOF
)
if [ -n "$missing" ]; then
  echo "installing: $missing"
  timeout 240 python -m pip install -q $missing >"$OUT/pip.log" 2>&1 \
    || { [ -n "$WHEELS" ] && timeout 240 python -m pip install -q --no-index --find-links "$WHEELS" $missing >>"$OUT/pip.log" 2>&1; } \
    || echo "could not install all of: $missing (see $OUT/pip.log); steps needing them are skipped"
fi

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  export CUDA_VISIBLE_DEVICES=$(nvidia-smi -L | awk '{print NR - 1}' | paste -sd, -)
  VIT_BATCH=256 CONVMIXER_BATCH=64 IMAGE=224 CONVMIXER_IMAGE=224 STEPS=10 FOLDER_PER_CLASS=200 INPUT_BATCH=256
else
  echo "no accelerator found: running every step on the CPU with small batches (a check of this script)"
  VIT_BATCH=4 CONVMIXER_BATCH=2 IMAGE=64 CONVMIXER_IMAGE=63 STEPS=2 FOLDER_PER_CLASS=10 INPUT_BATCH=32
fi

step() {   # step NAME SECONDS COMMAND...: runs it, keeping its output and exit status for the table
  local name=$1 seconds=$2; shift 2
  echo "== $name"
  timeout "$seconds" "$@" >"$OUT/$name.log" 2>&1
  echo $? >"$OUT/$name.rc"
  tail -n 3 "$OUT/$name.log"
}

# The pure train step under pmap on the real devices (N devices == 1 device, BatchNorm sync, bf16, EMA).
step pmap_tests 240 python -m pytest -q -p no:cacheprovider tests/test_train_step.py
step vit_b16_bf16 150 python -m isojax.bench --model=ViT-B/16 --batch_size="$VIT_BATCH" --image_size="$IMAGE" \
  --dtype=bfloat16 --steps="$STEPS"
step convmixer_1536_20 150 python -m isojax.bench --model=ConvMixer-1536/20 --batch_size="$CONVMIXER_BATCH" \
  --image_size="$CONVMIXER_IMAGE" --dtype=bfloat16 --steps="$STEPS"
# The jit path beside pmap on the same devices (data parallel over all of them), and scan's compile time.
step vit_b16_pmap_jit 240 python -m isojax.bench --model=ViT-B/16 --batch_size="$VIT_BATCH" --image_size="$IMAGE" \
  --dtype=bfloat16 --steps="$STEPS" --parallelism=pmap,jit --mesh=data:-1
step compile_vit_h14_unrolled 150 python -m isojax.bench --model=ViT-H/14 --compile_only --batch_size=8 \
  --dtype=bfloat16 --remat
step compile_vit_h14_scanned 150 python -m isojax.bench --model=ViT-H/14 --compile_only --batch_size=8 \
  --dtype=bfloat16 --remat --scan
if python -c 'import tensorflow, tensorflow_datasets, sklearn' 2>/dev/null; then
  step photo_folder 120 python benchmarks/photo_folder.py --out="$OUT/photos" --per_class="$FOLDER_PER_CLASS" \
    --val_per_class=1
  step input_pipeline 150 python -m isojax.bench --input=configs/imagenet_vit_s16.py --steps="$STEPS" \
    --set=data.name=image_folder --set=data.data_dir="$OUT/photos" --set=data.train_split=train \
    --set=batch_size="$INPUT_BATCH" --set=data.shuffle_buffer=2000
else
  echo "TensorFlow, TFDS or scikit-learn does not import: input pipeline skipped" | tee "$OUT/input_pipeline.log"
  echo skipped >"$OUT/input_pipeline.rc"
fi

python - "$OUT" "$(( $(date +%s) - start ))" <<'EOF'
import json, os, sys, time
out, seconds = sys.argv[1], int(sys.argv[2])
def last_json(name):
  try:
    lines = [l for l in open(os.path.join(out, f'{name}.log')) if l.startswith('{')]
    return json.loads(lines[-1]) if lines else None
  except OSError:
    return None
def status(name):
  try:
    rc = open(os.path.join(out, f'{name}.rc')).read().strip()
  except OSError:
    return 'not run'
  return {'0': 'ok', '124': 'timed out', 'skipped': 'skipped'}.get(rc, f'failed (exit {rc})')
import jax
print(f"\nisojax accelerator check, {time.strftime('%Y-%m-%d')}: {jax.device_count()} x {jax.devices()[0].device_kind}, "
      f"jax {jax.__version__}, {os.cpu_count()} host cores, {seconds} s in all")
print('| step | status | result |\n|---|---|---|')
tests = open(os.path.join(out, 'pmap_tests.log')).read().strip().splitlines()[-1:] if os.path.exists(
    os.path.join(out, 'pmap_tests.log')) else ['']
print(f"| pmap tests (tests/test_train_step.py) | {status('pmap_tests')} | {tests[0]} |")
for name in ('vit_b16_bf16', 'convmixer_1536_20'):
  r = last_json(name)
  if r:
    t, i = r['train'], r['inference']
    mfu = lambda x: f"{100 * x['mfu']:.1f}% MFU" if x.get('mfu') else 'MFU n/a'
    text = (f"{r['model']} batch {r['batch_size']} @ {r['image_size']}px {r['dtype']}: train {t['images_per_sec']:,.0f} "
            f"img/s ({mfu(t)}), inference {i['images_per_sec']:,.0f} img/s ({mfu(i)})")
  else:
    text = open(os.path.join(out, f'{name}.log')).read().strip().splitlines()[-1:] or ['']
    text = [l for l in open(os.path.join(out, f'{name}.log')) if 'Error' in l][-1:] or text
    text = text[0].strip()
  print(f'| isojax.bench {name} | {status(name)} | {text} |')
r = last_json('vit_b16_pmap_jit')
if r:
  ratio = r['ratio_to_first']['jit']
  text = f"jit / pmap on {r['side_by_side'][1]['mesh']}: train {ratio['train']:.2f}x, inference {ratio['inference']:.2f}x"
else:
  text = (open(os.path.join(out, 'vit_b16_pmap_jit.log')).read().strip().splitlines() or [''])[-1]
print(f"| isojax.bench ViT-B/16 --parallelism=pmap,jit | {status('vit_b16_pmap_jit')} | {text} |")
compiled = {name: last_json(f'compile_vit_h14_{name}') for name in ('unrolled', 'scanned')}
text = ', '.join(f"{name} {r['lower_seconds'] + r['compile_seconds']:.1f} s" for name, r in compiled.items() if r)
print(f"| ViT-H/14 train step compile (bf16, remat) | {status('compile_vit_h14_scanned')} | {text or 'n/a'} |")
r = last_json('input_pipeline')
text = (f"{r['images_per_sec']:,.0f} images/s ({r['train_pp'].replace('|', ' / ')})" if r else
        open(os.path.join(out, 'input_pipeline.log')).read().strip().splitlines()[-1])
print(f"| input pipeline, configs/imagenet_vit_s16.py on a JPEG folder | {status('input_pipeline')} | {text} |")
EOF
