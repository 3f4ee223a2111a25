"""VRGD: GSNR-based variance-reduced optimizers (VR-SGD, VR-Adam, VR-LAMB, ...).

Jiang et al., "Accelerating Large Batch Training via Gradient Signal to Noise
Ratio (GSNR)" (``shared/papers/vrgd_gsnr_large_batch.txt``), Algorithms 1, 3, 5.
The math is in :mod:`tf_largebatch.optimizers.gsnr`; the replica plumbing (one
all-reduce carrying both moments, replica-local accumulators) in
:mod:`tf_largebatch.optimizers.base`. This module is the Keras surface.
"""

import keras
import tensorflow as tf

from tf_largebatch import validation
from tf_largebatch.optimizers import gsnr, keras_seam, rules
from tf_largebatch.optimizers.base import LargeBatchOptimizer, apply_reduced_gradients

#: Base-optimizer keyword arguments that belong to the VR wrapper (they act on the
#: per-replica gradient samples); every other one belongs to the inner optimizer.
WRAPPER_ARGUMENTS = ("use_ema", "ema_momentum", "ema_overwrite_frequency", "gradient_accumulation_steps",
                     "loss_scale_factor", "nonfinite_gradients")
_INNER_ARGUMENTS = ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm")


@keras.saving.register_keras_serializable(package="tf_largebatch")
class VR(LargeBatchOptimizer):
    """Wraps any Keras optimizer and feeds it the GSNR-adapted mean gradient.

    Per step, from ``k`` gradient samples (``k`` = replicas in sync x
    ``gradient_accumulation_steps``; under ``MirroredStrategy``, ``TPUStrategy``
    or ``MultiWorkerMirroredStrategy`` each replica's gradient is a sample, and
    with accumulation each micro-batch is one too, so VR also works on a single
    device), per variable and element-wise (:mod:`~tf_largebatch.optimizers.gsnr`)::

        gbar, s2 = mean and variance of the k samples
        r        = clip(GSNR / mean_variable(GSNR), gamma, upper)
        p_t      = gsnr_momentum * p_{t-1} + (1 - gsnr_momentum) * r
        g_hat    = p_t / (1 - gsnr_momentum**t) * gbar
        inner optimizer's own update with g_hat

    Both moments travel in the one all-reduce of the step; nothing is reduced
    twice. The wrapper owns gradient accumulation, EMA and ``loss_scale_factor``;
    the inner optimizer keeps everything else (its learning rate and schedule,
    ``weight_decay``, ``clipnorm``/``global_clipnorm``, which act on ``g_hat``).

    With the default ``gsnr_upper_bound=1`` (Algorithm 1), the factor is at most
    1: no element ever takes a larger step than the base optimizer would give it,
    and low-GSNR elements take steps down to ``gamma`` times smaller. Raising the
    upper bound lets high-GSNR elements move faster than the base optimizer (the
    paper's Figure 2 intuition); it then changes the effective learning rate and
    usually wants a smaller one. ``gamma=1`` makes VR-X equal to X exactly.

    Degenerate statistics are finite and documented in
    :mod:`~tf_largebatch.optimizers.gsnr` (identical samples give the factor
    ``gsnr_upper_bound``; a single-element variable or an all-zero gradient gives
    the base optimizer's step).

    Args:
        inner_optimizer: any Keras optimizer instance (``keras.optimizers.SGD``,
            ``Adam``, ``AdamW``, ``Lion``, this package's ``LARS``/``LAMB``/...),
            not yet built, without its own ``gradient_accumulation_steps`` or
            ``use_ema`` (set those on the wrapper).
        gamma: float in (0, 1], lower clip bound of the normalised GSNR (paper:
            0.1 for every experiment).
        gsnr_momentum: float in [0, 1), the paper's beta_3 (0 for VR-SGD,
            VR-Momentum and VR-LARS, 0.9 for VR-Adam and VR-LAMB).
        gsnr_upper_bound: float >= gamma, upper clip bound (paper: 1).
        use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor: as
            for any Keras optimizer.
        nonfinite_gradients: ``"skip"`` (default: a step whose all-reduced
            statistics are not finite changes no weight and no state, of the
            wrapper or the inner optimizer) or ``"raise"``.
        gradient_accumulation_steps: int >= 2 or None. Each micro-batch is a
            gradient sample; required (or >= 2 replicas) since the variance of a
            single sample is undefined.
        name: string.

    References:
        Jiang et al., "Accelerating Large Batch Training via Gradient Signal to
        Noise Ratio (GSNR)", Algorithms 1, 3, 5 and eq. (7)-(10).
        Liu et al., "Understanding Why Neural Networks Generalize Well Through
        GSNR of Parameters", ICLR 2020.
    """

    def __init__(self, inner_optimizer, gamma=0.1, gsnr_momentum=0.0, gsnr_upper_bound=1.0, name="vr", **kwargs):
        for argument in _INNER_ARGUMENTS:
            if kwargs.get(argument) is not None:
                raise ValueError(
                    f"VR does not take `{argument}`: set it on the inner optimizer, which applies it to the "
                    f"GSNR-adapted gradient. Received: {argument}={kwargs[argument]!r}"
                )
            kwargs.pop(argument, None)
        kwargs.pop("learning_rate", None)
        super().__init__(learning_rate=0.0, name=name, **kwargs)
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
        for argument in ("gradient_accumulation_steps", "use_ema"):
            if getattr(inner_optimizer, argument):
                raise ValueError(
                    f"Set `{argument}` on the VR optimizer, not on its inner optimizer "
                    f"(received inner {argument}={getattr(inner_optimizer, argument)!r})."
                )
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
        step = self.iterations + 1
        adapted = []
        rows = self._empty_statistic_rows()
        for (index, mean, variance), gradient in zip(self._sample_moments(statistics, trainable_variables),
                                                      statistics[0]):
            factor, rows[index] = gsnr.gsnr_factor(mean, variance, self.gamma, self.gsnr_upper_bound)
            if self._gsnr_momentums is not None:
                slot = self._gsnr_momentums[index]
                momentum = rules.moving_average(slot.value, factor, self.gsnr_momentum)
                slot.assign(momentum)
                factor = rules.bias_correction(momentum, self.gsnr_momentum, step)
            adapted.append(tf.cast(factor * mean, gradient.dtype))
        self._gradient_statistics.assign(tf.stack(rows))
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


