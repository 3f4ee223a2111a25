"""LARS: layer-wise adaptive rate scaling, in both published versions.

The SNGM paper (``shared/papers/sngm_normalized_gradient_momentum.txt``,
footnote 1 of Sec. 4.2) notes "two different versions of LARS. The first one
[You et al. 2017] normalizes gradient and the other one [You et al. 2020]
normalizes momentum. When beta = 0 and the weight decay is zero, the two
versions are the same." Both are here, selected by ``trust_ratio_on``.
"""

import keras
import tensorflow as tf

from tf_largebatch import validation
from tf_largebatch.optimizers import keras_seam, rules
from tf_largebatch.optimizers.base import compute_dtype
from tf_largebatch.optimizers.layerwise import LayerwiseOptimizer

TRUST_RATIO_ON = ("gradient", "momentum")


@keras.saving.register_keras_serializable(package="tf_largebatch")
class LARS(LayerwiseOptimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017 and 2020).

    Per variable ``w`` with global mean gradient ``g``; ``u = g + weight_decay * w``
    (no decay for variables matched by ``exclude_from_weight_decay``) and
    ``ratio(x) = trust_coefficient * phi(||w||) / (||x|| + epsilon)``, with
    ``phi`` the identity or ``clip(., low, high)`` (``trust_ratio_bounds``), ratio
    1 where a norm is zero or the variable matches
    ``exclude_from_layer_adaptation``.

    ``trust_ratio_on="gradient"`` (You, Gitman, Ginsburg 2017, Algorithm 1; the
    MLPerf ResNet-50 / TF Model Garden form), the trust ratio scales the
    gradient before the momentum, and the learning rate sits inside it::

        v <- momentum * v + learning_rate * ratio(u) * u
        w <- w - v                     (nesterov: w - (momentum * v + lr * ratio(u) * u))

    ``trust_ratio_on="momentum"`` (You et al. 2020, LAMB paper Algorithm 1),
    the trust ratio scales the averaged momentum::

        m <- momentum * m + (1 - momentum) * u
        d  = m                         (nesterov: momentum * m + (1 - momentum) * u)
        w <- w - learning_rate * ratio(d) * d

    The 2017 ratio is ``eta * ||w|| / ||g + wd * w||``; MLPerf's reference and
    the Limit-of-batch-size paper (eq. 2) write the denominator as
    ``||g|| + wd * ||w||``, its triangle-inequality upper bound: the two agree when
    ``g`` and ``w`` are parallel and otherwise this one is slightly larger. The
    2020 paper has no ``trust_coefficient``; use ``trust_coefficient=1`` for its
    exact form.

    Args:
        learning_rate: float >= 0, a schedule, or a callable (the global LR
            ``gamma_t``; typically large, e.g. 1-30 with ``trust_coefficient``
            0.001).
        momentum: float in [0, 1).
        weight_decay: optional float >= 0, coupled, inside the trust ratio.
        trust_coefficient: float > 0, ``eta`` (0.001 as You et al. 2017 / MLPerf).
        epsilon: float >= 0 added to the update norm in the trust ratio.
        nesterov: bool.
        trust_ratio_on: ``"gradient"`` (2017) or ``"momentum"`` (2020).
        trust_ratio_bounds: ``None`` or ``(low, high)``, ``0 < low <= high``: the
            SNGM paper's ``phi(z) = min(max(z, low), high)``.
        exclude_from_weight_decay: regular expressions searched in
            ``variable.path`` (ResNet: ``["bias", "batch_normalization"]``).
        exclude_from_layer_adaptation: same, for the trust ratio; ``None`` means
            the weight-decay list (as TF Model Garden).
        {{base_optimizer_keyword_args}}

    References:
        You, Gitman, Ginsburg 2017, "Large Batch Training of Convolutional
            Networks", Algorithm 1.
        You et al. 2020, "Large Batch Optimization for Deep Learning", Algorithm 1.
        Zhao et al., SNGM, Sec. 4.2, footnote 1 and eq. (10).
    """

    def __init__(
        self,
        learning_rate=1.0,
        momentum=0.9,
        weight_decay=None,
        trust_coefficient=0.001,
        epsilon=0.0,
        nesterov=False,
        trust_ratio_on="gradient",
        trust_ratio_bounds=None,
        exclude_from_weight_decay=None,
        exclude_from_layer_adaptation=None,
        name="lars",
        **kwargs,
    ):
        super().__init__(
            learning_rate,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            trust_ratio_bounds=trust_ratio_bounds,
            exclude_from_weight_decay=exclude_from_weight_decay,
            exclude_from_layer_adaptation=exclude_from_layer_adaptation,
            name=name,
            **kwargs,
        )
        self.momentum = validation.check_probability("momentum", momentum)
        self.epsilon = validation.check_number("epsilon", epsilon, low=0.0)
        self.nesterov = validation.check_bool("nesterov", nesterov)
        if trust_ratio_on not in TRUST_RATIO_ON:
            raise ValueError(
                f"`trust_ratio_on` must be one of {TRUST_RATIO_ON}. Received: trust_ratio_on={trust_ratio_on!r}"
            )
        self.trust_ratio_on = trust_ratio_on

    @property
    def _trust_ratio_epsilon(self):
        return self.epsilon

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.momentums = self._add_slots(var_list, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        dtype = compute_dtype(variable)
        learning_rate = tf.cast(learning_rate, dtype)
        gradient = tf.cast(gradient, dtype)
        momentum = self._slot(self.momentums, variable)
        update = self._with_weight_decay(gradient, variable)
        if self.trust_ratio_on == "gradient":
            scaled = learning_rate * self._layer_adapted(update, variable)
            self.assign(momentum, rules.heavy_ball(momentum, scaled, self.momentum))
            step = rules.heavy_ball(momentum, scaled, self.momentum) if self.nesterov else momentum
            self.assign_sub(variable, tf.convert_to_tensor(step))
        else:
            self.assign(momentum, rules.moving_average(momentum, update, self.momentum))
            direction = (
                rules.moving_average(momentum, update, self.momentum)
                if self.nesterov
                else tf.convert_to_tensor(momentum)
            )
            self.assign_sub(variable, learning_rate * self._layer_adapted(direction, variable))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "nesterov": self.nesterov,
                "trust_ratio_on": self.trust_ratio_on,
            }
        )
        return config


LARS.__doc__ = LARS.__doc__.replace(
    "{{base_optimizer_keyword_args}}", keras_seam.BASE_OPTIMIZER_KEYWORD_ARGS
)
