"""The chassis of every tf_largebatch optimizer: all-reduce first, then the update rule.

Keras 3's TensorFlow optimizer clips gradients, applies weight decay and
accumulates micro-batches on *one replica's partial gradient*, and only then
all-reduces (``TFOptimizer._backend_update_step``). For large-batch optimizers
that is wrong twice over: a global gradient norm (SNGM, ``global_clipnorm``) of a
partial gradient is not the norm of the global gradient, and the GSNR needs the
per-replica gradients *and* their squares before they are summed away.

:class:`LargeBatchOptimizer` moves the all-reduce to the front. It *has* two
components, each owning its state (declared and built in one place):

* a :class:`~tf_largebatch.optimizers.reducer.ReplicaReducer`: accumulation over
  ``gradient_accumulation_steps`` micro-batches, the one all-reduce per update,
  the non-finite policy and ``skipped_updates``;
* a :class:`~tf_largebatch.optimizers.moments.MomentsRecorder` (only when the
  all-reduce must carry ``h**2`` too: the VR optimizers, or
  ``record_gradient_statistics=True``): each replica's first and second
  moments, the large-``k`` shift, and the per-variable statistics table.

One update, from Keras's ``apply`` to the variable:

1. ``apply`` -> :meth:`LargeBatchOptimizer._apply_replica_gradients` (replica
   context, through :class:`~tf_largebatch.optimizers.keras_seam.KerasOptimizerHooks`):
   this replica's local statistics (``[h]``, or the recorder's ``[d, d**2]``);
2. ``reducer.step``: accumulate; on the update micro-step, all-reduce once,
   check finiteness (skip or raise);
3. :meth:`LargeBatchOptimizer._update_from_reduced_statistics`: the global mean
   gradient (the recorder records its statistics on the way), then
   :meth:`LargeBatchOptimizer._update_with_reduced_gradients`: Keras's clipping,
   the optimizer's cross-variable transform (e.g. SNGM's global normalisation),
   and ``update_step`` per variable in cross-replica context
   (:func:`~tf_largebatch.optimizers.replicas.run_update_steps`);
4. the ``use_ema`` average moves on applied updates only.

Keras's private hooks are reached through
:mod:`~tf_largebatch.optimizers.keras_seam` only.
"""

import keras
import tensorflow as tf

from tf_largebatch import validation
from tf_largebatch.optimizers import keras_seam, rules
from tf_largebatch.optimizers.moments import MONITORING_STATISTICS, MomentsRecorder, check_enough_samples
from tf_largebatch.optimizers.reducer import (NONFINITE_POLICIES, ReplicaReducer, check_nonfinite_policy,
                                              without_empty_variables)
from tf_largebatch.optimizers.selection import PathPatterns, VariableSelection  # noqa: F401
from tf_largebatch.optimizers.replicas import (  # noqa: F401  (public names of this module)
    all_reduce_sum,
    apply_with_keras,
    cond_with_collectives,
    run_update_steps,
)
from tf_largebatch.optimizers.slots import (add_local_variable, add_slots, compute_dtype,  # noqa: F401
                                            densify, variable_path)

__all__ = [
    "NONFINITE_POLICIES",
    "LargeBatchOptimizer",
    "PathPatterns",
    "VariableSelection",
    "all_reduce_sum",
    "apply_reduced_gradients",
    "check_float_variables",
    "check_gradients_match",
    "check_inner_optimizer",
    "compute_dtype",
    "cond_with_collectives",
    "densify",
    "run_update_steps",
    "variable_path",
]


