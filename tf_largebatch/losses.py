"""Discarding small-loss samples (curvature paper, §3.1).

Large batches shrink the gradient; the examples with the largest losses carry
the largest gradients, so dropping the smallest per-sample losses of every
batch enlarges the step (Gao and Zhong, "Study on the Large Batch Size Training
of Neural Networks Based on the Second Order Gradient", §3.1, Figure 9: discarding 30% of the small-loss samples during the first 100 epochs
improved AlexNet/CIFAR-10 at batch sizes 2000 and 8000).
"""

import keras
import tensorflow as tf

from tf_largebatch import validation


def num_discarded(batch_size, fraction):
    """``round(fraction * batch_size)`` (half to even), at most ``batch_size - 1``.

    Rounding rather than flooring makes the count immune to float32 round-off
    (``0.29 * 100`` is ``28.999998`` in float32); at least one example is kept.
    """
    batch_size = tf.cast(batch_size, tf.int32)
    dropped = tf.cast(tf.round(fraction * tf.cast(batch_size, tf.float32)), tf.int32)
    return tf.minimum(dropped, tf.maximum(batch_size - 1, 0))


def small_loss_mask(per_sample_losses, fraction):
    """Boolean mask, False for the ``num_discarded(B, fraction)`` smallest losses.

    Ties are broken by position (a stable sort), so exactly that many examples
    are dropped. Sorting (not ``top_k`` with a data-dependent ``k``) keeps the
    computation XLA-compilable with a dynamic batch size.

    Args:
        per_sample_losses: 1-D tensor of shape ``(B,)``.
        fraction: Python float in ``[0, 1)``.
    """
    ascending_rank = tf.argsort(tf.argsort(per_sample_losses, stable=True), stable=True)
    return ascending_rank >= num_discarded(tf.shape(per_sample_losses)[0], fraction)


class _StepSource:
    """Holds the optimizer whose ``iterations`` count the steps.

    Not a ``KerasSaveable``: ``model.save`` walks every attribute of the compiled
    loss, and an optimizer reached through the loss first would be saved under
    the loss's path, leaving the model's own optimizer entry empty.
    """

    __slots__ = ("optimizer",)

    def __init__(self, optimizer):
        self.optimizer = optimizer


@keras.saving.register_keras_serializable(package="tf_largebatch")
class DiscardSmallLosses(keras.losses.Loss):
    """Wraps a loss so that the smallest per-sample losses of each batch are dropped.

    For a batch of ``B`` examples with per-sample losses ``l_i`` (the wrapped
    loss with no reduction; extra axes are averaged, so ``l`` has shape
    ``(B,)``), ``n = round(fraction * B)`` examples with the smallest ``l_i``
    are discarded and the default reduction averages over the ``B - n`` kept
    ones::

        loss = sum_{i kept} w_i * l_i / (B - n)        (w_i: sample weights, default 1)

    Discarded examples get exactly zero gradient. Under a ``tf.distribute``
    strategy each replica discards within its own per-replica batch.

    With ``discard_steps=N`` the discarding applies only while
    ``optimizer.iterations < N`` (real optimizer updates, which the optimizer
    checkpoints and restores); from then on it is the plain wrapped loss. This
    needs the optimizer: pass ``optimizer=`` or call :meth:`bind` (e.g. after
    ``keras.saving.load_model``: ``model.loss.bind(model.optimizer)``). The
    step test is a tensor ``where``, so the compiled training step stays one
    graph and compiles under XLA.

    The same compiled loss is used by ``model.evaluate``, so while active it
    also discards there; add the plain loss as a metric to monitor it.

    Args:
        loss: the wrapped loss: a ``keras.losses.Loss`` instance (e.g.
            ``CategoricalCrossentropy(label_smoothing=0.1)``), a loss function,
            or a name (``"mse"``).
        fraction: float in [0, 1), the fraction of each batch to discard
            (the paper's p%, e.g. 0.3).
        discard_steps: optional int >= 0: discard only during the first
            ``discard_steps`` optimizer updates. ``None``: always.
        optimizer: the optimizer whose ``iterations`` count the steps; needed
            only with ``discard_steps``. Not serialized.
        reduction, name, dtype: as for ``keras.losses.Loss``. With a reduction
            other than ``"sum_over_batch_size"``/``"mean"``, discarded
            examples contribute zero and no renormalization is done.

    References:
        Gao and Zhong, "Study on the Large Batch Size Training of Neural
        Networks Based on the Second Order Gradient", §3.1 and Figures 9-10.
    """

    def __init__(
        self,
        loss,
        fraction,
        discard_steps=None,
        optimizer=None,
        reduction="sum_over_batch_size",
        name="discard_small_losses",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if loss is None:
            raise ValueError("`loss` must be a loss name, function or keras.losses.Loss. Received: loss=None")
        self.loss = keras.losses.get(loss)
        if not callable(self.loss):
            raise ValueError(f"`loss` must be a loss name, function or keras.losses.Loss. Received: loss={loss!r}")
        self.fraction = float(validation.check_number("fraction", fraction, low=0.0, high=1.0, high_inclusive=False))
        self.discard_steps = validation.check_positive_int("discard_steps", discard_steps, minimum=0, allow_none=True)
        self._step_source = _StepSource(optimizer)

    def bind(self, optimizer):
        """Uses ``optimizer.iterations`` as the step counter; returns ``self``."""
        self._step_source = _StepSource(optimizer)
        return self

    def per_sample_losses(self, y_true, y_pred):
        """The wrapped loss without reduction, averaged to shape ``(B,)``."""
        if isinstance(self.loss, keras.losses.Loss):
            values = self.loss.call(y_true, y_pred)
        else:
            values = self.loss(y_true, y_pred)
        values = tf.convert_to_tensor(values)
        if values.shape.rank and values.shape.rank > 1:
            values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
        return values

    def keep_mask(self, per_sample_losses):
        """True for the examples that count at the current step."""
        keep = small_loss_mask(per_sample_losses, self.fraction)
        if self.discard_steps is None:
            return keep
        optimizer = self._step_source.optimizer
        if optimizer is None:
            raise ValueError(
                "DiscardSmallLosses(discard_steps=...) counts optimizer updates: pass "
                "`optimizer=` or call `loss.bind(model.optimizer)` before training."
            )
        finished = optimizer.iterations >= self.discard_steps
        return tf.logical_or(keep, finished)

    def call(self, y_true, y_pred):
        losses = self.per_sample_losses(y_true, y_pred)
        keep = tf.cast(self.keep_mask(losses), losses.dtype)
        losses = losses * keep
        if self.reduction in ("sum_over_batch_size", "mean"):
            # Keras divides by B; rescale so the mean runs over kept examples.
            batch_size = tf.cast(tf.shape(losses)[0], losses.dtype)
            losses = losses * (batch_size / tf.maximum(tf.reduce_sum(keep), 1.0))
        return losses

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "loss": keras.losses.serialize(self.loss),
                "fraction": self.fraction,
                "discard_steps": self.discard_steps,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["loss"] = keras.losses.deserialize(config["loss"])
        return cls(**config)
