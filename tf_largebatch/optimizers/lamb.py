"""LAMB: layer-wise adaptive moments for batch training.

You et al. 2020, "Large Batch Optimization for Deep Learning: Training BERT in
76 minutes" (Algorithm 2), as quoted in Jiang et al., "Accelerating Large Batch
Training via Gradient Signal to Noise Ratio (GSNR)" (the VRGD paper, Algorithm 6).
"""

import keras
import tensorflow as tf

from tf_largebatch import validation
from tf_largebatch.optimizers import rules
from tf_largebatch.optimizers.docstrings import document
from tf_largebatch.optimizers.layerwise import LayerwiseAdam


@keras.saving.register_keras_serializable(package="tf_largebatch")
@document()
class LAMB(LayerwiseAdam):
    """LAMB (You et al. 2020, Algorithm 2), optionally with NVLAMB clipping.

    Per variable ``w`` with global mean gradient ``g`` at 1-based step
    ``t`` = applied updates + 1 (optimizer updates, also under gradient
    accumulation; an update skipped for a non-finite gradient does not count)::

        m <- beta_1 * m + (1 - beta_1) * g
        v <- beta_2 * v + (1 - beta_2) * g**2
        u  = m / (1 - beta_1**t) / (sqrt(v / (1 - beta_2**t)) + epsilon)
        u  = u + weight_decay * w                  # inside the trust ratio
        w <- w - learning_rate * phi(||w||) / ||u|| * u

    ``phi`` is the identity, or ``clip(., low, high)`` with
    ``trust_ratio_bounds=(low, high)``; a zero ``||w||`` or ``||u||`` gives ratio 1.
    Variables matched by ``exclude_from_weight_decay`` get no ``weight_decay * w``;
    those matched by ``exclude_from_layer_adaptation`` get ratio 1 (their update
    is ``learning_rate * u``).

    With ``clip_global_norm_before_moments=max_norm`` (NVIDIA's NVLAMB, as in
    their BERT recipe the VRGD paper follows), the averaged gradient of all
    variables is first divided by ``max(1, ||g||_global / max_norm)``. Without
    weight decay and bounds this optimizer is ``keras.optimizers.Lamb``.

    Args:
        learning_rate: float >= 0, a schedule, or a callable.
        beta_1: float in [0, 1).
        beta_2: float in [0, 1).
        epsilon: float >= 0 (1e-6 as the paper and NVIDIA); ``0`` is allowed
            (an element whose gradient has always been 0 gets direction 0).
        weight_decay: optional float >= 0, the paper's lambda (0.01 for BERT):
            coupled, inside the trust ratio, ``u = m_hat / (sqrt(v_hat) + eps)
            + weight_decay * w`` (not Keras's decoupled ``w <- w - lr * wd * w``).
        trust_ratio_bounds: ``None`` or ``(low, high)``, ``0 < low <= high``.
        exclude_from_weight_decay: regular expressions searched in
            ``variable.path`` (BERT: ``["bias", "LayerNorm", "layer_norm"]``).
        exclude_from_layer_adaptation: same, for the trust ratio; ``None`` means
            the weight-decay list, ``[]`` adapts every variable.
        clip_global_norm_before_moments: ``None`` or float > 0, NVLAMB's max
            global gradient norm (1.0 in NVIDIA's recipe).
        trust_coefficient: float > 0 multiplying the trust ratio (1 in the paper).
        {{base_optimizer_keyword_args}}

    References:
        You et al. 2020, LAMB, Algorithm 2; VRGD paper, Algorithm 6.
        NVIDIA, "Pretraining BERT with Layer-wise Adaptive Learning Rates"
        (NVLAMB: global-norm gradient clipping before the moments).
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-6,
        weight_decay=None,
        trust_ratio_bounds=None,
        exclude_from_weight_decay=None,
        exclude_from_layer_adaptation=None,
        clip_global_norm_before_moments=None,
        trust_coefficient=1.0,
        name="lamb",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            trust_ratio_bounds=trust_ratio_bounds,
            exclude_from_weight_decay=exclude_from_weight_decay,
            exclude_from_layer_adaptation=exclude_from_layer_adaptation,
            name=name,
            **kwargs,
        )
        self.clip_global_norm_before_moments = validation.check_number(
            "clip_global_norm_before_moments",
            clip_global_norm_before_moments,
            low=0.0,
            low_inclusive=False,
            allow_none=True,
        )

    def _transform_reduced_gradients(self, grads, trainable_variables):
        if self.clip_global_norm_before_moments is None:
            return grads
        norm = rules.global_norm(grads)
        divisor = tf.maximum(1.0, norm / self.clip_global_norm_before_moments)
        return [g / tf.cast(divisor, g.dtype) for g in grads]

    def get_config(self):
        config = super().get_config()
        config["clip_global_norm_before_moments"] = self.clip_global_norm_before_moments
        return config

