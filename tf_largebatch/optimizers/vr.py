"""VRGD: GSNR-based variance-reduced optimizers (VR-SGD, VR-Adam, VR-LAMB, ...).

Jiang et al., "Accelerating Large Batch Training via Gradient Signal to Noise
Ratio (GSNR)", Algorithms 1, 3, 5. This module is the Keras surface:

* :class:`VR`, the wrapper around any Keras optimizer. Its update reads the
  moments of the step's k gradient samples from the chassis's
  :class:`~tf_largebatch.optimizers.moments.MomentsRecorder` (one all-reduce
  carries both moments), turns them into the GSNR factor
  (:mod:`~tf_largebatch.optimizers.gsnr`) in :func:`adapted_gradient`, and
  hands ``g_hat`` to the inner optimizer;
* the named variants (:data:`VARIANTS`: ``VRSGD``, ``VRMomentum``, ``VRAdam``,
  ``VRLAMB``, ``VRLARS``), each made by :func:`make_variant` from one row of
  (inner class, defaults): their signatures and docstrings are derived from
  the inner class, their config is flat like their constructor.
"""

import collections
import inspect
import re

import keras
import tensorflow as tf

from tf_largebatch import validation
from tf_largebatch.optimizers import gsnr, keras_seam, moments, rules
from tf_largebatch.optimizers.base import LargeBatchOptimizer, apply_reduced_gradients, check_inner_optimizer
from tf_largebatch.optimizers.docstrings import document, fill
from tf_largebatch.optimizers.lamb import LAMB
from tf_largebatch.optimizers.lars import LARS
from tf_largebatch.optimizers.reducer import without_empty_variables
from tf_largebatch.optimizers.replicas import branch_with_collectives
from tf_largebatch.optimizers.slots import densify

#: Keras base keywords the inner optimizer keeps: they act on the GSNR-adapted
#: gradient. Every other base keyword (:data:`tf_largebatch.validation.BASE_KEYWORDS`)
#: belongs to the wrapper, which sees the per-replica gradient samples.
INNER_KEYWORDS = ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm")

#: Keyword arguments that belong to the VR wrapper (they act on the per-replica
#: gradient samples); every other one belongs to the inner optimizer.
WRAPPER_ARGUMENTS = tuple(k for k in validation.BASE_KEYWORDS if k not in INNER_KEYWORDS) + (
    "nonfinite_gradients", "record_gradient_statistics")

#: The VR wrapper's own arguments, with their defaults (the variants' gsnr_momentum default is per row).
GSNR_ARGUMENTS = ("gamma", "gsnr_momentum", "gsnr_upper_bound", "second_moment_dtype", "gsnr_refresh_every")

_SAMPLES_NOTE = """\
    The GSNR is estimated from ``k`` gradient samples per update (``k`` = replicas
    in sync x ``gradient_accumulation_steps``); ``k >= 2`` is required. The paper
    runs every experiment with ``k >= 8`` (its Section 6); with fewer samples the
    variance estimate is noisier (its relative standard error is about
    ``sqrt(2 / (k - 1))``: 100 % at ``k = 3``, 53 % at ``k = 8``), so the
    per-element factors scatter more around their expectation."""

_GSNR_ARGS_DOC = """\
        gamma: float in (0, 1], lower clip bound of the normalised GSNR (paper:
            0.1 for every experiment).
        gsnr_momentum: float in [0, 1), the paper's beta_3 (0 for VR-SGD,
            VR-Momentum and VR-LARS, 0.9 for VR-Adam and VR-LAMB).
        gsnr_upper_bound: float >= gamma, upper clip bound (paper: 1).
        second_moment_dtype: ``"float32"`` (default, exact to float32) or
            ``"bfloat16"``: an opt-in approximation that all-reduces each
            replica's second moment in bfloat16, half the extra payload the
            second moment adds to the update's all-reduce (the mean gradient
            stays float32; the two dtypes travel in two collectives of the
            same step, since a collective packs one dtype). The reduced second moment is then known to within
            ``(2 R - 1) * 2**-8`` of itself (``R`` replicas; 2.7 % at ``R = 4``),
            and a variance below that counts as a tie: an element whose GSNR
            about the moments' shift exceeds about ``1 / ((2 R - 1) * 2**-8)``
            (37 at ``R = 4``) gets the upper-bound factor and is left out of
            the normalising mean. Without the shift (``k < 64``) the shift is
            0 and this is the element's own per-sample GSNR; with it
            (``k >= 64``) only the change of the mean since the last update
            counts, so the resolution is far finer.
        gsnr_refresh_every: int >= 1 (default 1: the GSNR of every update,
            the paper's rule). ``n > 1`` is an opt-in approximation: the GSNR
            is refreshed on every n-th applied update only (the 1st, the
            (n+1)-th, ...), where the update runs as with ``n = 1`` (both
            moments all-reduced, ``r`` formed, ``p`` moved). The other updates
            form no second moment and all-reduce the mean gradient alone, and
            use the factor of the last refresh: ``g_hat = p_j / (1 -
            gsnr_momentum**j) * gbar``, with ``p_j`` the GSNR momentum after
            the ``j``-th refresh (its bias correction counts refreshes, so
            ``j = applied_updates // n + 1``). With ``gsnr_momentum=0`` the
            slot holds the last refresh's ``r`` itself (``p_j = r_j``). The
            monitoring statistics are recorded on refresh updates only (a
            request waits for the next one)."""

