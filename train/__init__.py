"""Training side: the VQ-VAE, its scoring, data, synthetic data, metrics, loop and evaluation."""
