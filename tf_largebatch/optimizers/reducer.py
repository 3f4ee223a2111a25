"""The replica reducer: accumulation, the one all-reduce per update, the non-finite policy.

:class:`ReplicaReducer` is the replica-context half of every optimizer step of
the package. Per micro-batch it adds each replica's local statistics (the
gradient ``h``, and ``h**2`` when a
:class:`~tf_largebatch.optimizers.moments.MomentsRecorder` asks for it) to
replica-local accumulators; on the update micro-step it all-reduces their means
over the ``gradient_accumulation_steps`` micro-batches in **one** collective,
applies the non-finite policy (skip or raise) before anything is updated, and
hands the reduced statistics to the optimizer's update. It owns the state of
that job: the accumulators and the ``skipped_updates`` counter, from which
``applied_updates`` (what every bias correction counts) follows.
"""

import tensorflow as tf

from tf_largebatch.optimizers import keras_seam, rules
from tf_largebatch.optimizers.replicas import all_reduce_sum, cond_with_collectives
from tf_largebatch.optimizers.slots import add_local_variable, variable_path

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


def all_finite_by_squares(values):
    """``(finite, sums)``: :func:`all_finite` of ``values``, and each tensor's sum of squares.

    A finite sum of squares (:func:`~tf_largebatch.optimizers.rules.sum_of_squares`,
    one read) means every element is finite; only when some sum is not finite
    (a NaN or Inf, or squares beyond float32's range) does the exact check
    (:func:`all_finite`) run, in a ``tf.cond``. The sums are the plain sums of
    squares a norm of the same tensor starts from, so an update that needs
    ``||g||`` reads ``g`` once less (:meth:`ReplicaReducer.known_sum_of_squares`).
    """
    sums = [rules.sum_of_squares(value) for value in values]
    squares_finite = tf.reduce_all([tf.math.is_finite(total) for total in sums])
    finite = tf.cond(squares_finite, lambda: tf.constant(True), lambda: all_finite(values))
    return finite, sums


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


def _all_reduce_sum_by_dtype(values):
    """:func:`all_reduce_sum` of ``values``, one collective per dtype among them (in order).

    TensorFlow's collectives pack the tensors of one call into one buffer, which
    needs one dtype: the default (float32 statistics) is one collective; a
    statistic reduced in bfloat16 travels in a second one.
    """
    dtypes = list(dict.fromkeys(value.dtype for value in values))
    if len(dtypes) <= 1:
        return all_reduce_sum(values)
    reduced = [None] * len(values)
    for dtype in dtypes:
        positions = [i for i, value in enumerate(values) if value.dtype == dtype]
        for position, value in zip(positions, all_reduce_sum([values[i] for i in positions])):
            reduced[position] = value
    return reduced


