"""The gradient-statistics recorder: per-variable mean and variance of a step's gradient samples.

:class:`GradientStatisticsMixin` is the part of
:class:`~tf_largebatch.optimizers.base.LargeBatchOptimizer` that, when recording
(``record_gradient_statistics=True``, or always for the VR optimizers), keeps
one row of statistics per variable for the last update, read by
:class:`tf_largebatch.callbacks.GSNRMonitor`. The math is in
:mod:`~tf_largebatch.optimizers.gsnr`.

It also decides what each replica accumulates for the step's one all-reduce:
the gradient and its square, or, at ``k >= SHIFTED_MOMENTS_MIN_SAMPLES``
samples, both moments about the previous applied update's mean gradient
(:func:`~tf_largebatch.optimizers.gsnr.shifted_local_moments`), which every
replica holds identically, so that float32 moments stay accurate at large ``k``.
"""

import keras
import tensorflow as tf

from tf_largebatch.optimizers import gsnr, keras_seam
from tf_largebatch.optimizers.slots import tf_variable


#: From this many gradient samples per update on, moments are taken about the
#: previous update's mean gradient. Below it, raw float32 moments lose at most
#: about ``k * eps * (1 + GSNR)`` of the variance (under 1 % at GSNR 1e3) and
#: the round-off guard only treats GSNR above ``1 / (4 k eps)`` (> 3e4) as a
#: tie, so the shift would cost one slot per parameter and a pass for nothing.
SHIFTED_MOMENTS_MIN_SAMPLES = 64

#: Value of the request counter while a request for statistics is pending.
REQUESTED = 1


def _replica_local_counter(name):
    """An int64 scalar each replica reads and writes on its own (an eager write
    from outside the replicas sets every copy; a read there gives the first)."""
    return tf.Variable(
        0,
        dtype=tf.int64,
        trainable=False,
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        name=name,
    )