_WRAPPER_KEYWORDS_DOC = """\
        gradient_accumulation_steps: int >= 2 or None. Each micro-batch is one
            gradient sample (with replicas: ``k`` = replicas x steps).
        use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor: as
            for any Keras optimizer; they belong to the VR wrapper.
        nonfinite_gradients: ``"skip"`` (default: an update whose all-reduced
            statistics are not finite changes no weight and no state, of the
            wrapper or of the inner optimizer, and later bias corrections count
            applied updates only) or ``"raise"``.
        record_gradient_statistics: bool (default ``False``): record the
            per-variable monitoring statistics (:meth:`gradient_statistics`)
            of every update. By default they are recorded only on the updates
            that follow :meth:`request_gradient_statistics`, which
            ``GSNRMonitor`` calls before each of its readings: computing them
            on every update cost about 0.1-0.3 of a step of the base optimizer
            at 1e6-1e7 parameters. The GSNR itself is always computed.
        weight_decay, clipnorm, clipvalue, global_clipnorm: the base
            optimizer's own, acting on the GSNR-adapted gradient ``g_hat``. For a
            Keras base optimizer (VRSGD, VRMomentum, VRAdam, ``VR(SGD(...))``)
            ``weight_decay`` is Keras's decoupled decay, ``w <- w - lr * wd * w``
            before the base step (as ``keras.optimizers.SGD``/``Adam``, so
            ``gamma=1`` gives the Keras optimizer exactly); VRLAMB and VRLARS
            keep LAMB's and LARS's coupled decay inside the trust ratio."""

_REFERENCES = """\
        Jiang et al., "Accelerating Large Batch Training via Gradient Signal to
            Noise Ratio (GSNR)", Algorithms 1, 3, 5, eq. (7)-(10), Section 6.
        Liu et al., "Understanding Why Neural Networks Generalize Well Through
            GSNR of Parameters", ICLR 2020."""

_VR_TEXTS = {"vr_samples_note": _SAMPLES_NOTE, "vr_wrapper_keywords": _WRAPPER_KEYWORDS_DOC,
             "vr_references": _REFERENCES, "vr_gsnr_args": _GSNR_ARGS_DOC}


