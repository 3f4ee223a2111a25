"""Layers of the large-batch recipe."""

from tf_largebatch.layers.ghost_batch_norm import GhostBatchNormalization

__all__ = ["GhostBatchNormalization"]
