"""Built-in SLURM cluster profiles: YAML files shipped with the package (``slurm=NAME``)."""
