"""The base class of every tf_largebatch optimizer: all-reduce first.

Keras 3's TensorFlow optimizer clips gradients, applies weight decay and
accumulates micro-batches on *one replica's partial gradient*, and only then
all-reduces (``TFOptimizer._backend_update_step``). For large-batch optimizers
that is wrong twice over: a global gradient norm (SNGM, ``global_clipnorm``) of a
partial gradient is not the norm of the global gradient, and the GSNR needs the
per-replica gradients *and* their squares before they are summed away.

``LargeBatchOptimizer`` moves the all-reduce to the front. Inside a replica
context, per optimizer step:

1. local statistics of this replica's gradient ``h`` (by default ``[h]``; the VR
   optimizers, and any optimizer with ``record_gradient_statistics=True``, add
   ``h**2``) are accumulated over ``gradient_accumulation_steps``
   micro-batches in replica-local (sync-on-read) variables;
2. on the update micro-step, :meth:`_reduce_and_update` all-reduces them in one
   collective and hands the global mean gradient to
   :meth:`_update_with_reduced_gradients`, which clips it, applies the
   optimizer's cross-variable transform (e.g. SNGM's global normalisation), and
   runs ``update_step`` per variable in cross-replica context.

All the Keras private hooks this relies on are overridden in this one module.
They are checked against the Keras range pinned in ``setup.cfg``.
"""

import keras
import tensorflow as tf
from keras.src import backend as keras_backend
from keras.src.utils import tracking

from tf_largebatch import validation
from tf_largebatch.optimizers import gsnr
from tf_largebatch.optimizers.selection import VariableSelection

_KerasOptimizer = keras.optimizers.Optimizer

#: What to do when the all-reduced gradient of a step is not finite.
NONFINITE_POLICIES = ("skip", "raise")


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def compute_dtype(variable):
    """float32 for float16/bfloat16 variables, else the variable's own dtype.

    Optimizer state and update math run in this dtype: in bfloat16, ``0.999``
    rounds to 1 (Adam's second moment would never move) and ``0.9`` to ``0.8984``.
    """
    dtype = tf.as_dtype(variable.dtype)
    return tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype


def variable_path(variable):
    """``variable.path`` (``"encoder/dense/kernel"``), or the name of a backend variable."""
    return getattr(variable, "path", None) or variable.name


def densify(gradient):
    """Sparse (``IndexedSlices``) gradients become dense tensors.

    Trust ratios, global norms and GSNR statistics are functions of the dense
    gradient (duplicate indices summed), so the package works on dense values;
    this makes a sparse gradient give exactly the result of its dense twin.
    """
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient


