"""Layer-wise adaptation: the trust-ratio step, and layer-wise SGD/AdaGrad/RMSprop/Adam.

"The Limit of the Batch Size" (You et al. 2020, ``shared/papers/limit_of_batch_size.txt``,
Sec. 3 and Table 3) takes LARS's key feature, the layer-wise trust ratio, and puts
it on other optimizers: "+ layer-wise" multiplies each variable's update by
``||w|| / ||update||``, and "+ layer-wise and bound-ratio" clips the weight norm
in that ratio to ``[low, high]`` (like AdaBound; the SNGM paper's
``phi(z) = min(max(z, low), high)``) because the plain ratio is "either too
large or too small for Adam and RMSprop". Adam + layer-wise + bound-ratio is a
special case of LAMB.

This module holds the one piece all of them share:

* :func:`scale_by_trust_ratio`, the step ``u -> ratio(||w||, ||u||) * u`` built on
  :func:`tf_largebatch.optimizers.rules.trust_ratio` (the formula lives there only);
* :class:`LayerwiseOptimizer`, a base class whose ``update_step`` is the chain
  *base-rule direction -> + weight decay -> scale by trust ratio -> scale by -lr*,
  with the exclusion lists, bounds and validation; subclasses only write the
  direction;
* the Table 3 optimizers :class:`LayerwiseSGD`, :class:`LayerwiseAdagrad`,
  :class:`LayerwiseRMSprop`, :class:`LayerwiseAdam` (pass
  ``trust_ratio_bounds=(low, high)`` for "+ bound-ratio").

``LAMB`` (``lamb.py``) is :class:`LayerwiseAdam` with LAMB's defaults and NVLAMB
clipping; ``LARS`` (``lars.py``) uses the same base and trust-ratio step.
"""

import keras
import tensorflow as tf

from tf_largebatch import validation
from tf_largebatch.optimizers import keras_seam, rules
from tf_largebatch.optimizers.base import LargeBatchOptimizer, PathPatterns, compute_dtype


def scale_by_trust_ratio(update, variable, *, trust_coefficient=1.0, bounds=None, epsilon=0.0):
    """``update * c * phi(||w||) / (||update|| + eps)``; unchanged where a norm is 0.

    Args:
        update: the variable's update direction (per unit learning rate).
        variable: the variable (or its value) the update is for.
        trust_coefficient: ``c`` (LARS's eta; 1 for LAMB and Table 3).
        bounds: ``None`` (``phi`` = identity) or ``(low, high)`` (``phi`` = clip).
        epsilon: added to ``||update||`` in the denominator.

    References:
        You et al. 2017 (LARS), eq. for the local LR; You et al. 2020 (LAMB),
        Algorithms 1-2; SNGM paper Sec. 4.2 (phi); Limit of the Batch Size, Table 3.
    """
    ratio = rules.trust_ratio(
        rules.l2_norm(variable),
        rules.l2_norm(update),
        trust_coefficient=trust_coefficient,
        bounds=bounds,
        epsilon=epsilon,
    )
    return update * tf.cast(ratio, update.dtype)


