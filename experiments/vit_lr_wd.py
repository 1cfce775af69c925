"""ViT learning rate x weight decay on CIFAR-10: a 3 x 3 grid plus 8 log-uniform random trials.

    python -m isojax.sweep experiments/vit_lr_wd.py --workdir=workdirs/vit_lr_wd --parallel=2

Base: configs/cifar10_vit.py shortened to 50 epochs. The random trials (seed 0, fixed) fill
the space between the grid points.
"""

from isojax.sweeps import Sweep, loguniform, product, sample


def get_sweep():
  grid = product({'optimizer.lr': [3e-4, 1e-3, 3e-3], 'optimizer.weight_decay': [0.01, 0.05, 0.3]})
  random = sample(8, {'optimizer.lr': loguniform(1e-4, 1e-2), 'optimizer.weight_decay': loguniform(1e-3, 1.0)}, seed=0)
  return Sweep('configs/cifar10_vit.py', grid + random, fixed={'num_epochs': 50.0})