class LargeBatchOptimizer(_KerasOptimizer):
    """Keras optimizer whose update sees the all-reduced, global-mean gradient.

    Subclasses implement ``build`` (slot variables) and ``update_step`` like any
    Keras optimizer; they may override :meth:`_transform_reduced_gradients` for a
    step that needs every variable's gradient at once (a global norm).

    Compared with a plain Keras optimizer, ``clipnorm``, ``global_clipnorm`` and
    ``clipvalue`` act on the global mean gradient, and gradient accumulation keeps
    its partial sums in replica-local variables that checkpoint exactly. The
    ``weight_decay`` of a subclass is the paper's own (coupled or inside the trust
    ratio) and is applied by the subclass, never by Keras's decoupled rule.

    ``nonfinite_gradients`` (every subclass takes it): ``"skip"`` (default)
    checks the all-reduced gradient once per update; if any element is NaN or
    Inf (on any replica or micro-batch), the update is skipped on every replica
    (no weight, slot or accumulator keeps anything from it), and
    ``skipped_updates`` counts it; the iteration counter still advances, so
    schedules stay aligned with the data. ``"raise"`` fails the step with the
    path of the first non-finite variable instead.

    ``record_gradient_statistics`` (every subclass takes it; default ``False``):
    also carry each replica's squared gradient in the step's one all-reduce and
    record, per variable, the mean and variance of the step's k >= 2 gradient
    samples (:meth:`gradient_statistics`, read by
    :class:`tf_largebatch.callbacks.GSNRMonitor`). The VR optimizers always do.
    """

    def __init__(self, learning_rate, *, weight_decay=None, exclude_from_weight_decay=None,
                 nonfinite_gradients="skip", record_gradient_statistics=False, **kwargs):
        validation.check_learning_rate(learning_rate)
        if nonfinite_gradients not in NONFINITE_POLICIES:
            raise ValueError(
                f"`nonfinite_gradients` must be one of {NONFINITE_POLICIES}. "
                f"Received: nonfinite_gradients={nonfinite_gradients!r}"
            )
        validation.check_number("weight_decay", weight_decay, low=0.0, allow_none=True)
        # Keras treats 0 as "no accumulation" and accepts 2.5; both are mistakes.
        validation.check_positive_int(
            "gradient_accumulation_steps", kwargs.get("gradient_accumulation_steps"), minimum=2, allow_none=True
        )
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        self._variable_selection = VariableSelection(exclude_from_weight_decay)
        self._weight_decay_exclusions = self._variable_selection.weight_decay_exclusions
        self.nonfinite_gradients = nonfinite_gradients
        self.record_gradient_statistics = validation.check_bool("record_gradient_statistics",
                                                                record_gradient_statistics)

    # ------------------------------------------------------------------ build
    @tracking.no_automatic_dependency_tracking
    def build(self, variables):
        if (tf.inside_function() and tf.distribute.has_strategy()
                and not tf.__internal__.distribute.strategy_supports_no_merge_call()):
            # The update branches in cross-replica context (cond_with_collectives);
            # TensorFlow cannot combine that with variables created inside the
            # first call of a tf.function under MirroredStrategy.
            raise ValueError(
                f"Build {type(self).__name__} before its first step under "
                f"{type(tf.distribute.get_strategy()).__name__}: call "
                "`optimizer.build(model.trainable_variables)` inside `strategy.scope()` before the training "
                "loop (model.fit does this for you)."
            )
        if self._records_statistics() and self.num_gradient_samples < 2:
            raise ValueError(
                f"{type(self).__name__} estimates the gradient variance from k >= 2 gradient samples per step, "
                f"but k = {self._distribution_strategy.num_replicas_in_sync} replica(s) x "
                f"{self.gradient_accumulation_steps or 1} accumulation step(s) = {self.num_gradient_samples}. "
                "Create the optimizer under a tf.distribute strategy with >= 2 replicas, or pass "
                "gradient_accumulation_steps >= 2 (each micro-batch is then a sample; the VRGD paper notes "
                "accumulation steps play the role of k)."
            )
        # Keras would create mirrored accumulators holding diverged per-replica
        # values (lost on save/restore); ours are sync-on-read, made below.
        steps = self.gradient_accumulation_steps
        self.gradient_accumulation_steps = None
        try:
            super().build(variables)
        finally:
            self.gradient_accumulation_steps = steps
        self._resolve_variable_selection(variables)
        self._skipped_updates = self.add_variable(
            shape=(), initializer="zeros", dtype="int64", aggregation="only_first_replica", name="skipped_updates"
        )
        if self._records_statistics():
            with self._distribution_strategy.extended.colocate_vars_with(_tf_variable(self._iterations)):
                self._gradient_statistics = keras.Variable(
                    initializer="zeros",
                    shape=(len(variables), len(self._statistic_names())),
                    dtype="float32",
                    trainable=False,
                    aggregation="mean",
                    synchronization="on_read",
                    name="gradient_statistics",
                )
            self._track_variable(self._gradient_statistics)
        self._local_accumulators = []
        if steps:
            for index in range(self._num_local_statistics()):
                self._local_accumulators.append(
                    [self._add_local_variable(v, f"local_statistic_{index}") for v in variables]
                )

    def _add_local_variable(self, reference, name, aggregation="sum"):
        """A replica-local (sync-on-read) slot shaped like ``reference``, float32 or wider.

        Each replica reads and writes its own copy without communication. With
        ``aggregation="sum"`` a checkpoint saves the sum over replicas and a
        restore gives every replica ``sum / replicas``, so sums over replicas
        (partial gradient sums) survive save/restore exactly, even onto another
        number of replicas. With ``"mean"`` it suits state that every replica
        computes identically (restored unchanged).
        """
        with self._distribution_strategy.extended.colocate_vars_with(_tf_variable(reference)):
            with keras_backend.name_scope(self.name, caller=self):
                variable = keras.Variable(
                    initializer="zeros",
                    shape=reference.shape,
                    dtype=compute_dtype(reference).name,
                    trainable=False,
                    aggregation=aggregation,
                    synchronization="on_read",
                    name=f"{reference.name}_{name}",
                )
        self._track_variable(variable)
        return variable

    def _add_slots(self, var_list, name, initializer="zeros"):
        """One optimizer variable per model variable, in :func:`compute_dtype`.

        Like Keras's ``add_optimizer_variables``, but float32 for float16/bfloat16
        variables, so low-precision weights follow the float32 trajectory up to
        the rounding of the weights themselves.
        """
        slots = []
        for variable in var_list:
            if compute_dtype(variable) == tf.as_dtype(variable.dtype):
                slots.append(self.add_variable_from_reference(variable, name=name, initializer=initializer))
                continue
            with self._distribution_strategy.extended.colocate_vars_with(_tf_variable(variable)):
                slots.append(
                    self.add_variable(
                        shape=variable.shape,
                        initializer=initializer,
                        dtype="float32",
                        name=f"{variable.path.replace('/', '_')}_{name}",
                    )
                )
        return slots

    def _slot(self, slots, variable):
        return slots[self._get_variable_index(variable)]

    # ------------------------------------------------- Keras hooks we replace
    def _clip_gradients(self, grads):
        # Keras calls this on one replica's partial gradient; clipping happens in
        # `_update_with_reduced_gradients`, on the global mean gradient.
        return grads

    def _apply_weight_decay(self, variables):
        # Weight decay is part of each subclass's update rule (coupled, or inside
        # the trust ratio as the papers define it), never Keras's decoupled one.
        return

    def _get_current_learning_rate(self):
        # Keras evaluates a schedule at the micro-step counter `_iterations`;
        # under gradient accumulation ours count real updates (`iterations`).
        if isinstance(self._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            return self._learning_rate(self.iterations)
        return super()._get_current_learning_rate()

    def _resolve_variable_selection(self, variables):
        """Per-variable decisions (weight decay? layer-wise rate?), once, at build."""
        self._decays, self._adapts = self._variable_selection.resolve(
            variables, also_decays=lambda variable: _KerasOptimizer._use_weight_decay(self, variable)
        )

    def _use_weight_decay(self, variable):
        """Weight decay applies unless excluded by path pattern or by Keras's own API
        (see :mod:`~tf_largebatch.optimizers.selection`)."""
        if self.built:
            return self._decays[self._get_variable_index(variable)]
        return self._variable_selection.decays(variable) and super()._use_weight_decay(variable)

    def _use_layer_adaptation(self, variable):
        """Whether ``variable`` gets a layer-wise rate (decided at build)."""
        return self._adapts[self._get_variable_index(variable)]

    def _backend_apply_gradients(self, grads, trainable_variables):
        grads = [densify(g) for g in grads]
        steps = self.gradient_accumulation_steps
        if steps:
            statistics = self._local_statistics(grads)
            indices = [self._get_variable_index(v) for v in trainable_variables]
            accumulators = [[acc[i] for i in indices] for acc in self._local_accumulators]
            for values, slots in zip(statistics, accumulators):
                for value, slot in zip(values, slots):
                    slot.assign_add(tf.cast(value, slot.dtype))

            def update():
                means = [[slot.value / steps for slot in slots] for slots in accumulators]
                self._reduce_and_update(means, trainable_variables)
                for slots in accumulators:
                    for slot in slots:
                        slot.assign(tf.zeros_like(slot.value))
                # The average moves on real updates only (Keras moves it on every
                # micro-step, so its EMA would depend on the accumulation layout).
                self._update_ema(trainable_variables)

            cond_with_collectives(tf.equal((self._iterations + 1) % steps, 0), update)
        else:
            self._reduce_and_update(self._local_statistics(grads), trainable_variables)
            self._update_ema(trainable_variables)

    def _update_ema(self, trainable_variables):
        # Same behaviour as BaseOptimizer._backend_apply_gradients' EMA branch.
        if not self.use_ema:
            return
        self._update_model_variables_moving_average(self._trainable_variables)
        if self.ema_overwrite_frequency:
            # Keras's plain `tf.cond` here wraps a merge call (the overwrite is a
            # `distribution.extended.update`), which MirroredStrategy rejects in a
            # replica context, even for keras.optimizers.SGD.
            cond_with_collectives(
                tf.equal((self.iterations + 1) % self.ema_overwrite_frequency, 0),
                lambda: self._overwrite_model_variables_with_average_value(self._trainable_variables),
            )

    # ------------------------------------------------- gradient statistics
    @property
    def num_gradient_samples(self):
        """k = replicas in sync x gradient accumulation steps."""
        return self._distribution_strategy.num_replicas_in_sync * (self.gradient_accumulation_steps or 1)

    def _records_statistics(self):
        return self.record_gradient_statistics

    def _statistic_names(self):
        return gsnr.STATISTIC_NAMES[:3]

    def _empty_statistic_rows(self):
        return [tf.zeros([len(self._statistic_names())])] * len(self._trainable_variables)

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
            for variable, row in zip(self._trainable_variables, values)
        }

    # ------------------------------------------------------ extension points
    def _num_local_statistics(self):
        return 2 if self._records_statistics() else 1

    def _local_statistics(self, grads):
        """Per-replica statistics averaged over micro-batches, then all-reduced in one collective."""
        if self._records_statistics():
            return [grads, [tf.square(tf.cast(g, tf.float32)) for g in grads]]
        return [grads]

    def _reduce_and_update(self, local_statistics, trainable_variables):
        """All-reduce (SUM) every statistic in one collective, check it, update."""
        count = len(local_statistics[0])
        reduced = all_reduce_sum([value for values in local_statistics for value in values])
        statistics = [reduced[i * count:(i + 1) * count] for i in range(len(local_statistics))]

        def update(statistics):
            self._update_from_reduced_statistics(statistics, trainable_variables)

        if self.nonfinite_gradients == "raise":
            update([[_assert_finite(value, variable) for value, variable in zip(values, trainable_variables)]
                    for values in statistics])
        else:
            finite = tf.reduce_all([tf.math.is_finite(tf.reduce_sum(v)) for values in statistics for v in values])
            cond_with_collectives(finite, update, args=(statistics,),
                                  false_fn=lambda: self._skipped_updates.assign_add(1))

    def _sample_moments(self, statistics, trainable_variables):
        """``(index, mean, variance)`` per variable of the step's k gradient samples,
        from the all-reduced ``[sums of means, sums of mean squares]``."""
        num_replicas = self._distribution_strategy.num_replicas_in_sync
        for sum_of_means, sum_of_squares, variable in zip(*statistics, trainable_variables):
            mean, second_moment = gsnr.moments_from_replica_sums(sum_of_means, sum_of_squares, num_replicas)
            variance = gsnr.sample_variance(mean, second_moment, self.num_gradient_samples)
            yield self._get_variable_index(variable), mean, variance

    def _update_from_reduced_statistics(self, statistics, trainable_variables):
        """Update from all-reduced statistics: the global mean gradient (and, when
        recording, its per-sample second moment, summarised per variable)."""
        if self._records_statistics():
            rows = self._empty_statistic_rows()
            for index, mean, variance in self._sample_moments(statistics, trainable_variables):
                signal = tf.square(mean)
                _, mean_gsnr, _ = gsnr.normalized_gsnr(signal, variance)
                rows[index] = tf.stack([tf.reduce_sum(signal), tf.reduce_sum(variance), mean_gsnr])
            self._gradient_statistics.assign(tf.stack(rows))
        self._update_with_reduced_gradients(statistics[0], trainable_variables)

    @property
    def skipped_updates(self):
        """Updates skipped because the all-reduced gradient was not finite."""
        return int(self._skipped_updates.numpy()) if self.built else 0

    def _transform_reduced_gradients(self, grads, trainable_variables):
        """Cross-variable step on the global mean gradient (default: none)."""
        return grads

    def _update_with_reduced_gradients(self, grads, trainable_variables):
        """Clip, transform and apply a gradient that is already the global mean."""
        grads = _KerasOptimizer._clip_gradients(self, grads)
        grads = self._transform_reduced_gradients(grads, trainable_variables)
        run_update_steps(self, grads, trainable_variables)

    # ---------------------------------------------------------------- config
    def get_config(self):
        config = super().get_config()
        config["exclude_from_weight_decay"] = list(self._weight_decay_exclusions)
        config["nonfinite_gradients"] = self.nonfinite_gradients
        config["record_gradient_statistics"] = self.record_gradient_statistics
        return config


