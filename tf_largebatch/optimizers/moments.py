"""The moments recorder: per-sample first and second gradient moments, computed once per update.

Every consumer of the gradient statistics reads them here, from the one
all-reduce of the update (:class:`~tf_largebatch.optimizers.reducer.ReplicaReducer`
carries both moments): the VR step (the GSNR of VRGD eq. 8,
:mod:`~tf_largebatch.optimizers.vr`), the monitoring statistics
(:class:`tf_largebatch.callbacks.GSNRMonitor`, ``B_simple``), and any
optimizer that needs the gradient-noise estimates (AdaScale's gain ratio).
None of them may add a second collective.

The moment math is :func:`sample_moments` (built on the primitives of
:mod:`~tf_largebatch.optimizers.gsnr`); :class:`MomentsRecorder` owns the
state around it: what each replica contributes to the all-reduce, the
large-``k`` shift, and the table of the last recorded update.

**The estimators.** An update sees ``k`` gradient samples ``g_i`` (``k`` =
replicas in sync x ``gradient_accumulation_steps``), each the mean gradient of
``B / k`` examples, with mean ``gbar = (1/k) sum_i g_i``. Per element,
:func:`sample_moments` returns ``gbar`` and the (biased, ``1/k``) sample
variance ``s2 = (1/k) sum_i (g_i - gbar)**2``; the table records per variable
``mean_square = sum gbar**2`` and ``variance = sum s2`` over its elements.
With ``sigma**2 = E|g_i - grad F|**2`` (the variance of one sample, summed
over elements) and ``E|gbar|**2 = |grad F|**2 + sigma**2 / k``, the unbiased
estimates (:func:`unbiased_noise_estimates`) are::

    sigma**2    ~  k / (k - 1) * sum s2           = (1/(k-1)) sum_i |g_i - gbar|**2
    |grad F|**2 ~  sum gbar**2 - sigma**2 / k

(the second can be negative when the signal is small: it is unbiased, not
clamped). McCandlish et al.'s ``B_simple = tr(Sigma) / |G|**2`` uses
``tr(Sigma) = (B / k) sigma**2``; AdaScale's gain ratio at scale ``S = k`` is
``(sigma**2 + |grad F|**2) / (sigma**2 / S + |grad F|**2)``.

**The large-k shift.** From ``k >= SHIFTED_MOMENTS_MIN_SAMPLES`` on, each
replica contributes the moments of ``g - c`` with ``c`` the mean gradient of
the previous applied update (identical on every replica), so that float32
moments keep the variance at large ``k``
(:func:`~tf_largebatch.optimizers.gsnr.shifted_local_moments`; the module
docstring of :mod:`~tf_largebatch.optimizers.gsnr` gives the error analysis).
The first update has no previous mean: on one replica it is shifted by the
cycle's first micro-batch; with several replicas it is raw, and a variance
under round-off then counts as the round-off tolerance (a finite GSNR at the
resolution limit, :meth:`MomentsRecorder.at_resolution_limit`), never as a tie.

References:
    Jiang et al., "Accelerating Large Batch Training via Gradient Signal to
        Noise Ratio (GSNR)", eq. (7)-(8).
    McCandlish et al., "An Empirical Model of Large-Batch Training", 2018,
        Appendix A (unbiased |G|^2 and tr(Sigma) from two batch sizes).
    Johnson, Agrawal, Gu, Guestrin, "AdaScale SGD: A User-Friendly Algorithm
        for Distributed Training", ICML 2020 (gain ratio).
    Chan, Golub and LeVeque, "Algorithms for Computing the Sample Variance",
        1983 (shifted data).
"""

import collections

import keras
import tensorflow as tf

from tf_largebatch.optimizers import gsnr, keras_seam
from tf_largebatch.optimizers.slots import add_local_variable, tf_variable


#: From this many gradient samples per update on, moments are taken about the
#: previous update's mean gradient. Below it, raw float32 moments lose at most
#: about ``k * eps * (1 + GSNR)`` of the variance (under 1 % at GSNR 1e3) and
#: the round-off guard only treats GSNR above ``1 / (4 k eps)`` (> 3e4) as a
#: tie, so the shift would cost one slot per parameter and a pass for nothing.
SHIFTED_MOMENTS_MIN_SAMPLES = 64

#: Value of the request counter while a request for statistics is pending.
REQUESTED = 1

#: Statistics every recorder's table holds, per variable, in this order (the VR
#: optimizers add the rest of :data:`~tf_largebatch.optimizers.gsnr.STATISTIC_NAMES`).
MONITORING_STATISTICS = gsnr.STATISTIC_NAMES[:3]