@keras.saving.register_keras_serializable(package="tf_largebatch")
@document(**_VR_TEXTS)
class VR(LargeBatchOptimizer):
    """Wraps any Keras optimizer and feeds it the GSNR-adapted mean gradient.

    Per update, from ``k`` gradient samples (under ``MirroredStrategy``,
    ``TPUStrategy`` or ``MultiWorkerMirroredStrategy`` each replica's gradient
    is a sample, and with accumulation each micro-batch is one too, so VR also
    works on a single device), per variable and element-wise
    (:mod:`~tf_largebatch.optimizers.gsnr`)::

        gbar, s2 = mean and variance of the k samples
        r        = clip(GSNR / mean_variable(GSNR), gamma, upper)
        p_t      = gsnr_momentum * p_{t-1} + (1 - gsnr_momentum) * r
        g_hat    = p_t / (1 - gsnr_momentum**t) * gbar
        inner optimizer's own update with g_hat

    ``t`` counts applied updates (a skipped non-finite update is not counted),
    and the inner optimizer advances exactly when the wrapper applies an update,
    so its own bias corrections and learning-rate schedule also count applied
    updates. Both moments travel in the one all-reduce of the update; nothing is
    reduced twice. The wrapper owns gradient accumulation, EMA and
    ``loss_scale_factor``; the inner optimizer keeps everything else (its
    learning rate and schedule, ``weight_decay``, ``clipnorm``/
    ``global_clipnorm``, which act on ``g_hat``).

    With the default ``gsnr_upper_bound=1`` (Algorithm 1), the factor is at most
    1: no element ever takes a larger step than the base optimizer would give it,
    and low-GSNR elements take steps down to ``gamma`` times smaller. Raising the
    upper bound lets high-GSNR elements move faster than the base optimizer (the
    paper's Figure 2 intuition); it then changes the effective learning rate and
    usually wants a smaller one. ``gamma=1`` makes VR-X equal to X exactly.

    Degenerate statistics are finite and documented in
    :mod:`~tf_largebatch.optimizers.gsnr` (identical samples give the factor
    ``gsnr_upper_bound``; a single-element variable or an all-zero gradient gives
    the base optimizer's step). Variables with no elements are left alone.

{{vr_samples_note}}

    Args:
        inner_optimizer: a Keras optimizer instance (``keras.optimizers.SGD``,
            ``Adam``, ``AdamW``, ``Lion``, this package's ``LARS``/``LAMB``/...),
            not yet built (the wrapper builds it on its own variables), without
            its own ``gradient_accumulation_steps`` or ``use_ema`` (set those on
            the wrapper). Its learning rate is the VR optimizer's learning rate:
            passing ``learning_rate`` to ``VR`` is an error.
{{vr_gsnr_args}}
{{vr_wrapper_keywords}}
            ``VR`` itself does not take these four: set them on the inner
            optimizer.
        name: string.

    References:
{{vr_references}}
    """

    #: The statistics table's columns: the monitoring ones plus the clip fractions.
    statistic_names = gsnr.STATISTIC_NAMES

    def __init__(self, inner_optimizer, gamma=0.1, gsnr_momentum=0.0, gsnr_upper_bound=1.0,
                 second_moment_dtype="float32", gsnr_refresh_every=1, record_gradient_statistics=False,
                 name="vr", **kwargs):
        for argument in INNER_KEYWORDS:
            if kwargs.get(argument) is not None:
                raise ValueError(
                    f"VR does not take `{argument}`: set it on the inner optimizer, which applies it to the "
                    f"GSNR-adapted gradient. Received: {argument}={kwargs[argument]!r}"
                )
            kwargs.pop(argument, None)
        learning_rate = kwargs.pop("learning_rate", None)
        if learning_rate is not None:
            raise ValueError(
                "VR takes its learning rate from the inner optimizer; pass it there, e.g. "
                f"VR(keras.optimizers.SGD(learning_rate={learning_rate!r}), ...). "
                f"Received: learning_rate={learning_rate!r}"
            )
        super().__init__(learning_rate=0.0, name=name, record_gradient_statistics=record_gradient_statistics,
                         **kwargs)
        check_inner_optimizer(inner_optimizer, "the VR optimizer")
        self.inner_optimizer = inner_optimizer
        self.gamma = validation.check_number("gamma", gamma, low=0.0, high=1.0, low_inclusive=False)
        self.gsnr_momentum = validation.check_probability("gsnr_momentum", gsnr_momentum)
        self.gsnr_upper_bound = validation.check_number("gsnr_upper_bound", gsnr_upper_bound, low=self.gamma)
        if second_moment_dtype not in gsnr.SECOND_MOMENT_DTYPES:
            raise ValueError(f"`second_moment_dtype` must be one of {gsnr.SECOND_MOMENT_DTYPES}. "
                             f"Received: second_moment_dtype={second_moment_dtype!r}")
        self.second_moment_dtype = second_moment_dtype
        self.gsnr_refresh_every = validation.check_positive_int("gsnr_refresh_every", gsnr_refresh_every)
        if second_moment_dtype != "float32":
            self._reducer.reduce_dtypes = {1: tf.as_dtype(second_moment_dtype)}  # statistic 1: the squares

    def _make_moments_recorder(self):
        # The GSNR needs both moments on every update; the table only when asked.
        return moments.MomentsRecorder(statistic_names=self.statistic_names,
                                       every_update=self.record_gradient_statistics)

    # ----------------------------------------------------------- Keras surface
    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def variables(self):
        return keras_seam.own_variables(self) + self.inner_optimizer.variables

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.inner_optimizer.build(var_list)
        self._gsnr_momentums = (
            [self._add_local_variable(v, "gsnr_momentum", aggregation="mean") for v in var_list]
            if self.gsnr_momentum > 0 or self.gsnr_refresh_every > 1  # the carried factor
            else None
        )

    # ------------------------------------------------------------ update path
    def _refresh_count(self):
        """``j``: the GSNR refreshes up to and including this update (the GSNR
        momentum's bias-correction step; ``applied_updates + 1`` when every
        update refreshes)."""
        return self.applied_updates // self.gsnr_refresh_every + 1

    def _apply_replica_gradients(self, grads, trainable_variables):
        """With ``gsnr_refresh_every > 1``: both moments on refresh updates, the gradient alone between."""
        if self.gsnr_refresh_every == 1:
            super()._apply_replica_gradients(grads, trainable_variables)
            return
        grads, trainable_variables = without_empty_variables([densify(g) for g in grads], trainable_variables)
        if not trainable_variables:
            return

        def apply_update(statistics):
            self._update_from_reduced_statistics(statistics, trainable_variables)
            self._update_ema()

        def refresh(*grads):
            local = self._moments.local_moments(list(grads), trainable_variables)
            self._reducer.step(local, trainable_variables, apply_update)

        def carry(*grads):
            self._reducer.step([list(grads)], trainable_variables, apply_update)

        due = tf.equal(self.applied_updates % self.gsnr_refresh_every, 0)
        branch_with_collectives(due, refresh, carry, args=tuple(grads))

    def _update_from_reduced_statistics(self, statistics, trainable_variables):
        if len(statistics) == 1:
            self._update_with_carried_gsnr(statistics[0], trainable_variables)
            return
        recorder = self._moments
        step = self._refresh_count()
        record = recorder.record_due()
        at_resolution_limit = recorder.at_resolution_limit()
        second_moment_error = gsnr.second_moment_reduction_error(self.second_moment_dtype, recorder.num_replicas)
        adapted = []
        rows = recorder.empty_rows()
        for sum_of_means, sum_of_squares, variable in zip(*statistics, trainable_variables):
            index = keras_seam.variable_index(self, variable)
            slot = None if self._gsnr_momentums is None else self._gsnr_momentums[index]
            gradient, mean, momentum, rows[index] = _adapted_gradient_function(variable)(
                sum_of_means, sum_of_squares, recorder.shift(variable),
                None if slot is None else tf.convert_to_tensor(slot.value), step,
                num_replicas=recorder.num_replicas, num_samples=recorder.num_samples, lower=self.gamma,
                upper=self.gsnr_upper_bound, decay=self.gsnr_momentum, with_statistics=record,
                at_resolution_limit=at_resolution_limit, second_moment_error=second_moment_error,
            )
            if slot is not None:
                slot.assign(tf.cast(momentum, slot.dtype))
            recorder.remember_mean(variable, mean)
            adapted.append(tf.cast(gradient, variable.dtype))
        if record is True:
            recorder.store(rows)
        else:
            def store():
                recorder.store(rows)
                return tf.constant(True)

            tf.cond(record, store, lambda: tf.constant(False))
        apply_reduced_gradients(self.inner_optimizer, adapted, trainable_variables)

    def _update_with_carried_gsnr(self, means, trainable_variables):
        """An update between GSNR refreshes: ``g_hat = p_j / (1 - beta_3**j) * gbar``."""
        step = self._refresh_count()
        adapted = []
        for mean, variable in zip(means, trainable_variables):
            slot = self._gsnr_momentums[keras_seam.variable_index(self, variable)]
            carry = _carried_gradient_function(variable)
            adapted.append(tf.cast(carry(tf.convert_to_tensor(slot.value), mean, self.gsnr_momentum, step),
                                   variable.dtype))
            self._moments.remember_mean(variable, mean)
        apply_reduced_gradients(self.inner_optimizer, adapted, trainable_variables)

    # ------------------------------------------------------------------ config
    def _wrapper_config(self):
        config = super().get_config()
        return {key: config[key] for key in ("name",) + WRAPPER_ARGUMENTS if key in config}

    def get_config(self):
        config = self._wrapper_config()
        config.update(
            {
                "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
                "gamma": self.gamma,
                "gsnr_momentum": self.gsnr_momentum,
                "gsnr_upper_bound": self.gsnr_upper_bound,
                "second_moment_dtype": self.second_moment_dtype,
                "gsnr_refresh_every": self.gsnr_refresh_every,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(config.pop("inner_optimizer"), custom_objects=custom_objects)
        return cls(inner, **config)


# ------------------------------------------------------------ the VR transform
def adapted_gradient(sum_of_means, sum_of_mean_squares, shift, momentum, step, *, num_replicas, num_samples,
                     lower, upper, decay, with_statistics, at_resolution_limit=False, second_moment_error=0.0):
    """One variable's whole VR transform, from the all-reduced sums to ``g_hat``.

    The sample moments (:func:`~tf_largebatch.optimizers.moments.sample_moments`,
    the one place they are computed), the clipped normalised GSNR
    (:func:`~tf_largebatch.optimizers.gsnr.clipped_gsnr_of_signal`), and, with a
    ``momentum`` (the previous ``p``), the GSNR momentum with its bias
    correction at the 1-based applied update ``step``::

        p_t   = decay * p_{t-1} + (1 - decay) * r
        g_hat = p_t / (1 - decay**step) * gbar

    Written as one function so that it can be compiled as one XLA cluster
    (element-wise work fused into few passes) even where the model step is not.
    ``shift``/``momentum`` may be ``None`` (no shift; no GSNR momentum).

    Args:
        with_statistics: ``True``, ``False``, or a boolean scalar tensor (the
            statistics' reductions then run only when it is true).
        at_resolution_limit: passed to :func:`~tf_largebatch.optimizers.moments.sample_moments`
            (raw moments where ``k`` calls for a shift: the first update with
            several replicas).
        second_moment_error: passed to :func:`~tf_largebatch.optimizers.moments.sample_moments`
            (the second moment's relative error from a bfloat16 all-reduce).

    Returns:
        ``(g_hat, gbar, p_t or None, statistics or None)``; the statistics
        (:func:`~tf_largebatch.optimizers.gsnr.gsnr_statistics`; zeros where a
        tensor ``with_statistics`` is false) are ``None`` only for
        ``with_statistics=False``.
    """
    sample = moments.sample_moments(sum_of_means, sum_of_mean_squares, shift, num_replicas=num_replicas,
                                    num_samples=num_samples, at_resolution_limit=at_resolution_limit,
                                    second_moment_error=second_moment_error)
    factor, mean_gsnr = gsnr.clipped_gsnr_of_signal(sample.signal, sample.variance, lower, upper)
    statistics = None
    if with_statistics is not False:
        def statistics_now():
            return gsnr.gsnr_statistics(sample.mean, sample.variance, factor, mean_gsnr, lower, upper,
                                        signal=sample.signal)

        statistics = statistics_now() if with_statistics is True else tf.cond(
            with_statistics, statistics_now, lambda: tf.zeros([len(gsnr.STATISTIC_NAMES)]))
    if momentum is not None:
        momentum = rules.moving_average(tf.cast(momentum, tf.float32), factor, decay)
        factor = rules.bias_correction(momentum, decay, step)
    return factor * sample.mean, sample.mean, momentum, statistics


def carried_gradient(momentum, mean, decay, step):
    """``g_hat`` between GSNR refreshes: ``p_j / (1 - decay**j) * gbar`` (``p_j * gbar`` for ``decay == 0``).

    Args:
        momentum: the GSNR momentum slot ``p_j`` (the last refresh's ``r`` when ``decay == 0``).
        mean: ``gbar``, the update's all-reduced mean gradient.
        decay: ``gsnr_momentum`` (a Python float).
        step: ``j``, the refreshes so far (an integer tensor).
    """
    momentum, mean = tf.cast(momentum, tf.float32), tf.cast(mean, tf.float32)
    if decay == 0:
        return momentum * mean
    return rules.bias_correction(momentum, decay, step) * mean  # as adapted_gradient corrects p on a refresh


#: The per-variable VR transform as one XLA cluster. Keras compiles the model step
#: with XLA only on one device (``jit_compile="auto"`` turns it off under a
#: tf.distribute strategy and on CPU). Compiled on its own, the GSNR chain's
#: element-wise operations fuse into a few passes over memory; inside a Keras XLA
#: step it is simply inlined. It holds no variables (XLA under MirroredStrategy
#: refuses resources of other devices); the caller reads and assigns the GSNR momentum.
_compiled_adapted_gradient = tf.function(adapted_gradient, jit_compile=True)

#: Device types on which large variables use the compiled function. On CPU it paid
#: in whole MirroredStrategy x4 steps (VRAdam / Adam, benchmarks/vr_step_parts.py):
#: 1.237 -> 1.201 at 1e6 parameters and 1.684 -> 1.523 at 1e7, where the
#: un-fused chain is bound by memory traffic (docs/benchmarks.md).
COMPILE_ON_DEVICE_TYPES = ("CPU", "GPU")

#: Variables from this many elements on are compiled; for smaller ones XLA's
#: launch and per-shape compile cost more than the passes it saves.
COMPILE_MIN_ELEMENTS = 2**15


def _compiles(variable):
    """Whether ``variable``'s per-variable VR work runs as its own XLA cluster."""
    backend_variable = getattr(variable, "value", variable)  # keras.Variable -> its tf.Variable
    device = tf.DeviceSpec.from_string(getattr(backend_variable, "device", "") or "").device_type
    return device in COMPILE_ON_DEVICE_TYPES and variable.shape.num_elements() >= COMPILE_MIN_ELEMENTS


def _adapted_gradient_function(variable):
    return _compiled_adapted_gradient if _compiles(variable) else adapted_gradient


#: :func:`carried_gradient` as one XLA cluster (one pass for ``p``, ``gbar`` and the correction).
_compiled_carried_gradient = tf.function(carried_gradient, jit_compile=True)


def _carried_gradient_function(variable):
    return _compiled_carried_gradient if _compiles(variable) else carried_gradient



# ------------------------------------------------------------- the named variants
#: One named VR optimizer: the inner class it wraps and what differs from it.
#:
#: * ``defaults``: constructor defaults that differ from the inner class's;
#: * ``gsnr_momentum``: the default beta_3 (0.9 for the Adam-based variants);
#: * ``check``: ``fn(arguments)``, checks stricter than the inner class's
#:   (raised at construction, before the inner optimizer exists);
#: * ``summary``: the docstring's text before its Args;
#: * ``argument_notes``: ``{argument: text}`` replacing the inner class's
#:   description of that argument;
#: * ``references``: added after the VR references.
Variant = collections.namedtuple(
    "Variant", ["name", "inner_class", "defaults", "gsnr_momentum", "check", "summary", "argument_notes",
                "references"])


def _check_sgd_arguments(arguments):
    validation.check_probability("momentum", arguments["momentum"])
    validation.check_bool("nesterov", arguments["nesterov"])


def _check_adam_arguments(arguments):
    validation.check_probability("beta_1", arguments["beta_1"])
    validation.check_probability("beta_2", arguments["beta_2"])
    # epsilon = 0 gives 0/0 = NaN where a gradient element stays exactly 0,
    # created after the finiteness check, so nothing would skip it.
    validation.check_number("epsilon", arguments["epsilon"], low=0.0, low_inclusive=False)
    if "amsgrad" in arguments:
        validation.check_bool("amsgrad", arguments["amsgrad"])


def _no_check(arguments):
    return None


_POSITIVE_EPSILON = "float > 0 (0 would give 0/0 where a gradient element stays 0)."

VARIANTS = (
    Variant("VRSGD", keras.optimizers.SGD, {}, 0.0, _check_sgd_arguments, """VR-SGD: GSNR-adapted SGD (Algorithm 1), ``VR(keras.optimizers.SGD(...))``.

    Per update ``g_hat = clip(normalised GSNR, gamma, gsnr_upper_bound) * gbar``
    (no GSNR momentum by default), then Keras SGD's own step on ``g_hat``. See
    :class:`VR` for the update and the degenerate cases.""",
            {"momentum": "float in [0, 1) (0: plain SGD, the paper's Algorithm 1; see :class:`VRMomentum`)."},
            ""),
    Variant("VRMomentum", keras.optimizers.SGD, {"momentum": 0.9}, 0.0, _check_sgd_arguments,
            """VR-Momentum: GSNR-adapted SGD with momentum, ``VR(keras.optimizers.SGD(momentum=0.9))``.

    The VR rule of Algorithm 1 on a heavy-ball base (the paper's Section 4.2):
    ``g_hat`` as for :class:`VRSGD`, then Keras SGD's momentum step
    ``v <- momentum * v - learning_rate * g_hat``, ``w <- w + v``.""",
            {"momentum": "float in [0, 1) (0.9)."}, ""),
    Variant("VRAdam", keras.optimizers.Adam, {}, 0.9, _check_adam_arguments, """VR-Adam: GSNR-adapted Adam (Algorithm 3), ``VR(keras.optimizers.Adam(...), gsnr_momentum=0.9)``.

    Per update, ``p_t = beta_3 p_{t-1} + (1 - beta_3) r`` with the clipped,
    normalised GSNR ``r``, ``g_hat = p_t / (1 - beta_3**t) * gbar``, then Keras
    Adam's own step on ``g_hat``.

    One difference from Algorithm 3, inherited from Keras's Adam: the
    denominator is ``sqrt(v_t) + epsilon`` with the bias correction folded into
    the learning rate, ``w <- w - lr * sqrt(1 - beta_2**t) / (1 - beta_1**t) *
    m_t / (sqrt(v_t) + epsilon)``, i.e. ``epsilon`` is added before the
    second-moment bias correction, where Algorithm 3 writes ``m_hat /
    (sqrt(v_hat) + epsilon)``. The two agree up to a rescaling of ``epsilon`` by
    ``sqrt(1 - beta_2**t)`` (which matters only in the first steps and where
    ``sqrt(v)`` is comparable to ``epsilon``).""",
            {"epsilon": _POSITIVE_EPSILON},
            '''        Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.'''),
    Variant("VRLAMB", LAMB, {}, 0.9, _check_adam_arguments, """VR-LAMB: GSNR-adapted LAMB (Algorithm 5), ``VR(LAMB(...), gsnr_momentum=0.9)``.

    ``g_hat`` as for :class:`VRAdam`, then this package's
    :class:`~tf_largebatch.optimizers.LAMB` step on ``g_hat`` (Adam moments with
    bias correction, ``m_hat / (sqrt(v_hat) + epsilon) + weight_decay * w``, the
    layer-wise trust ratio).""",
            {"epsilon": "float > 0 (1e-6 as the paper and NVIDIA)."},
            '''        You et al., "Large Batch Optimization for Deep Learning: Training BERT
            in 76 minutes", ICLR 2020 (LAMB).'''),
    Variant("VRLARS", LARS, {}, 0.0, _no_check, """VR-LARS: GSNR-adapted LARS, ``VR(LARS(...))``.

    The VR rule of Algorithm 1 (no GSNR momentum by default) on a LARS base
    (the paper's Section 4.2): ``g_hat`` as for :class:`VRSGD`, then this
    package's :class:`~tf_largebatch.optimizers.LARS` step on ``g_hat``.""", {"trust_ratio_denominator": "``\"norm_of_sum\"`` or ``\"sum_of_norms\"``, see "
                                      ":class:`~tf_largebatch.optimizers.LARS`."},
            '''        You, Gitman, Ginsburg, "Large Batch Training of Convolutional
            Networks", 2017 (LARS).'''),
)


def argument_docs(cls):
    """``{argument: entry}`` from the ``Args:`` section of ``cls``'s docstring.

    Each entry is ``"name: text"`` with its continuation lines, indented for a
    class docstring (8 spaces, continuations 12).
    """
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    entries, current, inside = {}, None, False
    for line in lines:
        if line.strip() == "Args:" and not line.startswith(" "):
            inside = True
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):
            break
        match = re.match(r"^    (\w+):(.*)$", line)
        if match:
            current = match.group(1)
            entries.setdefault(current, [f"        {current}:{match.group(2)}"])
        elif current is not None and line.strip():
            entries[current].append("    " + line)
    return {name: "\n".join(text) for name, text in entries.items()}


def _inner_parameters(variant):
    """The inner constructor's parameters the variant lists, with the variant's defaults."""
    parameters = []
    for parameter in inspect.signature(variant.inner_class.__init__).parameters.values():
        if (parameter.name in ("self", "name") + WRAPPER_ARGUMENTS
                or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)):
            continue
        default = variant.defaults.get(parameter.name, parameter.default)
        parameters.append(parameter.replace(kind=parameter.POSITIONAL_OR_KEYWORD, default=default))
    unknown = set(variant.defaults) - {p.name for p in parameters}
    if unknown:
        raise ValueError(f"{variant.name}: defaults for arguments {sorted(unknown)} that "
                         f"{variant.inner_class.__name__} does not take")
    return parameters


