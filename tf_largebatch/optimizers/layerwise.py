"""The layer-wise chassis: one update step with a pluggable per-variable rate.

Every layer-wise optimizer of the package is this chain, per variable ``w`` with
global mean gradient ``g`` (``wd`` is 0 for variables excluded from weight
decay, see :mod:`~tf_largebatch.optimizers.selection`)::

    u = direction(g) + wd * w          the base rule per unit learning rate
    r = layer_rate(w, g, u)            1 for variables excluded from adaptation
    s = learning_rate * r * u
    momentum_placement == "step":      v <- momentum * v + s;  w <- w - v
                                       (nesterov: w <- w - (momentum * v + s))
    momentum_placement == "direction": w <- w - s   (any momentum is the base rule's,
                                                      inside ``direction``)

* :class:`TrustRatioOptimizer` fills ``layer_rate`` with the trust ratio
  ``c * phi(||w||) / ||u||`` (the formula is
  :func:`tf_largebatch.optimizers.rules.trust_ratio`, written once) and is the
  base of LARS (``lars.py``), LAMB (``lamb.py``) and the Table 3 optimizers of
  "The Limit of the Batch Size" below: :class:`LayerwiseSGD`,
  :class:`LayerwiseAdagrad`, :class:`LayerwiseRMSprop`, :class:`LayerwiseAdam`
  ("+ layer-wise"; pass ``trust_ratio_bounds=(low, high)`` for
  "+ layer-wise and bound-ratio", ``phi = clip(., low, high)``).
* MCLR and PercentDelta (``curvature.py``) fill it with the curvature paper's
  median-curvature and PercentDelta rates.

The momentum placement is explicit because the papers differ: LARS 2017
(Algorithm 1) and the curvature optimizers put heavy-ball momentum on the scaled
step (``"step"``); LARS 2020 averages the update before the trust ratio, and the
Table 3 optimizers keep their base rule's own momentum (``"direction"``).
"""

import keras
import tensorflow as tf

from tf_largebatch import validation
from tf_largebatch.optimizers import keras_seam, rules
from tf_largebatch.optimizers.base import LargeBatchOptimizer, compute_dtype
from tf_largebatch.optimizers.docstrings import document
from tf_largebatch.optimizers.selection import VariableSelection
from tf_largebatch.optimizers.slots import tf_variable

#: Where momentum sits relative to the layer-wise rate (see the module docstring).
MOMENTUM_PLACEMENTS = ("direction", "step")

#: Device types on which a large variable's Adam chain (:func:`adam_trust_chain`) is compiled
#: with XLA on its own when the step around it is not (graph mode on CPU or GPU).
COMPILE_ON_DEVICE_TYPES = ("CPU", "GPU")

#: Variables from this many elements on get the compiled chain; for smaller ones XLA's launch
#: and per-shape compile cost more than the passes it saves.
COMPILE_MIN_ELEMENTS = 2**15


def compiles_chain_alone(variable):
    """Whether ``variable``'s per-variable chain runs as its own XLA cluster.

    Yes for a variable of at least :data:`COMPILE_MIN_ELEMENTS` elements on a
    device of :data:`COMPILE_ON_DEVICE_TYPES`, when the step being traced is not
    compiled by XLA already (there the chain is simply inlined and fused with
    the rest; :func:`~tf_largebatch.optimizers.keras_seam.tracing_for_xla`).
    """
    if keras_seam.tracing_for_xla() or not variable.shape.is_fully_defined():
        return False
    device = tf.DeviceSpec.from_string(getattr(tf_variable(variable), "device", "") or "").device_type
    return device in COMPILE_ON_DEVICE_TYPES and variable.shape.num_elements() >= COMPILE_MIN_ELEMENTS


def adam_trust_chain(gradient, weight, first_moment, second_moment_root, step, *, beta_1, beta_2, epsilon,
                     underflow_tolerance, weight_decay, with_norms):
    """One variable's Adam direction, weight decay and trust-ratio norms, from its state to ``u``.

    ``m <- beta_1 m + (1 - beta_1) g``; ``sqrt(v)`` by
    :func:`~tf_largebatch.optimizers.rules.root_moving_average`;
    ``u = m_hat / (sqrt(v_hat) + eps) + wd * w``; and, with ``with_norms``,
    ``||w||`` and ``||u||`` (:func:`~tf_largebatch.optimizers.rules.l2_norm`,
    overflow-free). Pure (the caller reads and assigns the slots), so it can
    run as one XLA cluster: the element-wise work fuses into a few passes even
    in a step that is not compiled (:data:`compiled_adam_trust_chain`). Every
    form it picks is exact (the rules choose by the trace), so compiled and
    inline give the same result to float32 rounding.

    Returns:
        ``(m, sqrt(v), u, ||w||, ||u||)``; the norms are ``None`` without ``with_norms``.
    """
    first_moment = rules.moving_average(first_moment, gradient, beta_1)
    second_moment_root = rules.root_moving_average(second_moment_root, gradient, beta_2,
                                                   underflow_tolerance=underflow_tolerance)
    update = rules.bias_corrected_adam_direction(first_moment, second_moment_root, beta_1, beta_2, step, epsilon)
    if weight_decay:
        update = rules.add_weight_decay(update, weight, weight_decay)
    if not with_norms:
        return first_moment, second_moment_root, update, None, None
    return first_moment, second_moment_root, update, rules.l2_norm(weight), rules.l2_norm(update)


