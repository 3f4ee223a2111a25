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
   micro-batches in replica-local (sync-on-read) variables
   (:mod:`~tf_largebatch.optimizers.accumulation`);
2. on the update micro-step, they are all-reduced in one collective, checked
   for non-finite values (the skip policy), and the global mean gradient goes to
   :meth:`LargeBatchOptimizer._update_with_reduced_gradients`, which clips it,
   applies the optimizer's cross-variable transform (e.g. SNGM's global
   normalisation), and runs ``update_step`` per variable in cross-replica
   context (:mod:`~tf_largebatch.optimizers.replicas`).

The class is assembled from one mixin per job: slots and dtypes
(:mod:`~tf_largebatch.optimizers.slots`), accumulation and the non-finite policy
(:mod:`~tf_largebatch.optimizers.accumulation`), the gradient-statistics
recorder (:mod:`~tf_largebatch.optimizers.statistics`), and Keras's private
hooks (:mod:`~tf_largebatch.optimizers.keras_seam`, the only module that
touches them). This module keeps the Keras surface and the config.
"""

import keras
import tensorflow as tf

from tf_largebatch import validation
from tf_largebatch.optimizers import keras_seam
from tf_largebatch.optimizers.accumulation import NONFINITE_POLICIES, AccumulationMixin, check_nonfinite_policy
from tf_largebatch.optimizers.selection import PathPatterns, VariableSelection  # noqa: F401
from tf_largebatch.optimizers.replicas import (  # noqa: F401  (public names of this module)
    all_reduce_sum,
    apply_with_keras,
    cond_with_collectives,
    run_update_steps,
)
from tf_largebatch.optimizers.slots import SlotsMixin, compute_dtype, densify, variable_path  # noqa: F401
from tf_largebatch.optimizers.statistics import GradientStatisticsMixin

__all__ = [
    "NONFINITE_POLICIES",
    "LargeBatchOptimizer",
    "PathPatterns",
    "VariableSelection",
    "all_reduce_sum",
    "apply_reduced_gradients",
    "check_float_variables",
    "check_gradients_match",
    "compute_dtype",
    "cond_with_collectives",
    "densify",
    "run_update_steps",
    "variable_path",
]


class LargeBatchOptimizer(AccumulationMixin, GradientStatisticsMixin, SlotsMixin,
                          keras_seam.KerasOptimizerHooks):
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

    # ------------------------------------------------------------------ build
    @keras_seam.no_automatic_dependency_tracking
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
        check_float_variables(variables, type(self).__name__)
        self._check_enough_gradient_samples()
        # Keras would create mirrored accumulators holding diverged per-replica
        # values (lost on save/restore); ours are sync-on-read, made below.
        steps = self.gradient_accumulation_steps
        self.gradient_accumulation_steps = None
        try:
            super().build(variables)
        finally:
            self.gradient_accumulation_steps = steps
        self._resolve_variable_selection(variables)
        self._build_accumulation(variables, steps)
        self._build_gradient_statistics(variables)

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

    def _use_weight_decay(self, variable):
        """Weight decay applies unless excluded by path pattern or by Keras's own API
        (see :mod:`~tf_largebatch.optimizers.selection`)."""
        if self.built:
            return self._decays[keras_seam.variable_index(self, variable)]
        return self._variable_selection.decays(variable) and keras_seam.keras_uses_weight_decay(self, variable)

    # ------------------------------------------------------ extension points
    def _update_from_reduced_statistics(self, statistics, trainable_variables):
        """Update from all-reduced statistics: the global mean gradient (and, when
        recording, its per-sample second moment, summarised per variable)."""
        grads = statistics[0]
        if self._records_statistics():
            grads = self._record_gradient_statistics(statistics, trainable_variables)
        self._update_with_reduced_gradients(grads, trainable_variables)

    def _transform_reduced_gradients(self, grads, trainable_variables):
        """Cross-variable step on the global mean gradient (default: none)."""
        return grads

    def _update_with_reduced_gradients(self, grads, trainable_variables):
        """Clip, transform and apply a gradient that is already the global mean."""
        grads = keras_seam.keras_clip_gradients(self, grads)
        grads = self._transform_reduced_gradients(grads, trainable_variables)
        run_update_steps(self, grads, trainable_variables)

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