def variant_signature(variant):
    """``__init__``'s signature: the inner class's arguments, then the VR ones, ``name``, ``**kwargs``."""
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    own = [inspect.Parameter("gamma", keyword, default=0.1),
           inspect.Parameter("gsnr_momentum", keyword, default=variant.gsnr_momentum),
           inspect.Parameter("gsnr_upper_bound", keyword, default=1.0),
           inspect.Parameter("second_moment_dtype", keyword, default="float32"),
           inspect.Parameter("gsnr_refresh_every", keyword, default=1),
           inspect.Parameter("name", keyword, default=variant.name.lower())]
    return inspect.Signature([inspect.Parameter("self", keyword)] + _inner_parameters(variant) + own
                             + [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])


def variant_docstring(variant):
    """The variant's docstring: its summary, the inner class's argument descriptions, the VR ones."""
    inner_docs = argument_docs(variant.inner_class)
    entries = []
    for parameter in _inner_parameters(variant):
        if parameter.name in variant.argument_notes:
            entries.append(f"        {parameter.name}: {variant.argument_notes[parameter.name]}")
        elif parameter.name in inner_docs:
            entry = inner_docs[parameter.name]
            if parameter.name in variant.defaults:
                entry += f"\n            {variant.name}'s default: ``{variant.defaults[parameter.name]!r}``."
            entries.append(entry)
        elif parameter.name not in INNER_KEYWORDS:
            raise ValueError(f"{variant.inner_class.__name__}'s docstring does not describe `{parameter.name}`")
    source = "keras" if variant.inner_class.__module__.startswith("keras") else "tf_largebatch"
    doc = (f"{variant.summary}\n\n    Wraps :class:`{source}.optimizers.{variant.inner_class.__name__}`;"
           " its arguments below are passed to it.\n\n{{vr_samples_note}}\n\n    Args:\n"
           + "\n".join(entries) + "\n{{vr_gsnr_args}}\n{{vr_wrapper_keywords}}\n        name: string.\n\n"
           "    References:\n{{vr_references}}\n" + (variant.references + "\n" if variant.references else ""))
    return fill(doc, _VR_TEXTS)