#: :func:`adam_trust_chain` as one XLA cluster (graph-mode steps on CPU/GPU, large variables).
compiled_adam_trust_chain = tf.function(adam_trust_chain, jit_compile=True)


class LayerwiseOptimizer(LargeBatchOptimizer):
    """The chassis: base direction, weight decay, layer-wise rate, learning rate, momentum.

    See the module docstring for the chain. Subclasses provide:

    * ``_layer_rate(variable, gradient, update, weight_decay)``: the float32
      scalar rate of an adapted variable;
    * ``_direction(gradient, variable)`` when the base rule is not plain SGD
      (default: ``gradient``), creating its slots in ``build``;
    * ``momentum_placement`` (class or instance attribute), and ``momentum`` /
      ``nesterov`` for the ``"step"`` placement.

    Args:
        learning_rate: float >= 0, a schedule, or a callable.
        weight_decay: optional float >= 0, coupled: added to the direction
            before the rate (inside the trust ratio).
        exclude_from_weight_decay: ``None`` or regular expressions searched in
            ``variable.path``; matching variables get no weight decay.
        exclude_from_layer_adaptation: ``None`` (the weight-decay list) or
            regular expressions searched in ``variable.path``; matching variables
            get the rate 1. ``[]`` adapts every variable.
        **kwargs: the base keyword arguments of every Keras optimizer.
    """

    momentum_placement = "direction"
    momentum = 0.0
    nesterov = False

    def __init__(self, learning_rate, *, weight_decay=None, exclude_from_weight_decay=None,
                 exclude_from_layer_adaptation=None, **kwargs):
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            exclude_from_weight_decay=exclude_from_weight_decay,
            **kwargs,
        )
        self._variable_selection = VariableSelection(exclude_from_weight_decay, exclude_from_layer_adaptation)
        self._layer_adaptation_exclusions = self._variable_selection.layer_adaptation_exclusions

    def build(self, var_list):
        if self.built:
            return
        if self.momentum_placement not in MOMENTUM_PLACEMENTS:
            raise ValueError(
                f"{type(self).__name__}.momentum_placement must be one of {MOMENTUM_PLACEMENTS}. "
                f"Received: {self.momentum_placement!r}"
            )
        super().build(var_list)
        if self.momentum_placement == "step":
            self.momentums = self._add_slots(var_list, "momentum")

    # ------------------------------------------------------------- the chain
    def _direction(self, gradient, variable):
        """The base rule's update per unit learning rate; updates its slots."""
        return gradient

    def _update(self, gradient, variable, weight_decay):
        """``u``, the update per unit learning rate before the layer-wise rate."""
        update = self._direction(gradient, variable)
        return rules.add_weight_decay(update, variable, weight_decay) if weight_decay else update

    def _layer_rate(self, variable, gradient, update, weight_decay):
        """The rate of an adapted variable (float32 scalar)."""
        raise NotImplementedError

    def _update_and_layer_rate(self, gradient, variable, weight_decay, adapts):
        """``(u, rate)``: :meth:`_update`, and :meth:`_layer_rate` when ``adapts`` (else ``None``).

        One hook for a subclass that computes both in one pass (LayerwiseAdam's compiled chain).
        """
        update = self._update(gradient, variable, weight_decay)
        return update, (self._layer_rate(variable, gradient, update, weight_decay) if adapts else None)

    def update_step(self, gradient, variable, learning_rate):
        dtype = compute_dtype(variable)
        learning_rate = tf.cast(learning_rate, dtype)
        gradient = tf.cast(gradient, dtype)
        index = keras_seam.variable_index(self, variable)
        weight_decay = self.weight_decay if (self.weight_decay and self._decays[index]) else 0.0
        update, rate = self._update_and_layer_rate(gradient, variable, weight_decay, self._adapts[index])
        if rate is not None:
            # Scalars first: one element-wise pass for learning rate times layer rate.
            learning_rate = learning_rate * tf.cast(rate, dtype)
        step = update * learning_rate
        if self.momentum_placement != "step":
            self.assign_sub(variable, step)
            return
        velocity = self.momentums[index]
        if velocity.dtype == variable.dtype:  # one training kernel instead of four passes in graph mode
            rules.apply_heavy_ball(variable, velocity, step, 1.0, self.momentum, nesterov=self.nesterov)
            return
        self.assign(velocity, rules.heavy_ball(velocity, step, self.momentum))
        step = rules.heavy_ball(velocity, step, self.momentum) if self.nesterov else velocity
        self.assign_sub(variable, tf.convert_to_tensor(step))

    # ---------------------------------------------------------------- config
    def get_config(self):
        config = super().get_config()
        config["exclude_from_layer_adaptation"] = list(self._layer_adaptation_exclusions)
        return config


