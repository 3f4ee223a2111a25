"""SNGM: stochastic normalized gradient descent with momentum.

Zhao, Xie and Li, "Stochastic Normalized Gradient Descent with Momentum for
Large-Batch Training".
"""

import keras
import tensorflow as tf

from tf_largebatch import validation
from tf_largebatch.optimizers import rules
from tf_largebatch.optimizers.docstrings import document
from tf_largebatch.optimizers.base import LargeBatchOptimizer, compute_dtype


@keras.saving.register_keras_serializable(package="tf_largebatch")
@document()
class SNGM(LargeBatchOptimizer):
    """Stochastic normalized gradient descent with momentum (Algorithm 1).

    Per step, with ``g`` the global mean gradient over all replicas and
    micro-batches, and ``||g||`` its L2 norm over *all* trainable variables::

        g <- g + weight_decay * w          (coupled weight decay, if any)
        u <- momentum * u + g / ||g||
        w <- w - learning_rate * u

    The momentum is bounded, ``||u|| <= 1 / (1 - momentum)`` (Lemma 2), whatever
    the gradient's scale, which is what lets SNGM use a large learning rate with a
    large batch. The norms are computed scaled (:func:`~tf_largebatch.optimizers.rules.l2_norm`),
    so the steps are the same for gradients of any scale float32 holds (tested
    from 1e-30 to 1e30). A zero gradient norm contributes a zero direction
    (``u`` decays).
    With ``layerwise=True`` each variable is normalised by its own norm: the
    block-wise variant of eq. (13)-(14), which the paper shows converges more
    slowly and keeps for comparison with LARS.

    Args:
        learning_rate: float >= 0, a ``keras.optimizers.schedules`` schedule, or a
            callable. The paper's eta.
        momentum: float in [0, 1), the paper's beta. ``0`` gives SNGD.
        weight_decay: optional float >= 0, coupled L2 weight decay added to the
            gradient before normalisation, ``d = g + weight_decay * w``, so it is
            normalised with the gradient (not Keras's decoupled
            ``w <- w - lr * wd * w``; the paper's experiments use 1e-4 to 1e-3).
        layerwise: bool, normalise each variable's gradient separately (eq. 13).
        exclude_from_weight_decay: ``None`` or a list of regular expressions
            searched in ``variable.path``; matching variables get no weight decay
            (e.g. ``["bias", "gamma", "beta"]``).
        {{base_optimizer_keyword_args}}

    References:
        Zhao et al., 2020/2021, SNGM, Algorithm 1 and eq. (13)-(14).
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=None,
        layerwise=False,
        exclude_from_weight_decay=None,
        name="sngm",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            exclude_from_weight_decay=exclude_from_weight_decay,
            name=name,
            **kwargs,
        )
        self.momentum = validation.check_probability("momentum", momentum)
        self.layerwise = validation.check_bool("layerwise", layerwise)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.momentums = self._add_slots(var_list, "momentum")

    def _transform_reduced_gradients(self, grads, trainable_variables):
        if self.weight_decay:
            grads = [
                rules.add_weight_decay(g, v, self.weight_decay) if self.applies_weight_decay(v) else g
                for g, v in zip(grads, trainable_variables)
            ]
        # The skip policy's finiteness check computed the sums of squares of the reduced gradients;
        # a gradient still the same tensor (no clipping, no decay) is not read again for its norm.
        known = [self._reducer.known_sum_of_squares(g) for g in grads]
        if self.layerwise:
            return [rules.normalize(g, rules.l2_norm(g, total)) for g, total in zip(grads, known)]
        norm = rules.global_norm(grads, known)
        return [rules.normalize(g, norm) for g in grads]

    def update_step(self, gradient, variable, learning_rate):
        dtype = compute_dtype(variable)
        learning_rate = tf.cast(learning_rate, dtype)
        gradient = tf.cast(gradient, dtype)
        momentum = self._slot(self.momentums, variable)
        if momentum.dtype == variable.dtype:  # one training kernel instead of six passes in graph mode
            rules.apply_heavy_ball(variable, momentum, gradient, learning_rate, self.momentum)
            return
        self.assign(momentum, rules.heavy_ball(momentum, gradient, self.momentum))
        self.assign_sub(variable, learning_rate * momentum)

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum, "layerwise": self.layerwise})
        return config

