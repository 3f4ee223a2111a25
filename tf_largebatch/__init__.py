"""tf_largebatch: large-batch training optimizers and recipe for TensorFlow/Keras 3."""

__version__ = "0.1.0"