class _NamedVR(VR):
    """A VR optimizer around a fixed base class, built from the base's own arguments.

    ``VRAdam(learning_rate=1e-3, beta_1=0.9, weight_decay=..., gamma=0.1)`` is
    ``VR(Adam(learning_rate=1e-3, beta_1=0.9, weight_decay=...), gamma=0.1,
    gsnr_momentum=0.9)``: wrapper arguments (accumulation, EMA) go to the wrapper,
    all others to the base optimizer. The config is flat, like the constructor.
    """

    _default_inner_arguments = {}

    @classmethod
    def _inner_class(cls):
        raise NotImplementedError

    def __init__(self, gamma, gsnr_momentum, gsnr_upper_bound, name, **kwargs):
        wrapper_kwargs = {key: kwargs.pop(key) for key in WRAPPER_ARGUMENTS if key in kwargs}
        inner_kwargs = {**self._default_inner_arguments, **kwargs}
        _check_inner_arguments(inner_kwargs)
        inner = self._inner_class()(**inner_kwargs)
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


def _check_inner_arguments(kwargs):
    """Keras's SGD and Adam barely check their arguments; ours must fail clearly."""
    validation.check_learning_rate(kwargs.get("learning_rate", 0.0))
    for name in ("weight_decay", "epsilon"):
        validation.check_number(name, kwargs.get(name), low=0.0, allow_none=True)
    for name in ("momentum", "beta_1", "beta_2"):
        if name in kwargs:
            validation.check_probability(name, kwargs[name])


