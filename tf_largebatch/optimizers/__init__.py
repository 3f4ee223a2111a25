"""Optimizers for large-batch training (Keras 3, TensorFlow backend)."""

from tf_largebatch.optimizers.base import LargeBatchOptimizer
from tf_largebatch.optimizers.sngm import SNGM
