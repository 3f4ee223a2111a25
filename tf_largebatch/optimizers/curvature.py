"""Curvature-based layer-wise learning rates: MCLR and PercentDelta.

Gao and Zhong, "Study on the Large Batch Size Training of Neural Networks Based
on the Second Order Gradient" (the "curvature paper", §4)
approximates the curvature radius of weight ``w_i`` near a minimum by
``R_i ~ |w_i / (dL/dw_i)|`` (eq. 17) and sets each layer's learning rate from a
statistic of the ``R_i`` of that layer:

* MCLR, the median-curvature learning rate (eq. 20-22)::

      eta_l = gamma * median|w| / (median|g| + beta * median|w|)

  with ``beta`` the weight-decay coefficient (``beta = 0`` gives eq. 20-21);
* PercentDelta (Abuelhaija 2017, as written in eq. 24)::

      eta_l = gamma * size(w) / ||g / w||_1

  i.e. ``gamma`` over the mean relative gradient ``mean|g_i / w_i|``, so that an
  SGD step changes the layer's weights by ``gamma`` of themselves on average.

Both estimates fail, the paper says, when ``w -> 0`` (eq. 18) or
``dL/dw -> 0`` (eq. 19). The functions below give a defined, finite rate in
those cases (see each function); nothing in them branches in Python on tensor
values, so everything compiles under XLA with static shapes.
"""

import keras
import tensorflow as tf

from tf_largebatch import validation
from tf_largebatch.optimizers import rules
from tf_largebatch.optimizers.docstrings import document
from tf_largebatch.optimizers.layerwise import LayerwiseOptimizer


# --------------------------------------------------------------------- math
def median(x):
    """Median of all elements of ``x`` in float32, ``keras.ops.median`` (like ``np.median``).

    For an even number of elements it is the mean of the two middle ones. It
    compiles under XLA (static shapes). ``x`` must not be empty (the optimizers
    leave 0-size variables out before any per-variable rule).
    """
    x = rules.as_float32(x)
    if x.shape.num_elements() == 0:
        raise ValueError("`x` must have at least one element to take its median. Received an empty tensor.")
    return keras.ops.median(x)


def median_curvature_rate(weight, gradient, *, gamma, weight_decay=0.0):
    """MCLR's layer-wise rate ``gamma * median|w| / (median|g| + beta * median|w|)``.

    This is ``gamma`` times the median curvature radius ``R_m`` of eq. 20 (eq. 22
    with weight decay ``beta``). The failure cases of eq. 18-19 fall back to a
    rate of 1 (the plain global learning rate), the rule the package's trust
    ratio uses for zero norms (LARS): ``median|w| = 0`` (a zero-initialised bias,
    or more than half the weights exactly zero) would otherwise freeze the layer
    at a zero rate forever, and ``median|g| = 0`` with ``beta = 0`` would give an
    infinite one. A small but non-zero ``median|g|`` is *not* a failure: the rate
    is then large but the step ``rate * g`` is invariant to the gradient's scale,
    as in LARS.

    Args:
        weight: the variable's value ``w``.
        gradient: its gradient ``g`` (without weight decay).
        gamma: float > 0, the paper's ``gamma`` (eq. 21).
        weight_decay: float >= 0, the paper's ``beta`` (eq. 22).

    Returns:
        A float32 scalar.

    References:
        Curvature paper, eq. (17), (20)-(22).
    """
    weight_median = median(tf.abs(rules.as_float32(weight)))
    gradient_median = median(tf.abs(rules.as_float32(gradient)))
    return rules.trust_ratio(
        weight_median,
        gradient_median + weight_decay * weight_median,
        trust_coefficient=gamma,
    )