class GradientStatisticsMixin:
    """Records the step's per-variable gradient statistics from the all-reduced moments."""

    @property
    def num_gradient_samples(self):
        """k = replicas in sync x gradient accumulation steps."""
        return keras_seam.distribution_strategy(self).num_replicas_in_sync * (self.gradient_accumulation_steps or 1)

    @property
    def records_gradient_statistics(self):
        """Whether this optimizer can record :meth:`gradient_statistics`: on every
        update (``record_gradient_statistics=True``), or, for the VR optimizers,
        on the updates asked for with :meth:`request_gradient_statistics`."""
        return bool(self._records_statistics())

    def _records_statistics(self):
        """Whether the step's all-reduce carries both moments (the VR optimizers always need them)."""
        return self.record_gradient_statistics

    def _shifts_moments(self):
        """Whether both moments are taken about the previous update's mean (large ``k``)."""
        return self._records_statistics() and self.num_gradient_samples >= SHIFTED_MOMENTS_MIN_SAMPLES

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
        """Creates the ``(variables, statistics)`` table when recording, and the
        moment shifts (one per variable, identical on every replica) at large ``k``."""
        self._moment_shifts = (
            [self._add_local_variable(v, "moment_shift", aggregation="mean") for v in variables]
            if self._shifts_moments() else None
        )
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
            # Bookkeeping of *when* the table was written, not training state:
            # plain tf.Variables, outside `optimizer.variables` and checkpoints
            # (build runs without automatic dependency tracking).
            self._statistics_request = _replica_local_counter("gradient_statistics_request")
            self._statistics_step = _replica_local_counter("gradient_statistics_step")
        keras_seam.track_variable(self, self._gradient_statistics)

    def _moment_shift(self, variable):
        """The shift ``c`` of ``variable``'s moments (a tensor), or ``None`` without shifts."""
        if self._moment_shifts is None:
            return None
        return tf.convert_to_tensor(self._moment_shifts[keras_seam.variable_index(self, variable)].value)

    def _local_moments(self, grads, trainable_variables):
        """This replica's ``[h, h**2]`` (float32 squares), or ``[d, d**2]`` with
        ``d = h - c / R`` when shifting, for the step's one all-reduce."""
        if self._moment_shifts is None:
            return [grads, [tf.square(tf.cast(g, tf.float32)) for g in grads]]
        num_replicas = keras_seam.distribution_strategy(self).num_replicas_in_sync
        if num_replicas == 1:
            self._shift_to_first_sample(grads, trainable_variables)
        moments = [gsnr.shifted_local_moments(g, self._moment_shift(v), num_replicas)
                   for g, v in zip(grads, trainable_variables)]
        return [[d for d, _ in moments], [d2 for _, d2 in moments]]

    def _shift_to_first_sample(self, grads, trainable_variables):
        """On one replica, before any applied update: shift by the cycle's first micro-batch.

        There is no previous mean yet, and raw float32 moments cannot tell a
        GSNR above about ``1 / (4 k eps)`` from a tie (1e3 at ``k = 2048``);
        the first micro-batch's gradient is a shift every sample shares (one
        replica), so the first update is resolved like every later one, and
        identical samples give ``s2 = 0`` exactly. Set at the first micro-step
        of each accumulation cycle until an update is applied (a skipped cycle
        leaves no trace). Several replicas would each see another first
        micro-batch, so they keep ``c = 0`` for the first update.
        """
        micro_step = keras_seam.micro_step_counter(self)
        first = tf.logical_and(tf.equal(self.applied_updates, 0),
                               tf.equal(micro_step % self.gradient_accumulation_steps, 0))

        def assign():
            for g, variable in zip(grads, trainable_variables):
                shift = self._moment_shifts[keras_seam.variable_index(self, variable)]
                shift.assign(tf.cast(g, shift.dtype))
            return tf.constant(True)

        tf.cond(first, assign, lambda: tf.constant(False))

    def _remember_mean(self, variable, mean):
        """After an applied update: the next update's moments are taken about ``mean``."""
        if self._moment_shifts is not None:
            shift = self._moment_shifts[keras_seam.variable_index(self, variable)]
            shift.assign(tf.cast(mean, shift.dtype))

    def _sample_moments(self, statistics, trainable_variables):
        """``(index, mean, variance)`` per variable of the step's k gradient samples,
        from the all-reduced ``[sums of means, sums of mean squares]`` (about the shift)."""
        num_replicas = keras_seam.distribution_strategy(self).num_replicas_in_sync
        for sum_of_means, sum_of_squares, variable in zip(*statistics, trainable_variables):
            shifted_mean, second_moment = gsnr.moments_from_replica_sums(sum_of_means, sum_of_squares, num_replicas)
            variance = gsnr.sample_variance(shifted_mean, second_moment, self.num_gradient_samples)
            mean = gsnr.unshift(shifted_mean, self._moment_shift(variable))
            yield keras_seam.variable_index(self, variable), mean, variance

    def _records_every_update(self):
        """Whether the statistics are recorded on every update (else only when requested)."""
        return bool(self.record_gradient_statistics)

    def _statistics_requested(self):
        """A boolean tensor: record this update's statistics (a request is pending)."""
        return tf.equal(self._statistics_request, REQUESTED)

    def _store_statistics(self, rows):
        """Writes the per-variable rows and the number of the update they belong to,
        and clears a pending request (in the replica's own copies)."""
        self._gradient_statistics.assign(tf.stack(rows))
        self._statistics_step.assign(tf.cast(tf.convert_to_tensor(self.iterations), tf.int64) + 1)
        self._statistics_request.assign(0)

    def _record_gradient_statistics(self, statistics, trainable_variables):
        """Stores, per variable, sum gbar**2, sum s2 and the mean raw GSNR of this step.

        Returns the step's mean gradients (``statistics[0]`` itself unless the
        moments were shifted), and moves the shifts to them.
        """
        rows = self._empty_statistic_rows()
        means = list(statistics[0])
        for position, (index, mean, variance) in enumerate(self._sample_moments(statistics, trainable_variables)):
            signal = tf.square(mean)
            _, mean_gsnr = gsnr.raw_gsnr(signal, variance)
            rows[index] = tf.stack([tf.reduce_sum(signal), tf.reduce_sum(variance), mean_gsnr])
            if self._moment_shifts is not None:
                variable = trainable_variables[position]
                self._remember_mean(variable, mean)
                means[position] = tf.cast(mean, variable.dtype)
        self._store_statistics(rows)
        return means

    def _check_records_statistics(self):
        if not self._records_statistics():
            raise ValueError(
                f"{type(self).__name__} records no gradient statistics: create it with "
                "record_gradient_statistics=True (or use a VR optimizer)."
            )

    def request_gradient_statistics(self):
        """Asks for the statistics of the next applied update (call eagerly).

        An optimizer created with ``record_gradient_statistics=True`` records
        every update and needs no request. The VR optimizers compute the
        GSNR on every update anyway, but the monitoring statistics (five
        reductions per variable) only on the updates that follow a request:
        :class:`~tf_largebatch.callbacks.GSNRMonitor` requests before each
        reading. :attr:`gradient_statistics_step` says which update the
        recorded statistics belong to.
        """
        self._check_records_statistics()
        if not self.built:
            raise ValueError(
                f"Build {type(self).__name__} (e.g. its first step, or `optimizer.build(variables)`) before "
                "requesting gradient statistics."
            )
        if not self._records_every_update():
            self._statistics_request.assign(REQUESTED)

    @property
    def gradient_statistics_step(self):
        """The optimizer update (``iterations`` after it, from 1) whose statistics
        :meth:`gradient_statistics` returns; 0 before any was recorded."""
        if not self._records_statistics() or not self.built:
            return 0
        return int(self._statistics_step.numpy())

    def gradient_statistics(self):
        """The last recorded update's per-variable gradient statistics, by variable path.

        Recorded on every update with ``record_gradient_statistics=True``, and
        by the VR optimizers otherwise on the updates after
        :meth:`request_gradient_statistics` (:attr:`gradient_statistics_step`
        says which): ``{path: {"mean_square": sum gbar**2, "variance":
        sum s2, "gsnr_mean": mean raw GSNR over the elements with finite GSNR}}``
        (sums over the variable's elements; ``gbar`` and ``s2`` are the mean and
        variance of the step's k gradient samples, see
        :mod:`~tf_largebatch.optimizers.gsnr`); the VR optimizers add
        ``fraction_at_lower``/``fraction_at_upper`` (elements clipped at
        ``gamma``/the upper bound). Read eagerly, e.g. by
        :class:`tf_largebatch.callbacks.GSNRMonitor`.
        """
        self._check_records_statistics()
        if not self.built:
            raise ValueError(f"{type(self).__name__} has no statistics before its first step.")
        if not self._records_every_update() and self.gradient_statistics_step == 0:
            raise ValueError(
                f"{type(self).__name__} was created with record_gradient_statistics=False and has recorded no "
                "statistics yet: they are recorded on the updates after request_gradient_statistics() (which "
                "GSNRMonitor calls), or on every update with record_gradient_statistics=True."
            )
        values = self._gradient_statistics.numpy()
        return {
            variable.path: dict(zip(self._statistic_names(), map(float, row)))
            for variable, row in zip(keras_seam.built_variables(self), values)
        }
