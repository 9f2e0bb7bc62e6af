"""vaeforge: train variational autoencoders on face images, from a laptop CPU to a SLURM cluster."""
__version__ = "0.1.0"