def percent_delta_rate(weight, direction, *, gamma, weight_floor=1e-3):
    """PercentDelta's layer-wise rate ``gamma * size(w) / ||d / w||_1`` (eq. 24).

    ``d`` is the direction the step will take (the gradient, plus coupled weight
    decay if any), so ``mean|rate * d_i / w_i| = gamma``: every step changes the
    layer's weights by the fraction ``gamma`` on average (the "percent delta").

    The ``w -> 0`` failure (eq. 18) is guarded in a scale-free way: each
    ``|w_i|`` is floored at ``weight_floor * mean|w|``. Without a floor a single
    tiny weight dominates the L1 sum (for Gaussian weights ``E[1/|w|]`` diverges)
    and freezes the layer. Elements whose floored weight is still zero (only
    possible with ``weight_floor = 0``, or when every weight is zero) are left
    out of both ``size(w)`` and the sum. A layer with no element left, or with a
    zero direction (eq. 19), gets a rate of 1, as in the trust ratio. Multiplying
    ``w`` or ``d`` by any ``c > 0`` scales the rate by ``c`` or ``1/c`` exactly.

    Args:
        weight: the variable's value ``w``.
        direction: the update direction ``d``.
        gamma: float > 0, the target mean relative change per step.
        weight_floor: float >= 0, relative floor on ``|w_i|`` (see above).

    Returns:
        A float32 scalar.

    References:
        Curvature paper, eq. (24); Abuelhaija, "Proportionate Gradient Updates
        with PercentDelta", 2017.
    """
    weight = tf.abs(rules.as_float32(weight))
    direction = tf.abs(rules.as_float32(direction))
    floor = weight_floor * tf.reduce_mean(weight)
    weight = tf.maximum(weight, floor)
    valid = weight > 0
    safe_weight = tf.where(valid, weight, tf.ones_like(weight))
    relative = tf.where(valid, direction / safe_weight, tf.zeros_like(weight))
    count = tf.reduce_sum(tf.cast(valid, tf.float32))
    return rules.trust_ratio(count, tf.reduce_sum(relative), trust_coefficient=gamma)


# ---------------------------------------------------------------- optimizers
_COMMON_ARGS = """momentum: float in [0, 1), heavy-ball momentum on the scaled step
            (LARS's placement; the curvature paper does not say). ``0`` gives
            the paper's eq. (11) step.
        weight_decay: optional float >= 0, coupled L2 weight decay added to the
            gradient and scaled by the layer rate with it,
            ``w <- w - lr * eta_l * (g + weight_decay * w)`` (not Keras's
            decoupled ``w <- w - lr * wd * w``); MCLR's ``eta_l`` also has it in
            its denominator (eq. 22).
        exclude_from_weight_decay: ``None`` or regular expressions searched in
            ``variable.path``; matching variables get no weight decay.
        exclude_from_layer_adaptation: ``None`` (the weight-decay list) or
            regular expressions searched in ``variable.path``; matching
            variables (e.g. ``["bias", "gamma", "beta"]``) use rate 1, i.e. plain
            momentum SGD with ``learning_rate``. ``[]`` adapts every variable."""

_SCALES = """The two scales. ``learning_rate`` is an SGD learning rate: variables
    without a layer-wise rate (excluded ones, and the failure cases, e.g. a
    zero-initialised bias) take the plain momentum-SGD step
    ``learning_rate * g``, whose effective rate is
    ``learning_rate / (1 - momentum)``. ``learning_rate * gamma`` is
    dimensionless: the fraction of the layer's weights an adapted layer moves
    per step (before momentum's ``1 / (1 - momentum)``). The defaults
    (``learning_rate=0.1``, ``gamma=0.1``, ``momentum=0.9``) keep both in a
    range that trains: with ``learning_rate=1`` the fallback variables take
    SGD steps with an effective rate of 10 and diverge, whatever ``gamma``."""


@keras.saving.register_keras_serializable(package="tf_largebatch")
class MCLR(LayerwiseOptimizer):
    """Median-curvature learning rate (MCLR; curvature paper eq. 20-22).

    Per variable (the paper's "group", a layer), with ``g`` the global mean
    gradient over all replicas and micro-batches and ``beta = weight_decay``::

        eta_l = gamma * median|w| / (median|g| + beta * median|w|)    eq. (21)-(22)
        v    <- momentum * v + learning_rate * eta_l * (g + beta * w)
        w    <- w - v

    ``eta_l`` is ``gamma`` times the median curvature radius ``R_m`` (eq. 20/22).
    The paper takes the medians of the weights and gradients; since it writes
    ``R_m = |w_m / g_m|`` of signed medians, which is ~0 for any zero-centred
    layer, we take medians of the magnitudes, as the approximation of
    ``median_i |w_i / g_i|`` intends. ``learning_rate`` (which may be a schedule)
    multiplies ``eta_l``, like the global rate in LARS: the paper's ``eta_g =
    gamma * R_m`` is the special case ``learning_rate = 1``. Failure cases
    (eq. 18-19): see :func:`median_curvature_rate`.

    {{scales}} For MCLR the fraction is ``learning_rate * gamma`` of
    ``median|w|`` at the element with the median gradient.

    The paper found MCLR on a par with LARS up to batch size ~8192 and does not
    recommend it beyond (§4.2); it gives no value of ``gamma``.

    Args:
        learning_rate: float >= 0, a ``keras.optimizers.schedules`` schedule, or
            a callable; the global rate multiplying ``eta_l``, and the SGD rate
            of variables without a layer-wise rate.
        gamma: float > 0, the paper's ``gamma`` (eq. 21): the fraction of the
            median curvature radius taken per step (times ``learning_rate``).
        {{common_args}}
        {{base_optimizer_keyword_args}}

    References:
        Gao and Zhong, "Study on the Large Batch Size Training of Neural
            Networks Based on the Second Order Gradient", eq. (11), (17)-(22), §4.2.
        You, Gitman, Ginsburg 2017, "Large Batch Training of Convolutional
        Networks" (LARS, Algorithm 1) for the momentum placement.
    """

    momentum_placement = "step"

    def __init__(
        self,
        learning_rate=0.1,
        gamma=0.1,
        momentum=0.9,
        weight_decay=None,
        exclude_from_weight_decay=None,
        exclude_from_layer_adaptation=None,
        name="mclr",
        **kwargs,
    ):
        super().__init__(
            learning_rate,
            weight_decay=weight_decay,
            exclude_from_weight_decay=exclude_from_weight_decay,
            exclude_from_layer_adaptation=exclude_from_layer_adaptation,
            name=name,
            **kwargs,
        )
        self.momentum = validation.check_probability("momentum", momentum)
        self.gamma = validation.check_number("gamma", gamma, low=0.0, low_inclusive=False)

    def _layer_rate(self, variable, gradient, update, weight_decay):
        return median_curvature_rate(variable, gradient, gamma=self.gamma, weight_decay=weight_decay)

    def get_config(self):
        config = super().get_config()
        config.update({"gamma": self.gamma, "momentum": self.momentum})
        return config


