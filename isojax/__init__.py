"""isojax: isotropic vision architectures (ViT, MLP-Mixer, ConvMixer) in JAX/Flax."""
__version__ = '0.1.0'
