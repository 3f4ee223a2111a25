"""Gradient accumulation and the non-finite policy of the package's optimizers.

:class:`AccumulationMixin` is the replica-context half of
:class:`~tf_largebatch.optimizers.base.LargeBatchOptimizer`'s step: it averages
each replica's local statistics over ``gradient_accumulation_steps``
micro-batches in replica-local variables, all-reduces them in one collective on
the update micro-step, and applies the non-finite policy before anything is
updated. It also keeps the two counters of that policy, ``skipped_updates`` and
``applied_updates``.
"""

import tensorflow as tf

from tf_largebatch.optimizers import keras_seam, rules
from tf_largebatch.optimizers.replicas import all_reduce_sum, cond_with_collectives
from tf_largebatch.optimizers.slots import densify, variable_path

#: What to do when the all-reduced gradient of a step is not finite.
NONFINITE_POLICIES = ("skip", "raise")


def check_nonfinite_policy(policy):
    """Checks ``nonfinite_gradients`` is one of :data:`NONFINITE_POLICIES`."""
    if isinstance(policy, str) and policy in NONFINITE_POLICIES:
        return policy
    raise ValueError(
        f"`nonfinite_gradients` must be one of {NONFINITE_POLICIES}. Received: nonfinite_gradients={policy!r}"
    )


def all_finite(values):
    """A boolean scalar: every element of every tensor in ``values`` is finite."""
    return tf.reduce_all([tf.math.is_finite(tf.reduce_sum(value)) for value in values])


def assert_finite(value, variable):
    """``value``, failing the step with the variable's path if it holds a NaN or Inf."""
    return tf.debugging.assert_all_finite(
        value, f"Non-finite gradient for variable '{variable_path(variable)}' (nonfinite_gradients='raise')."
    )


def without_empty_variables(grads, variables):
    """``(grads, variables)`` without the 0-size variables, which no update can change.

    Skipping them here keeps every per-variable rule (medians, norms, GSNR
    means) away from empty tensors, and Keras's ``add`` (which turns a
    ``(0, n)`` add into a ``BiasAdd``) away from their accumulators.
    """
    kept = [(g, v) for g, v in zip(grads, variables) if v.shape.num_elements() != 0]
    return [g for g, _ in kept], [v for _, v in kept]


class AccumulationMixin:
    """Micro-batch accumulation, the one all-reduce per update, and the non-finite policy."""

    def _build_accumulation(self, variables, steps):
        """The ``skipped_updates`` counter and, with ``steps``, one replica-local
        accumulator per local statistic and variable."""
        self._skipped_updates = self.add_variable(
            shape=(), initializer="zeros", dtype="int64", aggregation="only_first_replica", name="skipped_updates"
        )
        self._local_accumulators = []
        if steps:
            for index in range(self._num_local_statistics()):
                self._local_accumulators.append(
                    [self._add_local_variable(v, f"local_statistic_{index}") for v in variables]
                )

    @property
    def skipped_updates(self):
        """Updates skipped because the all-reduced gradient was not finite (a Python int)."""
        return int(self._skipped_updates.numpy()) if self.built else 0

    @property
    def applied_updates(self):
        """Optimizer updates actually applied so far, an int64 tensor.

        ``iterations`` (optimizer updates, skipped ones included) minus the
        updates skipped for a non-finite gradient. Inside ``update_step`` it does
        not count the update in progress, so ``applied_updates + 1`` is the step
        ``t`` of a bias correction (``1 - beta**t``): a skipped update leaves no
        trace in any moment or bias correction.
        """
        iterations = tf.cast(tf.convert_to_tensor(self.iterations), tf.int64)
        if not self.built:
            return iterations
        return iterations - tf.convert_to_tensor(self._skipped_updates)

    def _apply_replica_gradients(self, grads, trainable_variables):
        grads, trainable_variables = without_empty_variables([densify(g) for g in grads], trainable_variables)
        if not trainable_variables:
            return
        steps = self.gradient_accumulation_steps
        if not steps:
            self._reduce_and_update(self._local_statistics(grads, trainable_variables), trainable_variables)
            return
        statistics = self._local_statistics(grads, trainable_variables)
        indices = [keras_seam.variable_index(self, v) for v in trainable_variables]
        accumulators = [[accumulator[i] for i in indices] for accumulator in self._local_accumulators]
        for values, slots in zip(statistics, accumulators):
            for value, slot in zip(values, slots):
                slot.assign_add(tf.cast(value, slot.dtype))

        def update():
            means = [[slot.value / steps for slot in slots] for slots in accumulators]
            self._reduce_and_update(means, trainable_variables)
            for slots in accumulators:
                for slot in slots:
                    slot.assign(tf.zeros_like(slot.value))

        micro_step = keras_seam.micro_step_counter(self)
        cond_with_collectives(tf.equal((micro_step + 1) % steps, 0), update)

    def _update_ema(self):
        """Keras's ``use_ema`` average, moved on *applied* updates only.

        Keras moves the average on every micro-step and starts it (a copy of the
        weights) at ``iterations == 0``; here it moves once per applied update and
        starts at the first applied one, so neither the accumulation layout nor a
        skipped update leaves a trace in it. ``ema_overwrite_frequency`` counts
        applied updates too.
        """
        if not self.use_ema:
            return
        variables = keras_seam.built_variables(self)
        applied_before = self.applied_updates
        for variable, average in zip(variables, keras_seam.moving_averages(self)):
            if average is None:
                continue
            decay = tf.cast(tf.not_equal(applied_before, 0), average.dtype) * self.ema_momentum
            value = tf.cast(tf.convert_to_tensor(variable), average.dtype)
            average.assign(rules.moving_average(average.value, value, decay))
        if self.ema_overwrite_frequency:
            # Keras's plain `tf.cond` here wraps a merge call (the overwrite is a
            # `distribution.extended.update`), which MirroredStrategy rejects in a
            # replica context, even for keras.optimizers.SGD.
            cond_with_collectives(
                tf.equal((applied_before + 1) % self.ema_overwrite_frequency, 0),
                lambda: keras_seam.overwrite_with_moving_average(self, variables),
            )

    def _num_local_statistics(self):
        return 2 if self._records_statistics() else 1

    def _local_statistics(self, grads, trainable_variables):
        """Per-replica statistics averaged over micro-batches, then all-reduced in one collective."""
        if self._records_statistics():
            return self._local_moments(grads, trainable_variables)
        return [grads]

    def _reduce_and_update(self, local_statistics, trainable_variables):
        """All-reduce (SUM) every statistic in one collective, check it, update."""
        count = len(local_statistics[0])
        reduced = all_reduce_sum([value for values in local_statistics for value in values])
        statistics = [reduced[i * count:(i + 1) * count] for i in range(len(local_statistics))]

        def update(statistics):
            self._update_from_reduced_statistics(statistics, trainable_variables)
            self._update_ema()

        if self.nonfinite_gradients == "raise":
            update([[assert_finite(value, variable) for value, variable in zip(values, trainable_variables)]
                    for values in statistics])
        else:
            # With both moments, the squares' sums alone decide: the square of a NaN or
            # Inf is not finite, and squares overflow before the values or their sums do.
            finite = all_finite(statistics[-1])
            cond_with_collectives(finite, update, args=(statistics,),
                                  false_fn=lambda: self._skipped_updates.assign_add(1))
