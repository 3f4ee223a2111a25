"""VRGD: GSNR-based variance-reduced optimizers (VR-SGD, VR-Adam, VR-LAMB, ...).

Jiang et al., "Accelerating Large Batch Training via Gradient Signal to Noise
Ratio (GSNR)", Algorithms 1, 3, 5. The math is in
:mod:`tf_largebatch.optimizers.gsnr`; the replica plumbing (one all-reduce
carrying both moments, replica-local accumulators) in
:mod:`tf_largebatch.optimizers.base`. This module is the Keras surface: the
generic :class:`VR` wrapper and the five named variants, each an explicit
class whose constructor lists its base optimizer's arguments.
"""

import keras
import tensorflow as tf

from tf_largebatch import validation
from tf_largebatch.optimizers import gsnr, keras_seam
from tf_largebatch.optimizers.base import LargeBatchOptimizer, apply_reduced_gradients

#: Base-optimizer keyword arguments that belong to the VR wrapper (they act on the
#: per-replica gradient samples); every other one belongs to the inner optimizer.
WRAPPER_ARGUMENTS = ("use_ema", "ema_momentum", "ema_overwrite_frequency", "gradient_accumulation_steps",
                     "loss_scale_factor", "nonfinite_gradients", "record_gradient_statistics")
_INNER_ARGUMENTS = ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm")

_SAMPLES_NOTE = """\
    The GSNR is estimated from ``k`` gradient samples per update (``k`` = replicas
    in sync x ``gradient_accumulation_steps``); ``k >= 2`` is required. The paper
    runs every experiment with ``k >= 8`` (its Section 6); with fewer samples the
    variance estimate is noisier (its relative standard error is about
    ``sqrt(2 / (k - 1))``: 100 % at ``k = 3``, 53 % at ``k = 8``), so the
    per-element factors scatter more around their expectation."""

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


def _fill_docstring(cls):
    cls.__doc__ = (cls.__doc__.replace("{{samples_note}}", _SAMPLES_NOTE)
                   .replace("{{wrapper_keywords}}", _WRAPPER_KEYWORDS_DOC)
                   .replace("{{references}}", _REFERENCES))
    return cls


@keras.saving.register_keras_serializable(package="tf_largebatch")
@_fill_docstring
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