class LargeBatchOptimizer(keras_seam.KerasOptimizerHooks):
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
    and ``skipped_updates`` counts it. ``"raise"`` fails the step with the path
    of the first non-finite variable instead.

    The skipped-update rule, one for the whole package: **a skipped update
    leaves no trace**. No weight, slot, moment, GSNR momentum or accumulator
    keeps anything from it, and every bias correction and moment count *applied*
    updates: the step ``t`` of ``1 - beta**t`` is ``applied_updates + 1``
    (:attr:`applied_updates` = ``iterations - skipped_updates``, not counting
    the update in progress). A run with a non-finite step inserted therefore
    equals the run without it, under a constant learning rate. The
    **learning-rate schedule** counts optimizer steps *including* skipped ones
    (``iterations``, one per ``gradient_accumulation_steps`` micro-batches), so
    it stays aligned with the data and the epochs seen: a skipped step uses up
    its learning rate.

    ``record_gradient_statistics`` (every subclass takes it; default ``False``):
    also carry each replica's squared gradient in the step's one all-reduce and
    record, per variable, the mean and variance of the step's k >= 2 gradient
    samples (:meth:`gradient_statistics`, read by
    :class:`tf_largebatch.callbacks.GSNRMonitor`). The VR optimizers always carry
    the squares (their GSNR needs them) and record the statistics on every update
    with ``True``, or else on the updates after :meth:`request_gradient_statistics`.
    """

    def __init__(self, learning_rate, *, weight_decay=None, exclude_from_weight_decay=None,
                 nonfinite_gradients="skip", record_gradient_statistics=False, **kwargs):
        validation.check_learning_rate(learning_rate)
        check_nonfinite_policy(nonfinite_gradients)
        validation.check_base_keywords({**kwargs, "weight_decay": weight_decay})
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        self._variable_selection = VariableSelection(exclude_from_weight_decay)
        self._weight_decay_exclusions = self._variable_selection.weight_decay_exclusions
        self.nonfinite_gradients = nonfinite_gradients
        self.record_gradient_statistics = validation.check_bool("record_gradient_statistics",
                                                                record_gradient_statistics)
        # The components, each owning its state (created in `build`).
        self._reducer = ReplicaReducer(nonfinite_gradients)
        self._moments = self._make_moments_recorder()

    #: The columns of the statistics table (the VR optimizers record more).
    statistic_names = MONITORING_STATISTICS

    def _make_moments_recorder(self):
        """The :class:`MomentsRecorder`, or ``None`` when the all-reduce carries the gradient only."""
        if not self.record_gradient_statistics:
            return None
        return MomentsRecorder(statistic_names=self.statistic_names, every_update=True)

    # ------------------------------------------------------------------ build
    @keras_seam.no_automatic_dependency_tracking
    def build(self, variables):
        if (tf.inside_function() and tf.distribute.has_strategy()
                and not keras_seam.strategy_supports_no_merge_call()):
            # The update branches in cross-replica context (cond_with_collectives);
            # TensorFlow cannot combine that with variables created inside the
            # first call of a tf.function under MirroredStrategy.
            raise ValueError(
                f"Build {type(self).__name__} before its first step under "
                f"{type(tf.distribute.get_strategy()).__name__}: call "
                "`optimizer.build(model.trainable_variables)` inside `strategy.scope()` before the training "
                "loop (model.fit does this for you)."
            )
        check_float_variables(variables, type(self).__name__)
        num_replicas = keras_seam.distribution_strategy(self).num_replicas_in_sync
        steps = self.gradient_accumulation_steps
        if self._moments is not None:
            check_enough_samples(type(self).__name__, num_replicas, steps)
        # Keras would create mirrored accumulators holding diverged per-replica
        # values (lost on save/restore); the reducer's are sync-on-read.
        self.gradient_accumulation_steps = None
        try:
            super().build(variables)
        finally:
            self.gradient_accumulation_steps = steps
        self._resolve_variable_selection(variables)
        self._reducer.build(self, variables, accumulation_steps=steps,
                            num_statistics=1 if self._moments is None else 2)
        dependencies = self._reducer.checkpoint_dependencies()
        if self._moments is not None:
            self._moments.build(self, variables, num_replicas=num_replicas, accumulation_steps=steps)
            dependencies.update(self._moments.checkpoint_dependencies())
        for name, variable in dependencies.items():
            keras_seam.track_checkpoint_dependency(self, name, variable)

    def apply(self, grads, trainable_variables=None):
        """Keras's ``apply``, after checking one gradient per variable, of its shape.

        Keras pairs ``grads`` with the variables by position and silently drops
        the extra ones of the longer list; a missing or misshapen gradient is an
        error here, naming the variable's path.
        """
        grads = list(grads)
        if trainable_variables is not None:
            trainable_variables = list(trainable_variables)
            check_gradients_match(grads, trainable_variables)
        elif self.built:
            check_gradients_match(grads, keras_seam.built_variables(self))
        return super().apply(grads, trainable_variables)

    # ------------------------------------------------- Keras hooks we replace
    def _current_learning_rate(self):
        # Keras evaluates a schedule at the micro-step counter; under gradient
        # accumulation ours count optimizer updates (`iterations`), skipped ones
        # included.
        learning_rate = keras_seam.stored_learning_rate(self)
        if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            return learning_rate(self.iterations)
        return super()._current_learning_rate()

    def _resolve_variable_selection(self, variables):
        """Per-variable decisions (weight decay? layer-wise rate?), once, at build."""
        self._decays, self._adapts = self._variable_selection.resolve(
            variables, also_decays=lambda variable: keras_seam.keras_uses_weight_decay(self, variable)
        )

    def applies_weight_decay(self, variable):
        """Weight decay applies unless excluded by path pattern or by Keras's own API
        (see :mod:`~tf_largebatch.optimizers.selection`)."""
        if self.built:
            return self._decays[keras_seam.variable_index(self, variable)]
        return self._variable_selection.decays(variable) and keras_seam.keras_uses_weight_decay(self, variable)

    # ------------------------------------------------------------ the update
    def _apply_replica_gradients(self, grads, trainable_variables):
        """Steps 1-2 of the update (module docstring), in replica context."""
        grads, trainable_variables = without_empty_variables([densify(g) for g in grads], trainable_variables)
        if not trainable_variables:
            return
        local = [grads] if self._moments is None else self._moments.local_moments(grads, trainable_variables)

        def apply_update(statistics):
            self._update_from_reduced_statistics(statistics, trainable_variables)
            self._update_ema()

        self._reducer.step(local, trainable_variables, apply_update)

    def _update_from_reduced_statistics(self, statistics, trainable_variables):
        """Update from all-reduced statistics: the global mean gradient (and, when
        recording, its per-sample second moment, summarised per variable)."""
        grads = statistics[0]
        if self._moments is not None:
            grads = self._moments.observe(statistics, trainable_variables)
        self._update_with_reduced_gradients(grads, trainable_variables)

    def _transform_reduced_gradients(self, grads, trainable_variables):
        """Cross-variable step on the global mean gradient (default: none)."""
        return grads

    def _update_with_reduced_gradients(self, grads, trainable_variables):
        """Clip, transform and apply a gradient that is already the global mean."""
        grads = keras_seam.keras_clip_gradients(self, grads)
        grads = self._transform_reduced_gradients(grads, trainable_variables)
        run_update_steps(self, grads, trainable_variables)

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

    # ------------------------------------------------------------ state helpers
    def _add_slots(self, var_list, name, initializer="zeros"):
        """One slot per model variable (:func:`~tf_largebatch.optimizers.slots.add_slots`)."""
        return add_slots(self, var_list, name, initializer)

    def _add_local_variable(self, reference, name, aggregation="sum"):
        """A replica-local slot (:func:`~tf_largebatch.optimizers.slots.add_local_variable`)."""
        return add_local_variable(self, reference, name, aggregation)

    def _slot(self, slots, variable):
        """The entry of ``slots`` (built by :meth:`_add_slots`) for ``variable``."""
        return slots[keras_seam.variable_index(self, variable)]

    # ------------------------------------------------- counters and statistics
    @property
    def skipped_updates(self):
        """Updates skipped because the all-reduced gradient was not finite (a Python int)."""
        return self._reducer.skipped_updates

    @property
    def applied_updates(self):
        """Optimizer updates actually applied so far, an int64 tensor.

        ``iterations`` (optimizer updates, skipped ones included) minus the
        updates skipped for a non-finite gradient. Inside ``update_step`` it does
        not count the update in progress, so ``applied_updates + 1`` is the step
        ``t`` of a bias correction (``1 - beta**t``): a skipped update leaves no
        trace in any moment or bias correction.
        """
        return self._reducer.applied_updates(self.iterations)

    @property
    def num_gradient_samples(self):
        """k = replicas in sync x gradient accumulation steps."""
        return keras_seam.distribution_strategy(self).num_replicas_in_sync * (self.gradient_accumulation_steps or 1)

    @property
    def records_gradient_statistics(self):
        """Whether this optimizer can record :meth:`gradient_statistics`: on every
        update (``record_gradient_statistics=True``), or, for the VR optimizers,
        on the updates asked for with :meth:`request_gradient_statistics`."""
        return self._moments is not None

    @property
    def moments_recorder(self):
        """The :class:`~tf_largebatch.optimizers.moments.MomentsRecorder` (``None`` when not
        recording); built with the optimizer. Its :meth:`noise_estimates` give the
        unbiased ``(sigma**2, |grad F|**2)`` of the last recorded update."""
        return self._moments

    def _check_records_statistics(self):
        if self._moments is None:
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
        self._moments.request()

    @property
    def gradient_statistics_step(self):
        """The optimizer update (``iterations`` after it, from 1) whose statistics
        :meth:`gradient_statistics` returns; 0 before any was recorded."""
        if self._moments is None or not self.built:
            return 0
        return self._moments.recorded_step

    def gradient_statistics(self):
        """The last recorded update's per-variable gradient statistics, by variable path.

        Recorded on every update with ``record_gradient_statistics=True``, and
        by the VR optimizers otherwise on the updates after
        :meth:`request_gradient_statistics` (:attr:`gradient_statistics_step`
        says which): ``{path: {"mean_square": sum gbar**2, "variance":
        sum s2, "gsnr_mean": mean raw GSNR over the elements with finite GSNR}}``
        (sums over the variable's elements; ``gbar`` and ``s2`` are the mean and
        variance of the step's k gradient samples, see
        :mod:`~tf_largebatch.optimizers.moments`); the VR optimizers add
        ``fraction_at_lower``/``fraction_at_upper`` (elements clipped at
        ``gamma``/the upper bound). Read eagerly, e.g. by
        :class:`tf_largebatch.callbacks.GSNRMonitor`.
        """
        self._check_records_statistics()
        if not self.built:
            raise ValueError(f"{type(self).__name__} has no statistics before its first step.")
        if not self._moments.every_update and self.gradient_statistics_step == 0:
            raise ValueError(
                f"{type(self).__name__} was created with record_gradient_statistics=False and has recorded no "
                "statistics yet: they are recorded on the updates after request_gradient_statistics() (which "
                "GSNRMonitor calls), or on every update with record_gradient_statistics=True."
            )
        return self._moments.read(keras_seam.built_variables(self))

    # ---------------------------------------------------------------- config
    def get_config(self):
        config = super().get_config()
        config["exclude_from_weight_decay"] = list(self._weight_decay_exclusions)
        config["nonfinite_gradients"] = self.nonfinite_gradients
        config["record_gradient_statistics"] = self.record_gradient_statistics
        return config


def check_float_variables(variables, owner):
    """Raises ``ValueError`` naming the first variable whose dtype is not floating point.

    Args:
        variables: the variables an optimizer is built on.
        owner: the optimizer's class name, for the message.
    """
    for variable in variables:
        dtype = tf.as_dtype(variable.dtype)
        if not dtype.is_floating:
            raise ValueError(
                f"{owner} updates floating-point variables only, but variable '{variable_path(variable)}' has "
                f"dtype {dtype.name}. Make it non-trainable (trainable=False) or give it a float dtype."
            )


def check_inner_optimizer(inner_optimizer, owner):
    """Raises ``ValueError`` unless ``inner_optimizer`` can be wrapped by ``owner`` (VR, AdaScale).

    The wrapped optimizer must be a fresh ``keras.optimizers.Optimizer``: not
    itself a wrapper that needs the per-sample gradients (only the outer
    optimizer sees them), not a ``LossScaleOptimizer`` (it wraps the outer
    one), not built (the wrapper builds it on the variables it trains),
    without accumulation or EMA (those act on the gradient samples and belong
    to the wrapper), and with valid Keras base keywords (Keras's own
    optimizers accept ``clipnorm=-1``, ``use_ema="yes"``, ...).

    Args:
        inner_optimizer: what the user passed as ``inner_optimizer``.
        owner: how messages name the wrapper ("the VR optimizer", "AdaScale").
    """
    owner_capitalised = owner[:1].upper() + owner[1:]
    if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            "`inner_optimizer` must be a keras.optimizers.Optimizer instance (e.g. keras.optimizers.SGD(0.1, "
            f"momentum=0.9)). Received: inner_optimizer={inner_optimizer!r}"
        )
    if isinstance(inner_optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError(
            f"`inner_optimizer` cannot be a {type(inner_optimizer).__name__}: wrap {owner} in a "
            "LossScaleOptimizer instead (Keras does this itself under mixed_float16)."
        )
    if isinstance(inner_optimizer, LargeBatchOptimizer) and hasattr(inner_optimizer, "inner_optimizer"):
        raise ValueError(
            f"{owner_capitalised} does not wrap a {type(inner_optimizer).__name__}: the two do not nest, both need "
            "the per-sample gradients, which only the outer optimizer sees. Wrap a base optimizer "
            "(e.g. keras.optimizers.SGD)."
        )
    if inner_optimizer.built:
        raise ValueError(
            f"`inner_optimizer` ({type(inner_optimizer).__name__} {inner_optimizer.name!r}) is already built on "
            f"{len(inner_optimizer.variables)} variable(s) of its own. {owner_capitalised} builds its inner "
            "optimizer on the variables it trains: pass a fresh, unbuilt optimizer."
        )
    for argument in ("gradient_accumulation_steps", "use_ema"):
        if getattr(inner_optimizer, argument):
            raise ValueError(
                f"Set `{argument}` on {owner}, not on its inner optimizer "
                f"(received inner {argument}={getattr(inner_optimizer, argument)!r})."
            )
    # Read as attributes (get_config needs eager execution); Keras keeps a list
    # argument in a tracking wrapper, so name it as the user wrote it.
    keywords = {key: getattr(inner_optimizer, key) for key in validation.BASE_KEYWORDS
                if hasattr(inner_optimizer, key)}
    validation.check_base_keywords({key: list(value) if isinstance(value, (list, tuple)) else value
                                    for key, value in keywords.items()})


def check_gradients_match(grads, variables):
    """Raises ``ValueError`` unless there is one gradient per variable, each of its variable's shape.

    ``None`` gradients are allowed (Keras skips those variables with a warning).
    The message names the path of the variable concerned.
    """
    if len(grads) != len(variables):
        paths = [variable_path(v) for v in variables]
        detail = (f"no gradient for {paths[len(grads):]}" if len(grads) < len(variables)
                  else f"{len(grads) - len(variables)} gradient(s) beyond the last variable '{paths[-1]}'"
                  if paths else "no variables")
        raise ValueError(
            f"apply() needs one gradient per variable: received {len(grads)} gradient(s) for "
            f"{len(variables)} variable(s) ({detail})."
        )
    for gradient, variable in zip(grads, variables):
        if gradient is None:
            continue
        shape = tf.TensorShape(gradient.shape)
        if not shape.is_compatible_with(variable.shape):
            raise ValueError(
                f"The gradient for variable '{variable_path(variable)}' has shape {shape.as_list()}, but the "
                f"variable has shape {list(variable.shape)}."
            )


def apply_reduced_gradients(optimizer, grads, trainable_variables):
    """Applies global-mean gradients with any Keras optimizer, without re-reducing.

    For a :class:`LargeBatchOptimizer` this is its own reduced-gradient path; for
    any other Keras optimizer (``SGD``, ``Adam``, ``AdamW``, ``Lion``, ...) it is
    that optimizer's ``apply`` minus the all-reduce
    (:func:`~tf_largebatch.optimizers.replicas.apply_with_keras`).
    """
    if isinstance(optimizer, LargeBatchOptimizer):
        optimizer._update_with_reduced_gradients(grads, trainable_variables)
        keras_seam.advance_micro_step_counter(optimizer)
    else:
        apply_with_keras(optimizer, grads, trainable_variables)