#: One variable's moments of an update's k samples (float32 tensors, element-wise):
#: ``mean`` = gbar, ``variance`` = s2 (1/k, round-off ties counted as 0), ``signal`` = gbar**2.
SampleMoments = collections.namedtuple("SampleMoments", ["mean", "variance", "signal"])


def sample_moments(sum_of_means, sum_of_mean_squares, shift, *, num_replicas, num_samples,
                   at_resolution_limit=False, second_moment_error=0.0):
    """One variable's :class:`SampleMoments` from its all-reduced sums: the one place they are computed.

    Args:
        sum_of_means: the all-reduced sum over replicas of each replica's mean
            (over micro-batches) of ``d = h - c / R``.
        sum_of_mean_squares: the same for ``d**2``.
        shift: ``c`` (a tensor in units of ``g``), or ``None`` for raw moments.
        num_replicas: ``R``.
        num_samples: ``k`` = ``R`` x accumulation steps.
        at_resolution_limit: ``False``, ``True`` or a boolean scalar tensor
            (:meth:`MomentsRecorder.at_resolution_limit`): the moments are raw
            where ``k`` calls for a shift, so a variance under round-off counts
            as the round-off tolerance, not 0
            (:func:`~tf_largebatch.optimizers.gsnr.variance_from_square`).
        second_moment_error: the relative error of the reduced second moment
            beyond float32 round-off (``second_moment_dtype="bfloat16"``;
            :func:`~tf_largebatch.optimizers.gsnr.second_moment_reduction_error`).

    Pure and free of variables, so the VR step compiles it with the GSNR chain
    into one XLA cluster.
    """
    shifted_mean, second_moment = gsnr.moments_from_replica_sums(sum_of_means, sum_of_mean_squares, num_replicas)
    square_of_shifted_mean = tf.square(shifted_mean)
    variance = gsnr.variance_from_square(square_of_shifted_mean, second_moment, num_samples, at_resolution_limit,
                                         second_moment_error)
    mean = gsnr.unshift(shifted_mean, shift)
    signal = square_of_shifted_mean if shift is None else tf.square(mean)
    return SampleMoments(mean, variance, signal)


def unbiased_noise_estimates(mean_square, variance, num_samples):
    """``(sigma**2, |grad F|**2)``, unbiased, from ``sum gbar**2`` and ``sum s2`` (module docstring).

    Args:
        mean_square: ``sum gbar**2`` (over any set of elements: a variable, all).
        variance: ``sum s2`` over the same elements (``s2`` with ``1/k``).
        num_samples: ``k >= 2``.

    Works on Python floats and on tensors alike.
    """
    if num_samples < 2:
        raise ValueError(f"Unbiased estimates need k >= 2 gradient samples. Received: num_samples={num_samples!r}")
    sigma_squared = variance * (num_samples / (num_samples - 1.0))
    return sigma_squared, mean_square - sigma_squared / num_samples


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


