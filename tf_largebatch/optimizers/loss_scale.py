"""Dynamic loss scaling whose skip decision is the same on every replica."""

import keras
import tensorflow as tf

from tf_largebatch.optimizers.replicas import all_reduce_sum


@keras.saving.register_keras_serializable(package="tf_largebatch")
class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """``keras.optimizers.LossScaleOptimizer`` with a globally agreed overflow check.

    Keras 3's TensorFlow ``LossScaleOptimizer`` decides whether a step
    overflowed from the first replica's gradients only (its comment assumes the
    gradients are already all-reduced; in Keras 3 they no longer are). An
    overflow on another replica is then applied instead of skipped and the loss
    scale is not lowered. This subclass counts non-finite elements on every
    replica and all-reduces the count (one scalar collective), so every replica
    skips the step, halves the scale, and leaves the inner optimizer's state
    untouched together.

    ``model.compile`` wraps an optimizer in Keras's own ``LossScaleOptimizer``
    under a ``mixed_float16`` policy unless it already is one, so pass this
    wrapper explicitly::

        keras.mixed_precision.set_global_policy("mixed_float16")
        model.compile(optimizer=tlb.optimizers.LossScaleOptimizer(tlb.optimizers.LAMB(1e-3)), ...)

    Args: as ``keras.optimizers.LossScaleOptimizer``.
    """

    def check_finite(self, grads):
        nonfinite = [tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(g)), tf.float32))
                     for g in grads if g is not None]
        (total,) = all_reduce_sum([tf.add_n(nonfinite)])
        return tf.equal(total, 0.0)