{{samples_note}}

    Args:
        inner_optimizer: a Keras optimizer instance (``keras.optimizers.SGD``,
            ``Adam``, ``AdamW``, ``Lion``, this package's ``LARS``/``LAMB``/...),
            not yet built (the wrapper builds it on its own variables), without
            its own ``gradient_accumulation_steps`` or ``use_ema`` (set those on
            the wrapper). Its learning rate is the VR optimizer's learning rate:
            passing ``learning_rate`` to ``VR`` is an error.
        gamma: float in (0, 1], lower clip bound of the normalised GSNR (paper:
            0.1 for every experiment).
        gsnr_momentum: float in [0, 1), the paper's beta_3 (0 for VR-SGD,
            VR-Momentum and VR-LARS, 0.9 for VR-Adam and VR-LAMB).
        gsnr_upper_bound: float >= gamma, upper clip bound (paper: 1).
{{wrapper_keywords}}
            ``VR`` itself does not take these four: set them on the inner
            optimizer.
        name: string.

    References:
{{references}}
    """

    def __init__(self, inner_optimizer, gamma=0.1, gsnr_momentum=0.0, gsnr_upper_bound=1.0,
                 record_gradient_statistics=False, name="vr", **kwargs):
        for argument in _INNER_ARGUMENTS:
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
        _check_inner_optimizer(inner_optimizer)
        # Keras's own optimizers accept clipnorm=-1, loss_scale_factor=-2, use_ema="yes", ...
        # Read as attributes (get_config needs eager execution); Keras keeps a list
        # argument in a tracking wrapper, so name it as the user wrote it.
        inner_keywords = {key: getattr(inner_optimizer, key) for key in validation.BASE_KEYWORDS
                          if hasattr(inner_optimizer, key)}
        validation.check_base_keywords({key: list(value) if isinstance(value, (list, tuple)) else value
                                        for key, value in inner_keywords.items()})
        self.inner_optimizer = inner_optimizer
        self.gamma = validation.check_number("gamma", gamma, low=0.0, high=1.0, low_inclusive=False)
        self.gsnr_momentum = validation.check_probability("gsnr_momentum", gsnr_momentum)
        self.gsnr_upper_bound = validation.check_number("gsnr_upper_bound", gsnr_upper_bound, low=self.gamma)

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
            if self.gsnr_momentum > 0
            else None
        )

    # ------------------------------------------------------------ update path
    def _records_statistics(self):
        return True

    def _statistic_names(self):
        return gsnr.STATISTIC_NAMES

    def _update_from_reduced_statistics(self, statistics, trainable_variables):
        step = self.applied_updates + 1
        num_replicas = keras_seam.distribution_strategy(self).num_replicas_in_sync
        record = True if self._records_every_update() else self._statistics_requested()
        adapted = []
        rows = self._empty_statistic_rows()
        for sum_of_means, sum_of_squares, variable in zip(*statistics, trainable_variables):
            index = keras_seam.variable_index(self, variable)
            slot = None if self._gsnr_momentums is None else self._gsnr_momentums[index]
            gradient, mean, momentum, rows[index] = _adapted_gradient_function(variable)(
                sum_of_means, sum_of_squares, self._moment_shift(variable),
                None if slot is None else tf.convert_to_tensor(slot.value), step,
                num_replicas=num_replicas, num_samples=self.num_gradient_samples, lower=self.gamma,
                upper=self.gsnr_upper_bound, decay=self.gsnr_momentum,
                with_statistics=record,
            )
            if slot is not None:
                slot.assign(tf.cast(momentum, slot.dtype))
            self._remember_mean(variable, mean)
            adapted.append(tf.cast(gradient, variable.dtype))
        if record is True:
            self._store_statistics(rows)
        else:
            def store():
                self._store_statistics(rows)
                return tf.constant(True)

            tf.cond(record, store, lambda: tf.constant(False))
        apply_reduced_gradients(self.inner_optimizer, adapted, trainable_variables)

    # ------------------------------------------------------------------ config
    def _wrapper_config(self):
        config = super().get_config()
        return {key: config[key] for key in ("name",) + WRAPPER_ARGUMENTS if key in config}

    def get_config(self):
        config = self._wrapper_config()
        config.update(
            {
                "inner_optimizer": keras_seam.serialize(self.inner_optimizer),
                "gamma": self.gamma,
                "gsnr_momentum": self.gsnr_momentum,
                "gsnr_upper_bound": self.gsnr_upper_bound,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras_seam.deserialize(config.pop("inner_optimizer"), custom_objects=custom_objects)
        return cls(inner, **config)


def _check_inner_optimizer(inner_optimizer):
    if not isinstance(inner_optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            "`inner_optimizer` must be a keras.optimizers.Optimizer instance. "
            f"Received: inner_optimizer={inner_optimizer!r}"
        )
    if isinstance(inner_optimizer, VR):
        raise ValueError(
            f"VR optimizers do not nest: `inner_optimizer` is already a {type(inner_optimizer).__name__}. "
            "Wrap its base optimizer instead (e.g. VR(keras.optimizers.SGD(...)) or VRSGD(...))."
        )
    if isinstance(inner_optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError(
            f"`inner_optimizer` cannot be a {type(inner_optimizer).__name__}: wrap the VR optimizer in a "
            "LossScaleOptimizer instead (Keras does this itself under mixed_float16)."
        )
    if inner_optimizer.built:
        raise ValueError(
            f"`inner_optimizer` ({type(inner_optimizer).__name__} {inner_optimizer.name!r}) is already built on "
            f"{len(inner_optimizer.variables)} variable(s) of its own. The VR optimizer builds its inner "
            "optimizer on the variables it trains: pass a fresh, unbuilt optimizer."
        )
    for argument in ("gradient_accumulation_steps", "use_ema"):
        if getattr(inner_optimizer, argument):
            raise ValueError(
                f"Set `{argument}` on the VR optimizer, not on its inner optimizer "
                f"(received inner {argument}={getattr(inner_optimizer, argument)!r})."
            )


#: The per-variable VR transform as one XLA cluster. Keras compiles the model step
#: with XLA only on one device (``jit_compile="auto"`` turns it off under a
#: tf.distribute strategy and on CPU). Compiled on its own, the GSNR chain's
#: element-wise operations fuse into a few passes over memory; inside a Keras XLA
#: step it is simply inlined. It holds no variables (XLA under MirroredStrategy
#: refuses resources of other devices); the caller reads and assigns the GSNR momentum.
_compiled_adapted_gradient = tf.function(gsnr.adapted_gradient, jit_compile=True)

#: Device types on which large variables use the compiled function. On CPU it paid
#: in whole MirroredStrategy x4 steps (VRAdam / Adam, benchmarks/vr_step_parts.py):
#: 1.237 -> 1.201 at 1e6 parameters and 1.684 -> 1.523 at 1e7, where the
#: un-fused chain is bound by memory traffic (docs/benchmarks.md).
COMPILE_ON_DEVICE_TYPES = ("CPU", "GPU")

#: Variables from this many elements on are compiled; for smaller ones XLA's
#: launch and per-shape compile cost more than the passes it saves.
COMPILE_MIN_ELEMENTS = 2**15


def _adapted_gradient_function(variable):
    backend_variable = getattr(variable, "value", variable)  # keras.Variable -> its tf.Variable
    device = tf.DeviceSpec.from_string(getattr(backend_variable, "device", "") or "").device_type
    if device in COMPILE_ON_DEVICE_TYPES and variable.shape.num_elements() >= COMPILE_MIN_ELEMENTS:
        return _compiled_adapted_gradient
    return gsnr.adapted_gradient


class _FixedInnerVR(VR):
    """A :class:`VR` around a fixed base class, built from the base's own arguments.

    ``VRAdam(learning_rate=1e-3, beta_1=0.9, weight_decay=..., gamma=0.1)`` is
    ``VR(Adam(learning_rate=1e-3, beta_1=0.9, weight_decay=...), gamma=0.1,
    gsnr_momentum=0.9)``: wrapper arguments (accumulation, EMA, the non-finite
    policy) go to the wrapper, all others to the base optimizer. The config is
    flat, like the constructor.
    """

    @classmethod
    def inner_optimizer_class(cls):
        """The base optimizer class this variant wraps."""
        raise NotImplementedError

    def __init__(self, inner_arguments, *, gamma, gsnr_momentum, gsnr_upper_bound, name, kwargs):
        wrapper_kwargs = {key: kwargs.pop(key) for key in WRAPPER_ARGUMENTS if key in kwargs}
        inner_arguments = {**inner_arguments, **kwargs}
        validation.check_learning_rate(inner_arguments.get("learning_rate"))
        validation.check_base_keywords(inner_arguments)
        inner = self.inner_optimizer_class()(**inner_arguments)
        super().__init__(
            inner, gamma=gamma, gsnr_momentum=gsnr_momentum, gsnr_upper_bound=gsnr_upper_bound, name=name,
            **wrapper_kwargs,
        )

    def get_config(self):
        inner_config = self.inner_optimizer.get_config()
        config = {key: value for key, value in inner_config.items() if key not in ("name",) + WRAPPER_ARGUMENTS}
        config.update(self._wrapper_config())
        config.update({"gamma": self.gamma, "gsnr_momentum": self.gsnr_momentum,
                       "gsnr_upper_bound": self.gsnr_upper_bound})
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return keras_seam.optimizer_from_config(cls, config, custom_objects=custom_objects)


def _check_sgd_arguments(momentum, nesterov):
    validation.check_probability("momentum", momentum)
    validation.check_bool("nesterov", nesterov)


def _check_adam_arguments(beta_1, beta_2, epsilon):
    validation.check_probability("beta_1", beta_1)
    validation.check_probability("beta_2", beta_2)
    # epsilon = 0 gives 0/0 = NaN where a gradient element stays exactly 0,
    # created after the finiteness check, so nothing would skip it.
    validation.check_number("epsilon", epsilon, low=0.0, low_inclusive=False)


@keras.saving.register_keras_serializable(package="tf_largebatch")
@_fill_docstring
class VRSGD(_FixedInnerVR):
    """VR-SGD: GSNR-adapted SGD (Algorithm 1), ``VR(keras.optimizers.SGD(...))``.

    Per update ``g_hat = clip(normalised GSNR, gamma, gsnr_upper_bound) * gbar``
    (no GSNR momentum by default), then Keras SGD's own step on ``g_hat``. See
    :class:`VR` for the update and the degenerate cases.

