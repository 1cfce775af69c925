"""A first sweep on the offline digits: ConvMixer kernel size x learning rate, a few minutes on 2 CPU cores.

    python -m isojax.sweep experiments/default_sweep.py --workdir=workdirs/default_sweep

4 trials of the default config shortened to 15 epochs; writes results.md/.csv/.png.
"""

from isojax.sweeps import Sweep, product


def get_sweep():
  return Sweep(
    'configs/default.py',
    product({'model.kernel_size': [3, 5], 'optimizer.lr': [2e-3, 5e-3]}),
    fixed={'num_epochs': 15.0, 'eval_every': 100, 'checkpoint.every': 100},
  )
