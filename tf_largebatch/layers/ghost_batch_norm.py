"""Ghost batch normalization: batch statistics over small virtual batches.

Hoffer, Hubara and Soudry, "Train longer, generalize better: closing the
generalization gap in large batch training of neural networks", 2017, §4
(Algorithm 1). You et al., "The Limit of the Batch Size", §3, use it in their
huge-batch baseline; its ImageNet experiments (§4.1, "distributed BN") got
the best accuracy with 128 examples per normalization group (batch 32K on 256
TPU cores), after Ying et al.'s 64.
"""

import keras
import tensorflow as tf
from keras import ops

from tf_largebatch import validation


@keras.saving.register_keras_serializable(package="tf_largebatch")
class GhostBatchNormalization(keras.layers.BatchNormalization):
    """Batch normalization with statistics per virtual ("ghost") batch.

    In training, the batch ``x`` of ``B`` examples (the per-replica batch under
    a ``tf.distribute`` strategy) is split in order into ``G = B / V`` virtual
    batches of ``V = virtual_batch_size`` consecutive examples; each virtual
    batch ``k`` is normalized with its own mean ``mu_k`` and (biased) variance
    ``var_k`` over every axis except the channel ``axis``::

        y = gamma * (x - mu_k) / sqrt(var_k + epsilon) + beta

    The moving statistics get one update per call (not one per virtual batch),
    with the mean over the virtual batches of their statistics::

        moving_mean     <- momentum * moving_mean     + (1 - momentum) * mean_k(mu_k)
        moving_variance <- momentum * moving_variance + (1 - momentum) * mean_k(var_k)

    ``mean_k(mu_k)`` is the whole batch's mean; ``mean_k(var_k)`` is the mean
    within-virtual-batch variance, i.e. the variance the training-time
    normalization actually divides by (what Keras 2's ``virtual_batch_size``
    also stored). Under a ``tf.distribute`` strategy the normalization uses
    only the replica's own examples (no communication), and ``mean_k`` runs
    over the virtual batches of *all* replicas: one all-reduce of ``2 * C``
    numbers per layer and step keeps every replica's moving statistics
    identical (Keras 3's ``BatchNormalization`` instead lets the replicas'
    copies diverge and reads replica 0's). At inference (``training=False``,
    or a frozen layer) the moving statistics are used, exactly as in
    ``BatchNormalization``. With
    ``virtual_batch_size`` equal to the batch size, the layer *is*
    ``BatchNormalization``. Weights, moving statistics and config are
    ``BatchNormalization``'s, plus ``virtual_batch_size``.

    Args:
        virtual_batch_size: int >= 1, examples per virtual batch. The batch
            seen by the layer (per replica) must be a multiple of it.
        axis: the channel axis (not the batch axis 0); -1 for NHWC images and
            ``(batch, features)`` inputs.
        **kwargs: every other ``keras.layers.BatchNormalization`` argument
            (``momentum``, ``epsilon``, ``center``, ``scale``, initializers,
            regularizers, constraints), except ``renorm`` and
            ``synchronized=True`` (cross-replica statistics, the opposite of
            ghost batches), which raise ``ValueError``.

    References:
        Hoffer et al., 2017, "Train longer, generalize better", §4, Algorithm 1;
        You et al., "The Limit of the Batch Size", 2020, §3 and §4.1.
    """

    def __init__(self, virtual_batch_size, axis=-1, **kwargs):
        if kwargs.get("renorm"):
            raise ValueError(
                "GhostBatchNormalization does not support batch renormalization. "
                f"Received: renorm={kwargs['renorm']!r}"
            )
        if kwargs.get("synchronized"):
            raise ValueError(
                "GhostBatchNormalization computes statistics per virtual batch within a "
                "replica; cross-replica statistics contradict that. "
                f"Received: synchronized={kwargs['synchronized']!r}"
            )
        super().__init__(axis=axis, **kwargs)
        self.virtual_batch_size = validation.check_positive_int("virtual_batch_size", virtual_batch_size)
        self.supports_masking = False

    def build(self, input_shape):
        ndim = len(input_shape)
        if self.axis % ndim == 0:
            raise ValueError(
                f"`axis` must not be the batch axis 0. Received: axis={self.axis} "
                f"for inputs of rank {ndim}"
            )
        super().build(input_shape)

    def call(self, inputs, training=None, mask=None):
        if mask is not None:
            raise ValueError("GhostBatchNormalization does not support masking.")
        if not (training and self.trainable):
            return super().call(inputs, training=False)

        compute_dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = ops.cast(inputs, compute_dtype)
        ghost = self._split_into_virtual_batches(x)
        channel_axis = self.axis % len(x.shape) + 1  # in ghost: (G, V, ...)
        axes = [a for a in range(1, len(ghost.shape)) if a != channel_axis]
        mean, variance = tf.nn.moments(ghost, axes=axes, keepdims=True)

        channel_shape = [1] * len(ghost.shape)
        channel_shape[channel_axis] = -1
        gamma = tf.reshape(ops.cast(self.gamma, compute_dtype), channel_shape) if self.scale else None
        beta = tf.reshape(ops.cast(self.beta, compute_dtype), channel_shape) if self.center else None
        outputs = tf.nn.batch_normalization(ghost, mean, variance, beta, gamma, self.epsilon)

        batch_mean = tf.reshape(tf.reduce_mean(mean, axis=0), [-1])
        batch_variance = tf.reshape(tf.reduce_mean(variance, axis=0), [-1])
        self._update_moving_statistics(batch_mean, batch_variance)

        outputs = tf.reshape(outputs, tf.shape(x))
        return ops.cast(outputs, self.compute_dtype)

    def _split_into_virtual_batches(self, x):
        """``(B, ...) -> (B / V, V, ...)``, checking that ``V`` divides ``B``."""
        size = self.virtual_batch_size
        static_batch = x.shape[0]
        if static_batch is not None:
            if static_batch % size:
                raise ValueError(self._not_divisible_message(static_batch))
        else:
            batch = tf.shape(x)[0]
            check = tf.debugging.assert_equal(
                batch % size, 0, message=self._not_divisible_message("(dynamic)")
            )
            with tf.control_dependencies([check]):
                x = tf.identity(x)
        return tf.reshape(x, tf.concat([[-1, size], tf.shape(x)[1:]], axis=0))

    def _not_divisible_message(self, batch):
        return (
            f"The batch size seen by layer '{self.name}' ({batch}, per replica under a "
            f"distribution strategy) must be a multiple of virtual_batch_size="
            f"{self.virtual_batch_size}; use drop_remainder=True or a batch size that is a "
            "multiple of virtual_batch_size * num_replicas."
        )

    def _update_moving_statistics(self, mean, variance):
        mean, variance = mean_over_replicas(mean, variance)
        momentum = self.momentum
        moving_mean = ops.cast(self.moving_mean, mean.dtype)
        moving_variance = ops.cast(self.moving_variance, mean.dtype)
        self.moving_mean.assign(moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(moving_variance * momentum + variance * (1.0 - momentum))

    def get_config(self):
        config = super().get_config()
        config["virtual_batch_size"] = self.virtual_batch_size
        return config


def mean_over_replicas(mean, variance):
    """Averages per-replica statistics over replicas in one all-reduce.

    Identity outside a replica context or with a single replica. With equal
    per-replica batches, the mean over replicas of ``mean_k(mu_k)`` and
    ``mean_k(var_k)`` is the same mean over *all* virtual batches of the global
    batch, so every replica's copy of the moving statistics stays identical.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return mean, variance
    size = tf.shape(mean)[0]
    packed = context.all_reduce(tf.distribute.ReduceOp.MEAN, tf.concat([mean, variance], axis=0))
    return packed[:size], packed[size:]