def all_reduce_sum(values):
    """SUM over replicas in one collective; identity without a strategy."""
    context = tf.distribute.get_replica_context()
    if context is None or not tf.distribute.has_strategy() or not values:
        return list(values)
    return list(context.all_reduce(tf.distribute.ReduceOp.SUM, list(values)))


def cond_with_collectives(predicate, true_fn, args=(), false_fn=None):
    """``true_fn(*args) if predicate else false_fn()`` from a replica context.

    ``true_fn`` may all-reduce and update variables. ``MirroredStrategy`` cannot
    run a collective (a merge call) inside a ``tf.cond`` entered in replica
    context (Keras's own gradient accumulation fails there for this reason).
    So: merge into cross-replica context once, branch there, and re-enter the
    replicas with ``call_for_each_replica`` (the pattern of Keras's
    ``LossScaleOptimizer``). ``args`` travel through the merge call, so each
    replica gets its own copy back (nothing is read across devices). Strategies
    without merge calls (TPU, and no strategy at all) branch directly.

    ``predicate`` is a boolean tensor computed in replica context that must be
    identical on every replica (the iteration counter, an all-reduced flag);
    the first replica's value decides. ``false_fn`` runs in cross-replica context
    under a merging strategy, so it may only update replica-invariant state.
    """
    false_fn = false_fn or (lambda: None)

    def no_output(fn, *fn_args):
        fn(*fn_args)
        return tf.constant(True)

    if not tf.distribute.has_strategy() or tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(predicate, lambda: no_output(true_fn, *args), lambda: no_output(false_fn))
        return

    def cross_replica(distribution, predicate, *args):
        decision = distribution.experimental_local_results(predicate)[0]

        def take_branch():
            distribution.extended.call_for_each_replica(true_fn, args=args)
            return tf.constant(True)

        tf.cond(decision, take_branch, lambda: no_output(false_fn))

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(predicate,) + tuple(args))