class ReplicaReducer:
    """Accumulates local statistics, all-reduces them once per update, skips non-finite updates.

    State (created by :meth:`build`, once):

    * ``skipped_counter``: int64 scalar, updates skipped for a non-finite
      all-reduced gradient (saved as ``_skipped_updates`` on the optimizer);
    * ``accumulators[statistic][variable]``: replica-local sums over the
      micro-batches of the update in progress (only with gradient
      accumulation; ``local_statistic_<i>`` variables).

    Args:
        nonfinite_gradients: ``"skip"`` or ``"raise"`` (see
            :class:`~tf_largebatch.optimizers.base.LargeBatchOptimizer`).
    """

    def __init__(self, nonfinite_gradients):
        self.nonfinite_gradients = check_nonfinite_policy(nonfinite_gradients)
        #: ``{statistic index: dtype}``: statistics all-reduced in another dtype (cast back after).
        self.reduce_dtypes = {}
        # Trace-time cache: reduced gradient (by tensor reference) -> its plain sum of squares.
        self._sums_of_squares = {}
        self.skipped_counter = None
        self.accumulators = []
        self.accumulation_steps = None
        self._optimizer = None

    def build(self, optimizer, variables, *, accumulation_steps, num_statistics):
        """Creates the state on ``optimizer`` (which tracks and saves it).

        Args:
            optimizer: the Keras optimizer this reducer belongs to.
            variables: its trainable variables, in build order.
            accumulation_steps: ``None`` or the micro-batches per update.
            num_statistics: local statistics per variable (1: ``h``; 2: ``h``, ``h**2``).
        """
        self._optimizer = optimizer
        self.accumulation_steps = accumulation_steps
        self.skipped_counter = optimizer.add_variable(
            shape=(), initializer="zeros", dtype="int64", aggregation="only_first_replica", name="skipped_updates"
        )
        if accumulation_steps:
            self.accumulators = [[add_local_variable(optimizer, v, f"local_statistic_{index}") for v in variables]
                                 for index in range(num_statistics)]

    def checkpoint_dependencies(self):
        """``{name: variable}`` saved by name on the optimizer (the names before components existed)."""
        return {"_skipped_updates": self.skipped_counter}

    def known_sum_of_squares(self, gradient):
        """The plain sum of squares of ``gradient`` if this step's finiteness check computed it, else ``None``.

        Found by tensor identity: ``gradient`` must be the all-reduced tensor
        itself (not clipped, transformed or cast). Valid within the trace of
        the step that reduced it, which is where updates ask.
        """
        return self._sums_of_squares.get(gradient.ref()) if tf.is_tensor(gradient) else None

    @property
    def skipped_updates(self):
        """Updates skipped so far (a Python int; 0 before :meth:`build`)."""
        return 0 if self.skipped_counter is None else int(self.skipped_counter.numpy())

    def applied_updates(self, iterations):
        """``iterations - skipped updates``, an int64 tensor (``iterations`` before :meth:`build`)."""
        iterations = tf.cast(tf.convert_to_tensor(iterations), tf.int64)
        if self.skipped_counter is None:
            return iterations
        return iterations - tf.convert_to_tensor(self.skipped_counter)

    def step(self, local_statistics, variables, apply_update):
        """One micro-step in replica context: accumulate, and on the update micro-step reduce.

        Args:
            local_statistics: ``[[value per variable] per statistic]``, this
                replica's (e.g. ``[grads]`` or ``[d, d**2]``): the first
                statistics of those built (``[grads]`` alone on a reducer built
                for two accumulates and reduces the gradient only).
            variables: the variables, parallel to each inner list.
            apply_update: ``fn(statistics)`` with the all-reduced statistics
                (same nesting), called when they are finite (``"skip"``) or
                after asserting it (``"raise"``).
        """
        steps = self.accumulation_steps
        if not steps:
            self._reduce(local_statistics, variables, apply_update)
            return
        indices = [keras_seam.variable_index(self._optimizer, v) for v in variables]
        # An update may carry fewer statistics than were built (the VR optimizers'
        # updates between GSNR refreshes carry the gradient alone).
        accumulators = [[accumulator[i] for i in indices]
                        for accumulator in self.accumulators[:len(local_statistics)]]
        for values, slots in zip(local_statistics, accumulators):
            for value, slot in zip(values, slots):
                slot.assign_add(tf.cast(value, slot.dtype))

        def update():
            means = [[slot.value / steps for slot in slots] for slots in accumulators]
            self._reduce(means, variables, apply_update)
            for slots in accumulators:
                for slot in slots:
                    slot.assign(tf.zeros_like(slot.value))

        micro_step = keras_seam.micro_step_counter(self._optimizer)
        cond_with_collectives(tf.equal((micro_step + 1) % steps, 0), update)

    def _reduce(self, local_statistics, variables, apply_update):
        """All-reduce (SUM) every statistic in one collective, check it, update."""
        count = len(local_statistics[0])
        payload = [tf.cast(value, self.reduce_dtypes[index]) if index in self.reduce_dtypes else value
                   for index, values in enumerate(local_statistics) for value in values]
        reduced = _all_reduce_sum_by_dtype(payload)
        statistics = [reduced[i * count:(i + 1) * count] for i in range(len(local_statistics))]
        for index in self.reduce_dtypes:  # back to the statistic's own dtype
            statistics[index] = [tf.cast(value, local.dtype)
                                 for value, local in zip(statistics[index], local_statistics[index])]
        if self.nonfinite_gradients == "raise":
            apply_update([[assert_finite(value, variable) for value, variable in zip(values, variables)]
                          for values in statistics])
            return
        # With both moments, the squares' sums alone decide: the square of a NaN or
        # Inf is not finite, and squares overflow before the values or their sums do.
        # With the gradient alone, its sums of squares decide and are kept for the norms.
        if len(statistics) == 1:
            finite, sums = all_finite_by_squares(statistics[0])
            self._sums_of_squares = {value.ref(): total for value, total in zip(statistics[0], sums)}
        else:
            finite = all_finite(statistics[-1])
        cond_with_collectives(finite, apply_update, args=(statistics,),
                              false_fn=lambda: self.skipped_counter.assign_add(1))