class _VariantBase(VR):
    """What every named variant shares: the flat config and its inverse.

    A variant's config lists the inner optimizer's arguments next to the VR
    ones, like its constructor (not a nested ``inner_optimizer``).
    """

    variant = None

    @classmethod
    def inner_optimizer_class(cls):
        """The base optimizer class this variant wraps."""
        return cls.variant.inner_class

    def get_config(self):
        inner_config = self.inner_optimizer.get_config()
        config = {key: value for key, value in inner_config.items() if key not in ("name",) + WRAPPER_ARGUMENTS}
        config.update(self._wrapper_config())
        config.update({key: getattr(self, key) for key in GSNR_ARGUMENTS})
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = keras.saving.deserialize_keras_object(config["learning_rate"],
                                                                            custom_objects=custom_objects)
        return cls(**config)


def _variant_init(variant, signature):
    inner_names = tuple(p.name for p in _inner_parameters(variant))

    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        extra = arguments.pop("kwargs")
        variant.check(arguments)
        wrapper_kwargs = {key: extra.pop(key) for key in WRAPPER_ARGUMENTS if key in extra}
        inner_arguments = {**{name: arguments[name] for name in inner_names}, **extra}
        validation.check_learning_rate(inner_arguments.get("learning_rate"))
        validation.check_base_keywords(inner_arguments)
        VR.__init__(self, variant.inner_class(**inner_arguments), gamma=arguments["gamma"],
                    gsnr_momentum=arguments["gsnr_momentum"], gsnr_upper_bound=arguments["gsnr_upper_bound"],
                    second_moment_dtype=arguments["second_moment_dtype"],
                    gsnr_refresh_every=arguments["gsnr_refresh_every"], name=arguments["name"], **wrapper_kwargs)

    __init__.__signature__ = signature
    __init__.__qualname__ = f"{variant.name}.__init__"
    return __init__


def make_variant(variant):
    """The class of one :data:`VARIANTS` row, registered for Keras serialization."""
    cls = type(variant.name, (_VariantBase,), {
        "__module__": __name__,
        "__qualname__": variant.name,
        "__doc__": variant_docstring(variant),
        "__init__": _variant_init(variant, variant_signature(variant)),
        "variant": variant,
    })
    return keras.saving.register_keras_serializable(package="tf_largebatch")(cls)


VRSGD, VRMomentum, VRAdam, VRLAMB, VRLARS = (make_variant(variant) for variant in VARIANTS)