def _named_vr(class_name, inner_class, default_gsnr_momentum, default_learning_rate, inner_defaults=None, doc=""):
    """Defines ``VRSGD``, ``VRAdam``, ... : a :class:`VR` with a fixed base class."""

    def __init__(self, learning_rate=default_learning_rate, gamma=0.1, gsnr_momentum=default_gsnr_momentum,
                 gsnr_upper_bound=1.0, name=None, **kwargs):
        _NamedVR.__init__(self, gamma, gsnr_momentum, gsnr_upper_bound, name or class_name.lower(),
                          learning_rate=learning_rate, **kwargs)

    namespace = {
        "__init__": __init__,
        "__doc__": doc,
        "__module__": __name__,
        "_default_inner_arguments": dict(inner_defaults or {}),
        "_inner_class": classmethod(lambda cls: inner_class()),
    }
    cls = type(class_name, (_NamedVR,), namespace)
    return keras.saving.register_keras_serializable(package="tf_largebatch")(cls)


def _keras_sgd():
    return keras.optimizers.SGD


def _keras_adam():
    return keras.optimizers.Adam


def _lamb():
    from tf_largebatch.optimizers.lamb import LAMB

    return LAMB


def _lars():
    from tf_largebatch.optimizers.lars import LARS

    return LARS


_VARIANT_DOC = """{title}

``{name}(learning_rate, ..., gamma=0.1, gsnr_momentum={momentum}, gsnr_upper_bound=1.0)``
is ``VR({base}(learning_rate, ...), gamma, gsnr_momentum, gsnr_upper_bound)``:
it takes every keyword argument of ``{base}``; ``gradient_accumulation_steps``,
``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency`` and
``loss_scale_factor`` go to the VR wrapper, everything else to ``{base}``.
See :class:`VR` for the update, the meaning of ``gamma``/``gsnr_upper_bound``
and the k >= 2 requirement.

References:
    Jiang et al., "Accelerating Large Batch Training via Gradient Signal to
    Noise Ratio (GSNR)", {algorithm}.
"""

VRSGD = _named_vr(
    "VRSGD", _keras_sgd, 0.0, 0.01, {"momentum": 0.0},
    _VARIANT_DOC.format(title="VR-SGD: GSNR-adapted plain SGD.", name="VRSGD", momentum=0.0,
                        base="keras.optimizers.SGD", algorithm="Algorithm 1"),
)
VRMomentum = _named_vr(
    "VRMomentum", _keras_sgd, 0.0, 0.01, {"momentum": 0.9},
    _VARIANT_DOC.format(title="VR-Momentum: GSNR-adapted SGD with momentum (default momentum 0.9).",
                        name="VRMomentum", momentum=0.0, base="keras.optimizers.SGD",
                        algorithm="Section 4.2 (same rule as Algorithm 1, momentum base)"),
)
VRAdam = _named_vr(
    "VRAdam", _keras_adam, 0.9, 0.001, None,
    _VARIANT_DOC.format(title="VR-Adam: GSNR-adapted Adam.", name="VRAdam", momentum=0.9,
                        base="keras.optimizers.Adam", algorithm="Algorithm 3"),
)
VRLAMB = _named_vr(
    "VRLAMB", _lamb, 0.9, 0.001, None,
    _VARIANT_DOC.format(title="VR-LAMB: GSNR-adapted LAMB.", name="VRLAMB", momentum=0.9,
                        base="tf_largebatch.optimizers.LAMB", algorithm="Algorithm 5"),
)
VRLARS = _named_vr(
    "VRLARS", _lars, 0.0, 1.0, None,
    _VARIANT_DOC.format(title="VR-LARS: GSNR-adapted LARS.", name="VRLARS", momentum=0.0,
                        base="tf_largebatch.optimizers.LARS",
                        algorithm="Section 4.2 (VR rule of Algorithm 1 on a LARS base)"),
)
