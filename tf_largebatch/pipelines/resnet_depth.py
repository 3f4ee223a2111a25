"""The depth rule of CIFAR ResNets, written once (the model builder and the config check use it).

He et al., "Deep Residual Learning for Image Recognition", 2016, §4.2: three
stages of ``n`` basic blocks of two 3x3 convolutions, a stem convolution and
the classifier give depth ``6n + 2``. No TensorFlow import (configs are
checked before TensorFlow starts).
"""


def blocks_per_stage(depth):
    """``n`` of a CIFAR ResNet of ``depth = 6n + 2`` layers.

    Args:
        depth: the number of weighted layers (8, 14, 20, 32, 44, 56, 110, ...).

    Raises:
        ValueError: if ``depth`` is not ``6n + 2`` with ``n >= 1``.

    References:
        He et al., "Deep Residual Learning for Image Recognition", 2016, §4.2.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"expected 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110), got {depth!r}")
    return (depth - 2) // 6
