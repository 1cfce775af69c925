"""Test-wide setup: several CPU devices for pmap tests, quiet TensorFlow, no GPU grabbing by TF."""
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')  # tf.data must never take the accelerator
