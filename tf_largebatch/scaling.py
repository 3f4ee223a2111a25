"""Learning-rate scaling rules: batch size and momentum.

Two pieces of arithmetic the large-batch recipe needs before any training run:

* moving a tuned learning rate to another batch size: the linear scaling rule
  ``lr ∝ B`` (Goyal et al. 2017; derived from the SDE temperature
  ``T = lr / B`` in Smith, Elsen and De, "Momentum Enables Large Batch
  Training", §1) or the square-root rule ``lr ∝ sqrt(B)`` (Hoffer et al. 2017;
  used for LAMB and the "sqrt scaling if it is better" of You et al., "The
  Limit of the Batch Size", §3);
* moving between SGD and momentum: with momentum ``m`` and learning rate
  ``lr``, the dynamics match SGD with the *effective learning rate*
  ``lr / (1 - m)`` (Smith, Elsen and De, "Momentum Enables Large Batch
  Training", 2020, §1, the definition after eq. (9)).
"""

import math

from tf_largebatch import validation

SCALING_RULES = ("linear", "sqrt")


def scale_learning_rate(base_lr, base_batch_size, batch_size, rule="linear"):
    """The learning rate for ``batch_size``, given one tuned at ``base_batch_size``.

    ``linear``: ``base_lr * batch_size / base_batch_size``;
    ``sqrt``: ``base_lr * sqrt(batch_size / base_batch_size)``.

    Args:
        base_lr: float >= 0, the learning rate tuned at ``base_batch_size``.
        base_batch_size: int >= 1.
        batch_size: int >= 1, the new (global) batch size.
        rule: ``"linear"`` or ``"sqrt"``.

    Returns:
        The scaled learning rate, a Python float.

    References:
        Goyal et al., 2017, §2.1 (linear scaling rule); Smith, Elsen and De,
        "Momentum Enables Large Batch Training", 2020, §1 (temperature
        ``T = lr / B``); Hoffer et al., 2017 and You et al., "The Limit of the
        Batch Size", 2020, §3 (square-root scaling).
    """
    validation.check_number("base_lr", base_lr, low=0.0)
    validation.check_positive_int("base_batch_size", base_batch_size)
    validation.check_positive_int("batch_size", batch_size)
    ratio = batch_size / base_batch_size
    if rule == "linear":
        return float(base_lr) * ratio
    if rule == "sqrt":
        return float(base_lr) * math.sqrt(ratio)
    raise ValueError(f"`rule` must be one of {SCALING_RULES}. Received: rule={rule!r}")


def effective_learning_rate(learning_rate, momentum):
    """``learning_rate / (1 - momentum)``: the SGD learning rate with the same dynamics.

    Args:
        learning_rate: float >= 0, the momentum optimizer's learning rate ``ε``.
        momentum: float in [0, 1), the momentum coefficient ``m``.

    Returns:
        ``ε_eff = ε / (1 - m)``, a Python float.

    References:
        Smith, Elsen and De, "Momentum Enables Large Batch Training", 2020,
        §1: "the effective learning rate, ε_eff = ε/(1 − m)".
    """
    validation.check_number("learning_rate", learning_rate, low=0.0)
    validation.check_probability("momentum", momentum)
    return float(learning_rate) / (1.0 - momentum)


def learning_rate_for_effective(effective_lr, momentum):
    """Inverse of :func:`effective_learning_rate`: ``effective_lr * (1 - momentum)``.

    E.g. an SGD run tuned at learning rate 0.4 moves to momentum 0.9 at
    learning rate ``learning_rate_for_effective(0.4, 0.9) == 0.04``.

    Args:
        effective_lr: float >= 0, the SGD (effective) learning rate.
        momentum: float in [0, 1), the momentum coefficient of the target run.

    Returns:
        The momentum optimizer's learning rate ``ε = ε_eff (1 - m)``.

    References:
        Smith, Elsen and De, "Momentum Enables Large Batch Training", 2020, §1.
    """
    validation.check_number("effective_lr", effective_lr, low=0.0)
    validation.check_probability("momentum", momentum)
    return float(effective_lr) * (1.0 - momentum)
