"""Built-in latent priors: densities fitted on a trained VAE's training posterior means, sampled instead of N(0, I)."""
