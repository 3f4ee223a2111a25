"""The package version, in a module of its own so the ``tf-largebatch`` command can read
it without importing the package (and TensorFlow)."""

__version__ = "0.1.0"