class TrustRatioOptimizer(LayerwiseOptimizer):
    """The chassis with the trust ratio ``c * phi(||w||) / (||u|| + eps)`` as the rate.

    Args:
        learning_rate: float >= 0, a schedule, or a callable.
        trust_coefficient: float > 0, ``c``.
        trust_ratio_bounds: ``None`` or ``(low, high)`` with ``0 < low <= high``:
            ``phi(||w||) = clip(||w||, low, high)`` ("bound-ratio").
        **kwargs: as :class:`LayerwiseOptimizer`.
    """

    _trust_ratio_epsilon = 0.0

    def __init__(self, learning_rate, *, trust_coefficient=1.0, trust_ratio_bounds=None, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.trust_coefficient = float(
            validation.check_number("trust_coefficient", trust_coefficient, low=0.0, low_inclusive=False)
        )
        self.trust_ratio_bounds = validation.check_bounds("trust_ratio_bounds", trust_ratio_bounds)

    def _layer_rate(self, variable, gradient, update, weight_decay):
        return self._trust_ratio(rules.l2_norm(variable), rules.l2_norm(update))

    def _trust_ratio(self, weight_norm, update_norm):
        """The trust ratio of ``||w||`` and ``||u||`` with this optimizer's coefficient, bounds and epsilon."""
        return rules.trust_ratio(
            weight_norm,
            update_norm,
            trust_coefficient=self.trust_coefficient,
            bounds=self.trust_ratio_bounds,
            epsilon=self._trust_ratio_epsilon,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "trust_coefficient": self.trust_coefficient,
                "trust_ratio_bounds": None if self.trust_ratio_bounds is None else list(self.trust_ratio_bounds),
            }
        )
        return config


_LAYERWISE_ARGS = """
        weight_decay: optional float >= 0, coupled: added to the direction inside
            the trust ratio (``u = d + wd * w``, not Keras's decoupled
            ``w <- w - lr * wd * w``).
        trust_coefficient: float > 0 multiplying the trust ratio (default 1).
        trust_ratio_bounds: ``None`` for "+ layer-wise", or ``(low, high)`` with
            ``0 < low <= high`` for "+ layer-wise and bound-ratio":
            ``phi(||w||) = clip(||w||, low, high)``.
        exclude_from_weight_decay: ``None`` or regular expressions searched in
            ``variable.path`` (e.g. ``["bias", "layer_normalization"]``).
        exclude_from_layer_adaptation: same, for the trust ratio (ratio 1);
            ``None`` means the weight-decay list, ``[]`` adapts every variable.
        {{base_optimizer_keyword_args}}"""

_TABLE3 = "You et al. 2020, \"The Limit of the Batch Size\", Sec. 3 and Table 3."


_document = document(layerwise_args=_LAYERWISE_ARGS, table3=_TABLE3)