def _assert_finite(value, variable):
    return tf.debugging.assert_all_finite(
        value, f"Non-finite gradient for variable '{variable_path(variable)}' (nonfinite_gradients='raise')."
    )


def run_update_steps(optimizer, grads, trainable_variables):
    """Runs ``optimizer.update_step`` on every variable, in cross-replica context.

    The gradients must already be identical on every replica (all-reduced). This
    is Keras's own ``_distributed_tf_update_step`` reached through one merge call.
    """
    grads_and_vars = [(g, _tf_variable(v)) for g, v in zip(grads, trainable_variables)]
    tf.__internal__.distribute.interim.maybe_merge_call(
        optimizer._distributed_tf_update_step,
        optimizer._distribution_strategy,
        grads_and_vars,
        optimizer.learning_rate,
    )


def apply_reduced_gradients(optimizer, grads, trainable_variables):
    """Applies global-mean gradients with any Keras optimizer, without re-reducing.

    For a :class:`LargeBatchOptimizer` this is its own reduced-gradient path; for
    any other Keras optimizer (``SGD``, ``Adam``, ``AdamW``, ``Lion``, ...) it is
    that optimizer's ``apply`` minus the all-reduce: clipping, decoupled weight
    decay, ``update_step`` per variable, and the iteration counter.
    """
    if isinstance(optimizer, LargeBatchOptimizer):
        optimizer._update_with_reduced_gradients(grads, trainable_variables)
    else:
        grads = optimizer._clip_gradients(grads)
        optimizer._apply_weight_decay(trainable_variables)
        run_update_steps(optimizer, grads, trainable_variables)
    optimizer._iterations.assign_add(1)
