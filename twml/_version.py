"""The project's one version string: setup.py reads it, ``embedding-export --version`` prints it."""
__version__ = "0.1.0"
