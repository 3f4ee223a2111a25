"""The gradient-statistics recorder: per-variable mean and variance of a step's gradient samples.

:class:`GradientStatisticsMixin` is the part of
:class:`~tf_largebatch.optimizers.base.LargeBatchOptimizer` that, when recording
(``record_gradient_statistics=True``, or always for the VR optimizers), keeps
one row of statistics per variable for the last update, read by
:class:`tf_largebatch.callbacks.GSNRMonitor`. The math is in
:mod:`~tf_largebatch.optimizers.gsnr`.
"""

import keras
import tensorflow as tf

from tf_largebatch.optimizers import gsnr, keras_seam
from tf_largebatch.optimizers.slots import tf_variable


class GradientStatisticsMixin:
    """Records the step's per-variable gradient statistics from the all-reduced moments."""

    @property
    def num_gradient_samples(self):
        """k = replicas in sync x gradient accumulation steps."""
        return keras_seam.distribution_strategy(self).num_replicas_in_sync * (self.gradient_accumulation_steps or 1)

    @property
    def records_gradient_statistics(self):
        """Whether this optimizer records :meth:`gradient_statistics` (the VR optimizers always do)."""
        return bool(self._records_statistics())

    def _records_statistics(self):
        return self.record_gradient_statistics

    def _statistic_names(self):
        return gsnr.STATISTIC_NAMES[:3]

    def _empty_statistic_rows(self):
        return [tf.zeros([len(self._statistic_names())])] * len(keras_seam.built_variables(self))

    def _check_enough_gradient_samples(self):
        """At build: a variance needs k >= 2 gradient samples per step."""
        if self._records_statistics() and self.num_gradient_samples < 2:
            raise ValueError(
                f"{type(self).__name__} estimates the gradient variance from k >= 2 gradient samples per step, "
                f"but k = {keras_seam.distribution_strategy(self).num_replicas_in_sync} replica(s) x "
                f"{self.gradient_accumulation_steps or 1} accumulation step(s) = {self.num_gradient_samples}. "
                "Create the optimizer under a tf.distribute strategy with >= 2 replicas, or pass "
                "gradient_accumulation_steps >= 2 (each micro-batch is then a sample; the VRGD paper notes "
                "accumulation steps play the role of k)."
            )

    def _build_gradient_statistics(self, variables):
        """Creates the ``(variables, statistics)`` table when recording."""
        if not self._records_statistics():
            return
        strategy = keras_seam.distribution_strategy(self)
        with strategy.extended.colocate_vars_with(tf_variable(keras_seam.micro_step_counter(self))):
            self._gradient_statistics = keras.Variable(
                initializer="zeros",
                shape=(len(variables), len(self._statistic_names())),
                dtype="float32",
                trainable=False,
                aggregation="mean",
                synchronization="on_read",
                name="gradient_statistics",
            )
        keras_seam.track_variable(self, self._gradient_statistics)

    def _sample_moments(self, statistics, trainable_variables):
        """``(index, mean, variance)`` per variable of the step's k gradient samples,
        from the all-reduced ``[sums of means, sums of mean squares]``."""
        num_replicas = keras_seam.distribution_strategy(self).num_replicas_in_sync
        for sum_of_means, sum_of_squares, variable in zip(*statistics, trainable_variables):
            mean, second_moment = gsnr.moments_from_replica_sums(sum_of_means, sum_of_squares, num_replicas)
            variance = gsnr.sample_variance(mean, second_moment, self.num_gradient_samples)
            yield keras_seam.variable_index(self, variable), mean, variance

    def _record_gradient_statistics(self, statistics, trainable_variables):
        """Stores, per variable, sum gbar**2, sum s2 and the mean raw GSNR of this step."""
        rows = self._empty_statistic_rows()
        for index, mean, variance in self._sample_moments(statistics, trainable_variables):
            signal = tf.square(mean)
            _, mean_gsnr, _ = gsnr.normalized_gsnr(signal, variance)
            rows[index] = tf.stack([tf.reduce_sum(signal), tf.reduce_sum(variance), mean_gsnr])
        self._gradient_statistics.assign(tf.stack(rows))

    def gradient_statistics(self):
        """The last update's per-variable gradient statistics, by variable path.

        Recorded when ``record_gradient_statistics=True`` (the VR optimizers
        always record): ``{path: {"mean_square": sum gbar**2, "variance":
        sum s2, "gsnr_mean": mean raw GSNR over the elements with finite GSNR}}``
        (sums over the variable's elements; ``gbar`` and ``s2`` are the mean and
        variance of the step's k gradient samples, see
        :mod:`~tf_largebatch.optimizers.gsnr`); the VR optimizers add
        ``fraction_at_lower``/``fraction_at_upper`` (elements clipped at
        ``gamma``/the upper bound). Read eagerly, e.g. by
        :class:`tf_largebatch.callbacks.GSNRMonitor`.
        """
        if not self._records_statistics():
            raise ValueError(
                f"{type(self).__name__} records no gradient statistics: create it with "
                "record_gradient_statistics=True (or use a VR optimizer)."
            )
        if not self.built:
            raise ValueError(f"{type(self).__name__} has no statistics before its first step.")
        values = self._gradient_statistics.numpy()
        return {
            variable.path: dict(zip(self._statistic_names(), map(float, row)))
            for variable, row in zip(keras_seam.built_variables(self), values)
        }