@keras.saving.register_keras_serializable(package="tf_largebatch")
class PercentDelta(LayerwiseOptimizer):
    """PercentDelta layer-wise learning rate (curvature paper eq. 24).

    Per variable, with ``d = g + weight_decay * w`` the step direction::

        eta_l = gamma * size(w) / ||d / w||_1                      eq. (24)
        v    <- momentum * v + learning_rate * eta_l * d
        w    <- w - v

    Without momentum each step changes the layer's weights by the fraction
    ``learning_rate * gamma`` on average (``mean|dw_i / w_i|``).
    The paper writes eq. (24) for the gradient alone; we use the whole direction
    (gradient plus weight decay) so that this stays true with weight decay.
    ``learning_rate`` (which may be a schedule) multiplies ``eta_l`` as in LARS.
    Failure cases (eq. 18-19): see :func:`percent_delta_rate`.

    {{scales}}

    Args:
        learning_rate: float >= 0, a ``keras.optimizers.schedules`` schedule, or
            a callable; the global rate multiplying ``eta_l``, and the SGD rate
            of variables without a layer-wise rate.
        gamma: float > 0, target mean relative change of the weights per step
            (times ``learning_rate``).
        weight_floor: float >= 0, each ``|w_i|`` is floored at
            ``weight_floor * mean|w|`` in ``||d / w||_1`` (guards eq. 18 without
            an absolute epsilon); ``0`` leaves out exactly-zero weights only.
        {{common_args}}
        {{base_optimizer_keyword_args}}

    References:
        Curvature paper, eq. (24) and §4.3; Abuelhaija, "Proportionate Gradient
        Updates with PercentDelta", 2017. You et al. 2017 (LARS, Algorithm 1)
        for the momentum placement.
    """

    momentum_placement = "step"

    def __init__(
        self,
        learning_rate=0.1,
        gamma=0.1,
        momentum=0.9,
        weight_floor=1e-3,
        weight_decay=None,
        exclude_from_weight_decay=None,
        exclude_from_layer_adaptation=None,
        name="percent_delta",
        **kwargs,
    ):
        super().__init__(
            learning_rate,
            weight_decay=weight_decay,
            exclude_from_weight_decay=exclude_from_weight_decay,
            exclude_from_layer_adaptation=exclude_from_layer_adaptation,
            name=name,
            **kwargs,
        )
        self.momentum = validation.check_probability("momentum", momentum)
        self.gamma = validation.check_number("gamma", gamma, low=0.0, low_inclusive=False)
        self.weight_floor = validation.check_number("weight_floor", weight_floor, low=0.0)

    def _layer_rate(self, variable, gradient, update, weight_decay):
        return percent_delta_rate(variable, update, gamma=self.gamma, weight_floor=self.weight_floor)

    def get_config(self):
        config = super().get_config()
        config.update({"gamma": self.gamma, "momentum": self.momentum, "weight_floor": self.weight_floor})
        return config


for _cls in (MCLR, PercentDelta):
    document(common_args=_COMMON_ARGS, scales=_SCALES)(_cls)
del _cls
