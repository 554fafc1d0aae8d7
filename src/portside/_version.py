"""The version, kept apart so ``portside --version`` imports nothing else."""

__version__ = "0.1.0"