class LayerwiseOptimizer(LargeBatchOptimizer):
    """Base of the trust-ratio optimizers: direction, weight decay, trust ratio, lr.

    Per variable ``w`` with gradient ``g`` (the global mean gradient)::

        d = self._direction(g, w)          # the base rule's step per unit lr
        u = d + weight_decay * w           # unless excluded from weight decay
        u = c * phi(||w||)/||u|| * u       # unless excluded from layer adaptation
        w = w - learning_rate * u

    Weight decay sits inside the trust ratio, as in LAMB (You et al. 2020,
    Algorithm 2) and LARS (You et al. 2017, local LR ``||w|| / ||g + wd * w||``).

    Subclasses implement ``_direction`` (and create its slots in ``build``);
    ``LARS`` overrides ``update_step`` and reuses :meth:`_with_weight_decay` and
    :meth:`_layer_adapted`.

    Args:
        learning_rate: float >= 0, a schedule, or a callable.
        weight_decay: optional float >= 0, added to the direction before the trust
            ratio.
        trust_coefficient: float > 0, ``c``.
        trust_ratio_bounds: ``None`` or ``(low, high)`` with ``0 < low <= high``:
            ``phi(||w||) = clip(||w||, low, high)`` ("bound-ratio").
        exclude_from_weight_decay: regular expressions searched in
            ``variable.path``; matching variables get no weight decay.
        exclude_from_layer_adaptation: regular expressions searched in
            ``variable.path``; matching variables get trust ratio 1. ``None``
            means the weight-decay list (as TF Model Garden's LARS).
    """

    _trust_ratio_epsilon = 0.0

    def __init__(
        self,
        learning_rate,
        *,
        weight_decay=None,
        trust_coefficient=1.0,
        trust_ratio_bounds=None,
        exclude_from_weight_decay=None,
        exclude_from_layer_adaptation=None,
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            exclude_from_weight_decay=exclude_from_weight_decay,
            **kwargs,
        )
        self.trust_coefficient = float(
            validation.check_number("trust_coefficient", trust_coefficient, low=0.0, low_inclusive=False)
        )
        self.trust_ratio_bounds = validation.check_bounds("trust_ratio_bounds", trust_ratio_bounds)
        if exclude_from_layer_adaptation is None:
            self._layer_adaptation_exclusions = list(self._weight_decay_exclusions)
        else:
            self._layer_adaptation_exclusions = validation.check_patterns(
                "exclude_from_layer_adaptation", exclude_from_layer_adaptation
            )
        self._layer_adaptation_patterns = PathPatterns(self._layer_adaptation_exclusions)

    # ------------------------------------------------------------- the chain
    def _keras_variable(self, variable):
        """The ``keras.Variable`` (with its ``path``) behind a backend variable."""
        return keras_seam.built_variables(self)[keras_seam.variable_index(self, variable)]

    def _use_layer_adaptation(self, variable):
        return not self._layer_adaptation_patterns.matches(self._keras_variable(variable))

    def _with_weight_decay(self, update, variable):
        """``update + weight_decay * w`` unless ``variable`` is excluded."""
        if self.weight_decay and self._use_weight_decay(self._keras_variable(variable)):
            return rules.add_weight_decay(update, variable, self.weight_decay)
        return update

    def _layer_adapted(self, update, variable):
        """``update`` scaled by the trust ratio unless ``variable`` is excluded."""
        if not self._use_layer_adaptation(variable):
            return update
        return scale_by_trust_ratio(
            update,
            variable,
            trust_coefficient=self.trust_coefficient,
            bounds=self.trust_ratio_bounds,
            epsilon=self._trust_ratio_epsilon,
        )

    def _direction(self, gradient, variable):
        """The base rule's update per unit learning rate; updates its slots."""
        raise NotImplementedError

    def update_step(self, gradient, variable, learning_rate):
        dtype = compute_dtype(variable)
        learning_rate = tf.cast(learning_rate, dtype)
        gradient = tf.cast(gradient, dtype)
        update = self._direction(gradient, variable)
        update = self._with_weight_decay(update, variable)
        update = self._layer_adapted(update, variable)
        self.assign_sub(variable, learning_rate * update)

    # ----------------------------------------------------------------- slots
    # ---------------------------------------------------------------- config
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "trust_coefficient": self.trust_coefficient,
                "trust_ratio_bounds": None if self.trust_ratio_bounds is None else list(self.trust_ratio_bounds),
                "exclude_from_layer_adaptation": list(self._layer_adaptation_exclusions),
            }
        )
        return config


_LAYERWISE_ARGS = """
        weight_decay: optional float >= 0, added to the direction inside the trust
            ratio (``u = d + wd * w``).
        trust_coefficient: float > 0 multiplying the trust ratio (default 1).
        trust_ratio_bounds: ``None`` for "+ layer-wise", or ``(low, high)`` with
            ``0 < low <= high`` for "+ layer-wise and bound-ratio":
            ``phi(||w||) = clip(||w||, low, high)``.
        exclude_from_weight_decay: regular expressions searched in
            ``variable.path`` (e.g. ``["bias", "layer_normalization"]``).
        exclude_from_layer_adaptation: same, for the trust ratio (ratio 1);
            ``None`` means the weight-decay list.
        {{base_optimizer_keyword_args}}"""

_TABLE3 = "You et al. 2020, \"The Limit of the Batch Size\", Sec. 3 and Table 3."


def _document(cls):
    replacements = {
        "{{layerwise_args}}": _LAYERWISE_ARGS,
        "{{table3}}": _TABLE3,
        "{{base_optimizer_keyword_args}}": keras_seam.BASE_OPTIMIZER_KEYWORD_ARGS,
    }
    for placeholder, text in replacements.items():
        cls.__doc__ = cls.__doc__.replace(placeholder, text)
    return cls