@keras.saving.register_keras_serializable(package="tf_largebatch")
@_document
class LayerwiseSGD(TrustRatioOptimizer):
    """SGD (with optional heavy-ball momentum) + layer-wise trust ratio.

    Direction ``d = m`` with ``m <- momentum * m + g`` (Nesterov:
    ``d = g + momentum * m``); ``momentum=0`` gives ``d = g``, and the trust ratio
    is the paper's "simplest form" ``||w|| / ||g||``. The learning rate multiplies
    the scaled direction, outside the momentum. Weight decay is added *after* the
    momentum (``u = m + wd * w``), so only without weight decay does this equal
    ``LARS(trust_ratio_on="momentum", trust_coefficient=1)`` on adapted variables
    (LARS averages ``g + wd * w``; the trust ratio cancels its ``1 - momentum``
    factor); for excluded variables the momentum is heavy-ball (no
    ``1 - momentum`` factor), as Keras's ``SGD``.

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
class LayerwiseAdagrad(TrustRatioOptimizer):
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
        # The slots hold sqrt(a): float32 squares of gradients beyond ~1e19 overflow.
        initializer = keras.initializers.Constant(self.initial_accumulator_value ** 0.5)
        self._accumulator_roots = self._add_slots(var_list, "accumulator_root", initializer)

    def _direction(self, gradient, variable):
        root = self._slot(self._accumulator_roots, variable)
        self.assign(root, rules.hypot(root, gradient))
        denominator = rules.hypot(root, tf.sqrt(tf.cast(self.epsilon, gradient.dtype)))
        # 0 (not NaN) where epsilon = 0 and the accumulator is still 0.
        return tf.math.divide_no_nan(gradient, denominator)

    def get_config(self):
        config = super().get_config()
        config.update({"initial_accumulator_value": self.initial_accumulator_value, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="tf_largebatch")
@_document
class LayerwiseRMSprop(TrustRatioOptimizer):
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
        # sqrt(v), not v: float32 squares of gradients beyond ~1e19 overflow.
        self._velocity_roots = self._add_slots(var_list, "velocity_root")
        self._average_gradients = self._add_slots(var_list, "average_gradient") if self.centered else []
        self._momentums = self._add_slots(var_list, "momentum") if self.momentum else []

    def _direction(self, gradient, variable):
        root = self._slot(self._velocity_roots, variable)
        self.assign(root, rules.root_moving_average(root, gradient, self.rho))
        spread = tf.convert_to_tensor(root)
        if self.centered:
            average = self._slot(self._average_gradients, variable)
            self.assign(average, rules.moving_average(average, gradient, self.rho))
            # sqrt(v - mg**2) as sqrt(r - |mg|) * sqrt(r + |mg|), clamped at 0 against round-off.
            average = tf.abs(tf.convert_to_tensor(average))
            spread = tf.sqrt(tf.maximum(spread - average, 0.0)) * tf.sqrt(spread + average)
        denominator = rules.hypot(spread, tf.sqrt(tf.cast(self.epsilon, gradient.dtype)))
        # 0 (not NaN) where epsilon = 0 and the average is still 0.
        direction = tf.math.divide_no_nan(gradient, denominator)
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
class LayerwiseAdam(TrustRatioOptimizer):
    """Adam + layer-wise trust ratio (with ``weight_decay``: LAMB).

    Direction in the papers' form: ``m``, ``v`` moving averages of ``g`` and
    ``g**2``, bias-corrected with the 1-based step ``t`` = applied updates + 1
    (optimizer updates, not micro-batches, under gradient accumulation; a skipped
    non-finite update does not count), ``d = m_hat / (sqrt(v_hat) + eps)``;
    ``epsilon=0`` is allowed (an element whose gradient has always been 0 then
    gets ``d = 0``, not ``0/0``).
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
        # sqrt(v), not v: float32 squares of gradients beyond ~1e19 overflow.
        self._velocity_roots = self._add_slots(var_list, "velocity_root")

    def _direction(self, gradient, variable):
        m = self._slot(self._momentums, variable)
        root = self._slot(self._velocity_roots, variable)
        self.assign(m, rules.moving_average(m, gradient, self.beta_1))
        # The plain (cheaper) root update wherever its underflow cannot change the direction:
        # epsilon large enough, and no overflow (checked per variable).
        tolerance = rules.adam_root_tolerance(self.epsilon, self.beta_2)
        self.assign(root, rules.root_moving_average(root, gradient, self.beta_2, underflow_tolerance=tolerance))
        return rules.bias_corrected_adam_direction(
            tf.convert_to_tensor(m), tf.convert_to_tensor(root), self.beta_1, self.beta_2, self.applied_updates + 1,
            self.epsilon,
        )

    def _update_and_layer_rate(self, gradient, variable, weight_decay, adapts):
        """For a large variable in a step XLA does not compile, the chain from the moments to both
        norms runs as one XLA cluster (:func:`compiles_chain_alone`); else the chassis's ops."""
        if not compiles_chain_alone(variable) or gradient.dtype != tf.float32:
            return super()._update_and_layer_rate(gradient, variable, weight_decay, adapts)
        m, root = self._slot(self._momentums, variable), self._slot(self._velocity_roots, variable)
        m_new, root_new, update, weight_norm, update_norm = compiled_adam_trust_chain(
            gradient, tf.cast(tf.convert_to_tensor(variable), tf.float32), tf.convert_to_tensor(m),
            tf.convert_to_tensor(root), tf.cast(self.applied_updates + 1, tf.float32),
            beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
            underflow_tolerance=rules.adam_root_tolerance(self.epsilon, self.beta_2),
            weight_decay=float(weight_decay), with_norms=bool(adapts))
        self.assign(m, m_new)
        self.assign(root, root_new)
        return update, (self._trust_ratio(weight_norm, update_norm) if adapts else None)

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config
