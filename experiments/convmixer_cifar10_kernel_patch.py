"""The ConvMixer paper's CIFAR-10 ablation: kernel size x patch size for ConvMixer-256/8.

    python -m isojax.sweep experiments/convmixer_cifar10_kernel_patch.py --workdir=workdirs/cm_ablation --parallel=4

3 x 3 = 9 trials of configs/cifar10_convmixer.py at 25 epochs (the paper's fast setting: ~92% for
kernel 5 / patch 2; larger patches trade accuracy for speed, kernel 9 helps at patch 1-2).
"""

from isojax.sweeps import Sweep, product


def get_sweep():
  return Sweep(
    'configs/cifar10_convmixer.py',
    product({'model.kernel_size': [3, 5, 9], 'model.patch_size': [1, 2, 4]}),
    fixed={'num_epochs': 25.0},
  )  # the onecycle schedule scales itself to the 25 epochs
