"""The parameter-free "option A" shortcut of CIFAR ResNets.

He et al., "Deep Residual Learning for Image Recognition", 2016, §4.2
(option A): where a block halves the resolution and doubles the width, the
identity path subsamples and zero-pads the new channels instead of using a
projection. Registered with Keras's serialization here, with the package's
other layers, so a saved CIFAR ResNet (``final.keras`` of a ResNet-20/56 run)
loads with ``keras.saving.load_model`` after ``import tf_largebatch``.
"""

import keras


@keras.saving.register_keras_serializable(package="tf_largebatch")
class ChannelPadShortcut(keras.layers.Layer):
    """Subsamples by ``stride`` and zero-pads the channel axis by ``pad`` on each side.

    The identity path of a block that halves the resolution and doubles the
    width: ``[b, h, w, c] -> [b, ceil(h/stride), ceil(w/stride), c + 2·pad]``
    (channels last).

    Args:
        stride: spatial subsampling (1: none).
        pad: zero channels added before and after the input's channels.
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``).

    References:
        He et al., "Deep Residual Learning for Image Recognition", 2016, §4.2.
    """

    def __init__(self, stride, pad, **kwargs):
        super().__init__(**kwargs)
        self.stride = int(stride)
        self.pad = int(pad)

    def call(self, inputs):
        x = inputs[:, :: self.stride, :: self.stride, :]
        return keras.ops.pad(x, [[0, 0], [0, 0], [0, 0], [self.pad, self.pad]])

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        h = None if h is None else (h + self.stride - 1) // self.stride
        w = None if w is None else (w + self.stride - 1) // self.stride
        return (b, h, w, c + 2 * self.pad)

    def get_config(self):
        return {**super().get_config(), "stride": self.stride, "pad": self.pad}