class MomentsRecorder:
    """What each replica contributes to the update's all-reduce, and the per-variable record of its moments.

    State (created by :meth:`build`, once; saved by the optimizer that builds it):

    * ``shifts``: one replica-local (``"mean"``) variable per model variable,
      the previous applied update's mean gradient ``c``, from
      ``k >= SHIFTED_MOMENTS_MIN_SAMPLES`` on (else ``None``);
    * ``table``: float32 ``(variables, statistic_names)``, the statistics of
      the last recorded update (saved as ``_gradient_statistics``);
    * ``recorded_step`` / ``request`` counters: which update the table belongs
      to, and whether the next update is asked to record.

    The API its consumers use, all from the one all-reduce:

    * replica context: :meth:`local_moments` (this replica's ``[d, d**2]``);
    * in the update: :func:`sample_moments` of the reduced sums with
      :meth:`shift`, then :meth:`remember_mean`; :meth:`record_due` and
      :meth:`store` for the table (or :meth:`observe`, which does all of it);
      :meth:`noise_estimates` right after :meth:`store` (in the same update);
    * eagerly: :meth:`request`, :attr:`recorded_step`, :meth:`read`,
      :meth:`noise_estimates`.

    Args:
        statistic_names: the table's columns; the first three are
            :data:`MONITORING_STATISTICS`.
        every_update: record the table on every update (else only on the
            updates after :meth:`request`; :meth:`observe` records the sums
            on every update regardless, the rest of the row on request).
    """

    def __init__(self, *, statistic_names=MONITORING_STATISTICS, every_update=True):
        if tuple(statistic_names[:3]) != MONITORING_STATISTICS:
            raise ValueError(f"statistic_names must start with {MONITORING_STATISTICS}. Received: {statistic_names}")
        self.statistic_names = tuple(statistic_names)
        self.every_update = bool(every_update)
        self.num_replicas = None
        self.num_samples = None
        self.shifts = None
        self.table = None
        self._request = None
        self._step = None
        self._optimizer = None

    # ------------------------------------------------------------------ build
    def build(self, optimizer, variables, *, num_replicas, accumulation_steps):
        """Creates the state on ``optimizer`` (which tracks and saves it); the caller
        checks ``k >= 2`` first (:func:`check_enough_samples`)."""
        self._optimizer = optimizer
        self.num_replicas = num_replicas
        self.num_samples = num_replicas * (accumulation_steps or 1)
        if self.num_samples >= SHIFTED_MOMENTS_MIN_SAMPLES:
            self.shifts = [add_local_variable(optimizer, v, "moment_shift", aggregation="mean") for v in variables]
        strategy = keras_seam.distribution_strategy(optimizer)
        with strategy.extended.colocate_vars_with(tf_variable(keras_seam.micro_step_counter(optimizer))):
            self.table = keras.Variable(
                initializer="zeros", shape=(len(variables), len(self.statistic_names)), dtype="float32",
                trainable=False, aggregation="mean", synchronization="on_read", name="gradient_statistics",
            )
            self._request = _replica_local_counter("gradient_statistics_request")
            self._step = _replica_local_counter("gradient_statistics_step")
        keras_seam.track_variable(optimizer, self.table)

    def checkpoint_dependencies(self):
        """``{name: variable}`` saved by name on the optimizer (the names before components existed)."""
        return {"_gradient_statistics": self.table, "_statistics_request": self._request,
                "_statistics_step": self._step}

    # ------------------------------------------------------- replica context
    def shift(self, variable):
        """The shift ``c`` of ``variable``'s moments (a tensor), or ``None`` without shifts."""
        if self.shifts is None:
            return None
        return tf.convert_to_tensor(self.shifts[keras_seam.variable_index(self._optimizer, variable)].value)

    def local_moments(self, grads, variables):
        """This replica's ``[h, h**2]`` (float32 squares), or ``[d, d**2]`` with
        ``d = h - c / R`` when shifting, for the update's one all-reduce."""
        if self.shifts is None:
            return [grads, [tf.square(tf.cast(g, tf.float32)) for g in grads]]
        if self.num_replicas == 1:
            self._shift_to_first_sample(grads, variables)
        moments = [gsnr.shifted_local_moments(g, self.shift(v), self.num_replicas) for g, v in zip(grads, variables)]
        return [[d for d, _ in moments], [d2 for _, d2 in moments]]

    def _shift_to_first_sample(self, grads, variables):
        """On one replica, before any applied update: shift by the cycle's first micro-batch.

        There is no previous mean yet, and raw float32 moments cannot tell a
        GSNR above about ``1 / (4 k eps)`` from a tie (1e3 at ``k = 2048``);
        the first micro-batch's gradient is a shift every sample shares (one
        replica), so the first update is resolved like every later one, and
        identical samples give ``s2 = 0`` exactly. Set at the first micro-step
        of each accumulation cycle until an update is applied (a skipped cycle
        leaves no trace). Several replicas would each see another first
        micro-batch, so they keep ``c = 0`` for the first update
        (:meth:`at_resolution_limit`).
        """
        optimizer = self._optimizer
        micro_step = keras_seam.micro_step_counter(optimizer)
        first = tf.logical_and(tf.equal(optimizer.applied_updates, 0),
                               tf.equal(micro_step % optimizer.gradient_accumulation_steps, 0))

        def assign():
            for g, variable in zip(grads, variables):
                shift = self.shifts[keras_seam.variable_index(optimizer, variable)]
                shift.assign(tf.cast(g, shift.dtype))
            return tf.constant(True)

        tf.cond(first, assign, lambda: tf.constant(False))

    # ------------------------------------------------------------- the update
    def at_resolution_limit(self):
        """Whether this update's moments are raw although ``k`` calls for a shift.

        ``False`` without shifts (small ``k``: raw moments resolve GSNRs up to
        over 3e4) and on one replica (:meth:`_shift_to_first_sample`); with
        several replicas a boolean tensor, true before the first applied
        update (every shift is still 0). Passed to :func:`sample_moments`.
        """
        if self.shifts is None or self.num_replicas == 1:
            return False
        return tf.equal(self._optimizer.applied_updates, 0)

    def moments(self, sum_of_means, sum_of_mean_squares, variable):
        """:func:`sample_moments` of one variable's reduced sums, about its shift."""
        return sample_moments(sum_of_means, sum_of_mean_squares, self.shift(variable),
                              num_replicas=self.num_replicas, num_samples=self.num_samples,
                              at_resolution_limit=self.at_resolution_limit())

    def remember_mean(self, variable, mean):
        """After an applied update: the next update's moments are taken about ``mean``."""
        if self.shifts is not None:
            shift = self.shifts[keras_seam.variable_index(self._optimizer, variable)]
            shift.assign(tf.cast(mean, shift.dtype))

    def record_due(self):
        """``True`` (every update), or a boolean tensor: a request is pending."""
        return True if self.every_update else tf.equal(self._request, REQUESTED)

    def empty_rows(self):
        """One row of zeros per built variable (for variables the update does not see)."""
        return [tf.zeros([len(self.statistic_names)])] * self.table.shape[0]

    def store(self, rows):
        """Writes the per-variable rows and the number of the update they belong to,
        and clears a pending request (in the replica's own copies)."""
        self.table.assign(tf.stack(rows))
        self._step.assign(tf.cast(tf.convert_to_tensor(self._optimizer.iterations), tf.int64) + 1)
        self._request.assign(0)

    def observe(self, statistics, variables):
        """Records the monitoring statistics of an update and moves the shifts.

        The sums (``mean_square``, ``variance``) are recorded on every update
        (:meth:`noise_estimates` reads them); the mean-GSNR column, a division
        per element and a reduction that no update rule needs, only when
        :meth:`record_due` (every update with ``every_update=True``, else the
        updates after :meth:`request`, which ``GSNRMonitor`` makes before each
        reading). On the other updates it keeps the value of the last update
        that computed it (0 before any), so the state stays finite.

        Args:
            statistics: the all-reduced ``[sums of means, sums of mean squares]``.
            variables: parallel to each list.

        Returns:
            The update's mean gradients (``statistics[0]`` itself unless shifted).
        """
        means = list(statistics[0])
        observed = []  # (table row, moments)
        for position, (sum_of_means, sum_of_squares, variable) in enumerate(zip(*statistics, variables)):
            moments = self.moments(sum_of_means, sum_of_squares, variable)
            observed.append((keras_seam.variable_index(self._optimizer, variable), moments))
            if self.shifts is not None:
                self.remember_mean(variable, moments.mean)
                means[position] = tf.cast(moments.mean, variable.dtype)

        def mean_gsnrs():
            return tf.stack([gsnr.raw_gsnr(m.signal, m.variance)[1] for _, m in observed])

        record = self.record_due()
        if record is True:
            gsnr_means = mean_gsnrs()
        else:
            gsnr_means = tf.cond(record, mean_gsnrs, lambda: self._last_gsnr_means([index for index, _ in observed]))
        rows = self.empty_rows()
        for position, (index, moments) in enumerate(observed):
            rows[index] = tf.stack([tf.reduce_sum(moments.signal), tf.reduce_sum(moments.variance),
                                    gsnr_means[position]])
        self.store(rows)
        return means

    def _last_gsnr_means(self, indices):
        """The table's mean-GSNR column at ``indices`` (rows), as last written (this replica's copy)."""
        column = self.statistic_names.index("gsnr_mean")
        return tf.gather(tf.convert_to_tensor(self.table.value)[:, column], indices)

    def noise_estimates(self):
        """``(sigma**2, |grad F|**2)`` of the last recorded update, summed over all variables.

        Unbiased (:func:`unbiased_noise_estimates`), float32 scalar tensors read
        from the table: inside an update after :meth:`store` (no collective:
        the table is identical on every replica), or eagerly afterwards.
        """
        totals = tf.reduce_sum(tf.convert_to_tensor(self.table.value)[:, :2], axis=0)
        return unbiased_noise_estimates(totals[0], totals[1], self.num_samples)

    # ----------------------------------------------------------------- eager
    def request(self):
        """Asks for the statistics of the next applied update (eager; no-op when recording every update)."""
        if not self.every_update:
            self._request.assign(REQUESTED)

    @property
    def recorded_step(self):
        """The update (``iterations`` after it, from 1) the table belongs to; 0 before any."""
        return int(self._step.numpy())

    def read(self, variables):
        """``{variable.path: {statistic name: float}}`` of the table (eager)."""
        values = self.table.numpy()
        return {variable.path: dict(zip(self.statistic_names, map(float, row)))
                for variable, row in zip(variables, values)}


def check_enough_samples(owner, num_replicas, accumulation_steps):
    """At build: a variance needs ``k >= 2`` gradient samples per update (``ValueError`` naming ``owner``)."""
    num_samples = num_replicas * (accumulation_steps or 1)
    if num_samples < 2:
        raise ValueError(
            f"{owner} estimates the gradient variance from k >= 2 gradient samples per step, "
            f"but k = {num_replicas} replica(s) x {accumulation_steps or 1} accumulation step(s) = {num_samples}. "
            "Create the optimizer under a tf.distribute strategy with >= 2 replicas, or pass "
            "gradient_accumulation_steps >= 2 (each micro-batch is then a sample; the VRGD paper notes "
            "accumulation steps play the role of k)."
        )
