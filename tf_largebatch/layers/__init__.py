"""Layers of the large-batch recipe and of the reference models."""

from tf_largebatch.layers.channel_pad import ChannelPadShortcut
from tf_largebatch.layers.ghost_batch_norm import GhostBatchNormalization

__all__ = ["ChannelPadShortcut", "GhostBatchNormalization"]
