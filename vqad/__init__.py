"""vqad: VQ-VAE visual inspection. The console entry lives in vqad.cli."""

__version__ = "0.1.0"