@keras.saving.register_keras_serializable(package="tf_largebatch")
@_document
class LayerwiseSGD(LayerwiseOptimizer):
    """SGD (with optional heavy-ball momentum) + layer-wise trust ratio.

    Direction ``d = m`` with ``m <- momentum * m + g`` (Nesterov:
    ``d = g + momentum * m``); ``momentum=0`` gives ``d = g``, and the trust ratio
    is the paper's "simplest form" ``||w|| / ||g||``. The learning rate multiplies
    the scaled direction, outside the momentum. For adapted variables this equals
    ``LARS(trust_ratio_on="momentum", trust_coefficient=1)``; for excluded ones the
    momentum is heavy-ball (no ``1 - momentum`` factor), as Keras's ``SGD``.

    Args:
        learning_rate: float >= 0, a schedule, or a callable.
        momentum: float in [0, 1).
        nesterov: bool.{{layerwise_args}}

    References:
        {{table3}}
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 trust_coefficient=1.0, trust_ratio_bounds=None, exclude_from_weight_decay=None,
                 exclude_from_layer_adaptation=None, name="layerwise_sgd", **kwargs):
        super().__init__(
            learning_rate, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
            trust_ratio_bounds=trust_ratio_bounds, exclude_from_weight_decay=exclude_from_weight_decay,
            exclude_from_layer_adaptation=exclude_from_layer_adaptation, name=name, **kwargs,
        )
        self.momentum = validation.check_probability("momentum", momentum)
        self.nesterov = validation.check_bool("nesterov", nesterov)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.momentums = self._add_slots(var_list, "momentum") if self.momentum else []

    def _direction(self, gradient, variable):
        if not self.momentum:
            return gradient
        momentum = self._slot(self.momentums, variable)
        self.assign(momentum, rules.heavy_ball(momentum, gradient, self.momentum))
        if self.nesterov:
            return rules.heavy_ball(momentum, gradient, self.momentum)
        return tf.convert_to_tensor(momentum)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "nesterov": self.nesterov})
        return config


@keras.saving.register_keras_serializable(package="tf_largebatch")
@_document
class LayerwiseAdagrad(LayerwiseOptimizer):
    """AdaGrad + layer-wise trust ratio.

    Direction as Keras's ``Adagrad``: ``a <- a + g**2``, ``d = g / sqrt(a + eps)``.

    Args:
        learning_rate: float >= 0, a schedule, or a callable.
        initial_accumulator_value: float >= 0, starting value of ``a``.
        epsilon: float >= 0.{{layerwise_args}}

    References:
        Duchi et al. 2011 (AdaGrad). {{table3}}
    """

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7,
                 weight_decay=None, trust_coefficient=1.0, trust_ratio_bounds=None,
                 exclude_from_weight_decay=None, exclude_from_layer_adaptation=None,
                 name="layerwise_adagrad", **kwargs):
        super().__init__(
            learning_rate, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
            trust_ratio_bounds=trust_ratio_bounds, exclude_from_weight_decay=exclude_from_weight_decay,
            exclude_from_layer_adaptation=exclude_from_layer_adaptation, name=name, **kwargs,
        )
        self.initial_accumulator_value = validation.check_number(
            "initial_accumulator_value", initial_accumulator_value, low=0.0
        )
        self.epsilon = validation.check_number("epsilon", epsilon, low=0.0)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        initializer = keras.initializers.Constant(self.initial_accumulator_value)
        self._accumulators = self._add_slots(var_list, "accumulator", initializer)

    def _direction(self, gradient, variable):
        accumulator = self._slot(self._accumulators, variable)
        self.assign_add(accumulator, tf.square(gradient))
        return gradient / tf.sqrt(accumulator + tf.cast(self.epsilon, gradient.dtype))

    def get_config(self):
        config = super().get_config()
        config.update({"initial_accumulator_value": self.initial_accumulator_value, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="tf_largebatch")
@_document
class LayerwiseRMSprop(LayerwiseOptimizer):
    """RMSprop + layer-wise trust ratio.

    Direction as Keras's ``RMSprop`` per unit lr: ``v <- rho * v + (1 - rho) * g**2``,
    ``d = g / sqrt(v + eps)`` (centered: ``v - mg**2`` with
    ``mg <- rho * mg + (1 - rho) * g``); with ``momentum > 0``,
    ``d <- momentum * mom + d`` (heavy ball, learning rate outside).

    Args:
        learning_rate: float >= 0, a schedule, or a callable.
        rho: float in [0, 1), decay of the squared-gradient average.
        momentum: float in [0, 1).
        epsilon: float >= 0.
        centered: bool.{{layerwise_args}}

    References:
        Hinton, Lecture 6e (RMSprop). {{table3}}
    """

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 weight_decay=None, trust_coefficient=1.0, trust_ratio_bounds=None,
                 exclude_from_weight_decay=None, exclude_from_layer_adaptation=None,
                 name="layerwise_rmsprop", **kwargs):
        super().__init__(
            learning_rate, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
            trust_ratio_bounds=trust_ratio_bounds, exclude_from_weight_decay=exclude_from_weight_decay,
            exclude_from_layer_adaptation=exclude_from_layer_adaptation, name=name, **kwargs,
        )
        self.rho = validation.check_probability("rho", rho)
        self.momentum = validation.check_probability("momentum", momentum)
        self.epsilon = validation.check_number("epsilon", epsilon, low=0.0)
        self.centered = validation.check_bool("centered", centered)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._velocities = self._add_slots(var_list, "velocity")
        self._average_gradients = self._add_slots(var_list, "average_gradient") if self.centered else []
        self._momentums = self._add_slots(var_list, "momentum") if self.momentum else []

    def _direction(self, gradient, variable):
        velocity = self._slot(self._velocities, variable)
        self.assign(velocity, rules.moving_average(velocity, tf.square(gradient), self.rho))
        denominator = tf.convert_to_tensor(velocity)
        if self.centered:
            average = self._slot(self._average_gradients, variable)
            self.assign(average, rules.moving_average(average, gradient, self.rho))
            denominator = denominator - tf.square(average)
        direction = gradient / tf.sqrt(denominator + tf.cast(self.epsilon, gradient.dtype))
        if self.momentum:
            momentum = self._slot(self._momentums, variable)
            self.assign(momentum, rules.heavy_ball(momentum, direction, self.momentum))
            direction = tf.convert_to_tensor(momentum)
        return direction

    def get_config(self):
        config = super().get_config()
        config.update(
            {"rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon, "centered": self.centered}
        )
        return config


@keras.saving.register_keras_serializable(package="tf_largebatch")
@_document
class LayerwiseAdam(LayerwiseOptimizer):
    """Adam + layer-wise trust ratio (with ``weight_decay``: LAMB).

    Direction in the papers' form: ``m``, ``v`` moving averages of ``g`` and
    ``g**2``, bias-corrected with the 1-based step ``iterations + 1`` (which counts
    real updates under gradient accumulation), ``d = m_hat / (sqrt(v_hat) + eps)``.
    (Keras's ``Adam`` puts ``eps`` outside the bias correction; for variables
    excluded from layer adaptation the two differ by ``eps * sqrt(1 - beta_2**t)``.)

    Args:
        learning_rate: float >= 0, a schedule, or a callable.
        beta_1: float in [0, 1).
        beta_2: float in [0, 1).
        epsilon: float >= 0.{{layerwise_args}}

    References:
        Kingma and Ba 2015 (Adam); You et al. 2020 (LAMB), Algorithm 2.
        {{table3}}
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-6,
                 weight_decay=None, trust_coefficient=1.0, trust_ratio_bounds=None,
                 exclude_from_weight_decay=None, exclude_from_layer_adaptation=None,
                 name="layerwise_adam", **kwargs):
        super().__init__(
            learning_rate, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
            trust_ratio_bounds=trust_ratio_bounds, exclude_from_weight_decay=exclude_from_weight_decay,
            exclude_from_layer_adaptation=exclude_from_layer_adaptation, name=name, **kwargs,
        )
        self.beta_1 = validation.check_probability("beta_1", beta_1)
        self.beta_2 = validation.check_probability("beta_2", beta_2)
        self.epsilon = validation.check_number("epsilon", epsilon, low=0.0)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums = self._add_slots(var_list, "momentum")
        self._velocities = self._add_slots(var_list, "velocity")

    def _direction(self, gradient, variable):
        step = self.iterations + 1
        m = self._slot(self._momentums, variable)
        v = self._slot(self._velocities, variable)
        self.assign(m, rules.moving_average(m, gradient, self.beta_1))
        self.assign(v, rules.moving_average(v, tf.square(gradient), self.beta_2))
        return rules.adam_direction(
            rules.bias_correction(tf.convert_to_tensor(m), self.beta_1, step),
            rules.bias_correction(tf.convert_to_tensor(v), self.beta_2, step),
            self.epsilon,
        )

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config
