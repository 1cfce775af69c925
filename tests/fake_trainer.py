"""A stand-in for `isojax.main` in the sweep driver's tests: no JAX, the same workdir contract.

    python tests/fake_trainer.py --config=PATH[:ARG] --workdir=DIR [--config.FIELD=VALUE ...]

It holds DIR/.isojax.lock, appends eval lines {"split": "eval", "evaluator": "val", "accuracy": a} to
DIR/metrics.jsonl every step (accuracy = min(1, lr * step), so a small --config.optimizer.lr is hopeless),
keeps DIR/checkpoint.json, resumes from it, stops on SIGTERM at the end of the step it is on with the
checkpoint written (exit 75, as isojax.main), writes the summary line at the last step, and fails with a
ValueError for --config.fail=1. --config.step_sec sets the time one step takes; --config.num_steps the steps.
"""

import fcntl
import json
import os
import signal
import sys
import time


def main(argv):
  options = dict(a[2:].split('=', 1) for a in argv if a.startswith('--'))
  workdir = options['workdir']
  os.makedirs(workdir, exist_ok=True)
  lock = open(os.path.join(workdir, '.isojax.lock'), 'a')
  fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a second writer fails loudly, as isojax.main refuses it
  lr = float(options.get('config.optimizer.lr', 1.0))
  steps = int(options.get('config.num_steps', 10))
  step_sec = float(options.get('config.step_sec', 0.05))
  if options.get('config.fail') == '1':
    raise ValueError(f'fake failure of {workdir}')
  checkpoint = os.path.join(workdir, 'checkpoint.json')
  start = json.load(open(checkpoint))['step'] if os.path.exists(checkpoint) else 0
  print(f'fake trainer: {"resuming at step " + str(start) if start else "starting"}', flush=True)
  stop = []
  signal.signal(signal.SIGTERM, lambda *_: stop.append('SIGTERM'))
  metrics = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
  for step in range(start + 1, steps + 1):
    time.sleep(step_sec)
    metrics.write(json.dumps({'step': step, 'split': 'train', 'images_per_sec': 100.0}) + '\n')
    metrics.write(
      json.dumps({'step': step, 'split': 'eval', 'evaluator': 'val', 'accuracy': min(1.0, lr * step)}) + '\n'
    )
    metrics.flush()
    json.dump({'step': step}, open(checkpoint, 'w'))
    if stop:
      print(f'stopped at step {step} on SIGTERM; checkpoint saved', flush=True)
      return 75
  summary = {'step': steps, 'split': 'summary', 'best_accuracy': min(1.0, lr * steps), 'steps': steps}
  summary |= {'final_accuracy': min(1.0, lr * steps), 'final_loss': 1.0, 'wall_time_sec': 1.0}
  metrics.write(json.dumps(summary) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