{{samples_note}}

    Args:
        learning_rate: float >= 0, a schedule, or a callable.
        momentum: float in [0, 1) (0: plain SGD, the paper's Algorithm 1; see
            :class:`VRMomentum`).
        nesterov: bool, Nesterov momentum (Keras SGD's).
        gamma: float in (0, 1], lower clip bound of the normalised GSNR (0.1).
        gsnr_momentum: float in [0, 1), the paper's beta_3 (0 for VR-SGD).
        gsnr_upper_bound: float >= gamma, upper clip bound (paper: 1).
{{wrapper_keywords}}
        name: string.

    References:
{{references}}
    """

    @classmethod
    def inner_optimizer_class(cls):
        return keras.optimizers.SGD

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, gamma=0.1, gsnr_momentum=0.0,
                 gsnr_upper_bound=1.0, name="vrsgd", **kwargs):
        _check_sgd_arguments(momentum, nesterov)
        super().__init__(dict(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov), gamma=gamma,
                         gsnr_momentum=gsnr_momentum, gsnr_upper_bound=gsnr_upper_bound, name=name, kwargs=kwargs)


@keras.saving.register_keras_serializable(package="tf_largebatch")
@_fill_docstring
class VRMomentum(_FixedInnerVR):
    """VR-Momentum: GSNR-adapted SGD with momentum, ``VR(keras.optimizers.SGD(momentum=0.9))``.

    The VR rule of Algorithm 1 on a heavy-ball base (the paper's Section 4.2):
    ``g_hat`` as for :class:`VRSGD`, then Keras SGD's momentum step
    ``v <- momentum * v - learning_rate * g_hat``, ``w <- w + v``.

{{samples_note}}

    Args:
        learning_rate: float >= 0, a schedule, or a callable.
        momentum: float in [0, 1) (0.9).
        nesterov: bool, Nesterov momentum (Keras SGD's).
        gamma: float in (0, 1], lower clip bound of the normalised GSNR (0.1).
        gsnr_momentum: float in [0, 1), the paper's beta_3 (0 here).
        gsnr_upper_bound: float >= gamma, upper clip bound (paper: 1).
{{wrapper_keywords}}
        name: string.

    References:
{{references}}
    """

    @classmethod
    def inner_optimizer_class(cls):
        return keras.optimizers.SGD

    def __init__(self, learning_rate=0.01, momentum=0.9, nesterov=False, gamma=0.1, gsnr_momentum=0.0,
                 gsnr_upper_bound=1.0, name="vrmomentum", **kwargs):
        _check_sgd_arguments(momentum, nesterov)
        super().__init__(dict(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov), gamma=gamma,
                         gsnr_momentum=gsnr_momentum, gsnr_upper_bound=gsnr_upper_bound, name=name, kwargs=kwargs)


@keras.saving.register_keras_serializable(package="tf_largebatch")
@_fill_docstring
class VRAdam(_FixedInnerVR):
    """VR-Adam: GSNR-adapted Adam (Algorithm 3), ``VR(keras.optimizers.Adam(...), gsnr_momentum=0.9)``.

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
    ``sqrt(v)`` is comparable to ``epsilon``).

{{samples_note}}

    Args:
        learning_rate: float >= 0, a schedule, or a callable.
        beta_1: float in [0, 1), Adam's first-moment decay.
        beta_2: float in [0, 1), Adam's second-moment decay.
        epsilon: float > 0 (0 would give 0/0 where a gradient element stays 0).
        amsgrad: bool, Keras Adam's AMSGrad variant.
        gamma: float in (0, 1], lower clip bound of the normalised GSNR (0.1).
        gsnr_momentum: float in [0, 1), the paper's beta_3 (0.9).
        gsnr_upper_bound: float >= gamma, upper clip bound (paper: 1).
{{wrapper_keywords}}
        name: string.

    References:
{{references}}
        Kingma and Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """

    @classmethod
    def inner_optimizer_class(cls):
        return keras.optimizers.Adam

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, gamma=0.1,
                 gsnr_momentum=0.9, gsnr_upper_bound=1.0, name="vradam", **kwargs):
        _check_adam_arguments(beta_1, beta_2, epsilon)
        validation.check_bool("amsgrad", amsgrad)
        super().__init__(
            dict(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, amsgrad=amsgrad),
            gamma=gamma, gsnr_momentum=gsnr_momentum, gsnr_upper_bound=gsnr_upper_bound, name=name, kwargs=kwargs,
        )


@keras.saving.register_keras_serializable(package="tf_largebatch")
@_fill_docstring
class VRLAMB(_FixedInnerVR):
    """VR-LAMB: GSNR-adapted LAMB (Algorithm 5), ``VR(LAMB(...), gsnr_momentum=0.9)``.

    ``g_hat`` as for :class:`VRAdam`, then this package's
    :class:`~tf_largebatch.optimizers.LAMB` step on ``g_hat`` (Adam moments with
    bias correction, ``m_hat / (sqrt(v_hat) + epsilon) + weight_decay * w``, the
    layer-wise trust ratio).

{{samples_note}}

    Args:
        learning_rate: float >= 0, a schedule, or a callable.
        beta_1: float in [0, 1).
        beta_2: float in [0, 1).
        epsilon: float > 0 (1e-6 as the paper and NVIDIA).
        weight_decay: optional float >= 0, LAMB's lambda, inside the trust ratio.
        trust_ratio_bounds: ``None`` or ``(low, high)``, ``0 < low <= high``.
        exclude_from_weight_decay: regular expressions searched in
            ``variable.path``.
        exclude_from_layer_adaptation: same, for the trust ratio (see
            :class:`~tf_largebatch.optimizers.LAMB` for ``None``).
        clip_global_norm_before_moments: ``None`` or float > 0 (NVLAMB).
        trust_coefficient: float > 0 multiplying the trust ratio.
        gamma: float in (0, 1], lower clip bound of the normalised GSNR (0.1).
        gsnr_momentum: float in [0, 1), the paper's beta_3 (0.9).
        gsnr_upper_bound: float >= gamma, upper clip bound (paper: 1).
{{wrapper_keywords}}
        name: string.

    References:
{{references}}
        You et al., "Large Batch Optimization for Deep Learning: Training BERT
            in 76 minutes", ICLR 2020 (LAMB).
    """

    @classmethod
    def inner_optimizer_class(cls):
        from tf_largebatch.optimizers.lamb import LAMB

        return LAMB

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-6, weight_decay=None,
                 trust_ratio_bounds=None, exclude_from_weight_decay=None, exclude_from_layer_adaptation=None,
                 clip_global_norm_before_moments=None, trust_coefficient=1.0, gamma=0.1, gsnr_momentum=0.9,
                 gsnr_upper_bound=1.0, name="vrlamb", **kwargs):
        _check_adam_arguments(beta_1, beta_2, epsilon)
        super().__init__(
            dict(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                 weight_decay=weight_decay, trust_ratio_bounds=trust_ratio_bounds,
                 exclude_from_weight_decay=exclude_from_weight_decay,
                 exclude_from_layer_adaptation=exclude_from_layer_adaptation,
                 clip_global_norm_before_moments=clip_global_norm_before_moments,
                 trust_coefficient=trust_coefficient),
            gamma=gamma, gsnr_momentum=gsnr_momentum, gsnr_upper_bound=gsnr_upper_bound, name=name, kwargs=kwargs,
        )


@keras.saving.register_keras_serializable(package="tf_largebatch")
@_fill_docstring
class VRLARS(_FixedInnerVR):
    """VR-LARS: GSNR-adapted LARS, ``VR(LARS(...))``.

    The VR rule of Algorithm 1 (no GSNR momentum by default) on a LARS base
    (the paper's Section 4.2): ``g_hat`` as for :class:`VRSGD`, then this
    package's :class:`~tf_largebatch.optimizers.LARS` step on ``g_hat``.

{{samples_note}}

    Args:
        learning_rate: float >= 0, a schedule, or a callable (LARS's global rate).
        momentum: float in [0, 1).
        weight_decay: optional float >= 0, coupled, inside the trust ratio.
        trust_coefficient: float > 0, LARS's ``eta``.
        epsilon: float >= 0 added to the update norm in the trust ratio.
        nesterov: bool.
        trust_ratio_on: ``"gradient"`` (You et al. 2017) or ``"momentum"``
            (You et al. 2020).
        trust_ratio_bounds: ``None`` or ``(low, high)``, ``0 < low <= high``.
        exclude_from_weight_decay: regular expressions searched in
            ``variable.path``.
        exclude_from_layer_adaptation: same, for the trust ratio (see
            :class:`~tf_largebatch.optimizers.LARS` for ``None``).
        trust_ratio_denominator: ``"norm_of_sum"`` (``||g + wd w||``) or
            ``"sum_of_norms"`` (``||g|| + wd ||w||``, MLPerf's), see
            :class:`~tf_largebatch.optimizers.LARS`.
        gamma: float in (0, 1], lower clip bound of the normalised GSNR (0.1).
        gsnr_momentum: float in [0, 1), the paper's beta_3 (0 here).
        gsnr_upper_bound: float >= gamma, upper clip bound (paper: 1).
{{wrapper_keywords}}
        name: string.

    References:
{{references}}
        You, Gitman, Ginsburg, "Large Batch Training of Convolutional
            Networks", 2017 (LARS).
    """

    @classmethod
    def inner_optimizer_class(cls):
        from tf_largebatch.optimizers.lars import LARS

        return LARS

    def __init__(self, learning_rate=1.0, momentum=0.9, weight_decay=None, trust_coefficient=0.001, epsilon=0.0,
                 nesterov=False, trust_ratio_on="gradient", trust_ratio_bounds=None, exclude_from_weight_decay=None,
                 exclude_from_layer_adaptation=None, trust_ratio_denominator="norm_of_sum", gamma=0.1,
                 gsnr_momentum=0.0, gsnr_upper_bound=1.0, name="vrlars", **kwargs):
        super().__init__(
            dict(learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay,
                 trust_coefficient=trust_coefficient, epsilon=epsilon, nesterov=nesterov,
                 trust_ratio_on=trust_ratio_on, trust_ratio_bounds=trust_ratio_bounds,
                 exclude_from_weight_decay=exclude_from_weight_decay,
                 exclude_from_layer_adaptation=exclude_from_layer_adaptation,
                 trust_ratio_denominator=trust_ratio_denominator),
            gamma=gamma, gsnr_momentum=gsnr_momentum, gsnr_upper_bound=gsnr_upper_bound, name=name, kwargs=kwargs,
        )
