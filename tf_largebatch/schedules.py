"""Learning-rate schedules of the large-batch recipe: warm-up, then decay.

Huge-batch training needs a linear warm-up before the (linearly or
square-root scaled) peak learning rate, then a decay: polynomial for LARS and
LAMB (MLPerf ResNet-50, BERT), cosine for momentum SGD, or step-wise
(Goyal et al.). See You et al., "The Limit of the Batch Size", §3 and its
appendix (Figures 23-30).

Every schedule here is a ``keras.optimizers.schedules.LearningRateSchedule``:
pass it as ``learning_rate`` to any optimizer, save it with the model. The
value is computed with ``ops.where``/``ops.minimum`` only (no Python branch on
the step), so it traces once and compiles under XLA.

Steps are optimizer updates. Under ``gradient_accumulation_steps=A`` the
optimizers of this package evaluate the schedule at ``optimizer.iterations``
(real updates); plain Keras optimizers evaluate it at the micro-step counter
(``optimizer._iterations``), so with those, multiply every step argument by
``A``.
"""

import keras
from keras import ops

from tf_largebatch import validation


def _check_steps(name, value, minimum):
    return validation.check_positive_int(name, value, minimum=minimum)


def linear_warmup(step, warmup_steps, initial_learning_rate, peak_learning_rate):
    """``initial + (peak - initial) * step / warmup_steps`` (no clipping).

    ``warmup_steps`` of 0 is treated as 1 so the expression stays finite; the
    callers select the warm-up branch only when ``step < warmup_steps``.
    """
    fraction = step / ops.maximum(warmup_steps, 1.0)
    return initial_learning_rate + (peak_learning_rate - initial_learning_rate) * fraction


@keras.saving.register_keras_serializable(package="tf_largebatch")
class WarmupPolynomialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then polynomial decay to ``end_learning_rate``.

    With ``t`` the optimizer step, ``W = warmup_steps``, ``D = decay_steps``::

        t <  W:  lr = initial + (peak - initial) * t / W
        t >= W:  lr = (peak - end) * (1 - min(t - W, D) / D) ** power + end

    so ``lr(W) = peak`` and ``lr(t) = end`` for every ``t >= W + D``. This is
    the schedule of MLPerf's LARS ResNet-50 (``power=2``) and BERT's LAMB
    (``power=1``); ``decay_steps`` counts the steps *after* the warm-up, as in
    ``keras.optimizers.schedules.CosineDecay``.

    Args:
        peak_learning_rate: float > 0, the learning rate reached at the end of
            the warm-up (the scaled learning rate, see
            ``tf_largebatch.scaling.scale_learning_rate``).
        warmup_steps: int >= 0, number of warm-up steps (0: no warm-up).
        decay_steps: int >= 1, number of decay steps after the warm-up.
        end_learning_rate: float >= 0, the value after the decay.
        power: float > 0, the polynomial's power (1 is linear decay).
        initial_learning_rate: float >= 0, the value at step 0.
        name: name scope of the ops.

    References:
        You et al., "The Limit of the Batch Size", 2020, §3 and Figure 24
        (warm-up + poly decay); Goyal et al., 2017 (linear warm-up);
        You et al., 2020, LAMB (BERT's warm-up + linear decay).
    """

    def __init__(
        self,
        peak_learning_rate,
        warmup_steps,
        decay_steps,
        end_learning_rate=0.0,
        power=1.0,
        initial_learning_rate=0.0,
        name="WarmupPolynomialDecay",
    ):
        super().__init__()
        self.peak_learning_rate = validation.check_number(
            "peak_learning_rate", peak_learning_rate, low=0.0, low_inclusive=False
        )
        self.warmup_steps = _check_steps("warmup_steps", warmup_steps, 0)
        self.decay_steps = _check_steps("decay_steps", decay_steps, 1)
        self.end_learning_rate = validation.check_number("end_learning_rate", end_learning_rate, low=0.0)
        self.power = validation.check_number("power", power, low=0.0, low_inclusive=False)
        self.initial_learning_rate = validation.check_number(
            "initial_learning_rate", initial_learning_rate, low=0.0
        )
        self.name = name

    def __call__(self, step):
        with keras.name_scope(self.name):
            step = ops.cast(step, "float32")
            warmup_steps = float(self.warmup_steps)
            decay_steps = float(self.decay_steps)
            warm = linear_warmup(step, warmup_steps, self.initial_learning_rate, self.peak_learning_rate)
            decay_step = ops.clip(step - warmup_steps, 0.0, decay_steps)
            remaining = 1.0 - decay_step / decay_steps
            decayed = (self.peak_learning_rate - self.end_learning_rate) * ops.power(
                remaining, self.power
            ) + self.end_learning_rate
            return ops.where(step < warmup_steps, warm, decayed)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "initial_learning_rate": self.initial_learning_rate,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="tf_largebatch")
class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Linear warm-up, then cosine decay: Keras's ``CosineDecay`` warm-up.

    A named front end to ``keras.optimizers.schedules.CosineDecay`` with its
    ``warmup_target``/``warmup_steps`` (the computation is Keras's own)::

        t <  W:  lr = initial + (peak - initial) * t / W
        t >= W:  lr = peak * ((1 - alpha) * (1 + cos(pi * min(t - W, D) / D)) / 2 + alpha)

    Args:
        peak_learning_rate: float > 0, reached at the end of the warm-up
            (Keras's ``warmup_target``).
        warmup_steps: int >= 0, number of warm-up steps.
        decay_steps: int >= 1, number of cosine steps after the warm-up.
        alpha: float in [0, 1], the final value as a fraction of the peak.
        initial_learning_rate: float >= 0, the value at step 0.
        name: name scope of the ops.

    References:
        You et al., "The Limit of the Batch Size", 2020, §3 (Optimization 0-1)
        and Figure 28; Loshchilov & Hutter, 2017, SGDR (cosine decay).
    """

    def __init__(
        self,
        peak_learning_rate,
        warmup_steps,
        decay_steps,
        alpha=0.0,
        initial_learning_rate=0.0,
        name="WarmupCosineDecay",
    ):
        validation.check_number("peak_learning_rate", peak_learning_rate, low=0.0, low_inclusive=False)
        _check_steps("warmup_steps", warmup_steps, 0)
        _check_steps("decay_steps", decay_steps, 1)
        validation.check_number("alpha", alpha, low=0.0, high=1.0)
        validation.check_number("initial_learning_rate", initial_learning_rate, low=0.0)
        super().__init__(
            initial_learning_rate=float(initial_learning_rate),
            decay_steps=int(decay_steps),
            alpha=float(alpha),
            name=name,
            warmup_target=float(peak_learning_rate),
            warmup_steps=int(warmup_steps),
        )

    @property
    def peak_learning_rate(self):
        return self.warmup_target

    def get_config(self):
        return {
            "peak_learning_rate": self.warmup_target,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "initial_learning_rate": self.initial_learning_rate,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="tf_largebatch")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then multiply by ``decay_rate`` at each boundary.

    With ``boundaries = [b_1, ..., b_n]`` (absolute steps, increasing, each
    ``>= warmup_steps``)::

        t <  W:  lr = initial + (peak - initial) * t / W
        t >= W:  lr = peak * decay_rate ** #{i : t >= b_i}

    Goyal et al.'s ImageNet-in-an-hour schedule is ``warmup_steps`` = 5 epochs,
    ``boundaries`` = epochs 30, 60, 80, ``decay_rate=0.1``.

    Args:
        peak_learning_rate: float > 0, reached at the end of the warm-up.
        warmup_steps: int >= 0, number of warm-up steps.
        boundaries: non-empty list of increasing ints ``>= warmup_steps``: the
            steps at which the decay applies (the new value holds from that
            step on).
        decay_rate: float in (0, 1], factor applied at each boundary.
        initial_learning_rate: float >= 0, the value at step 0.
        name: name scope of the ops.

    References:
        Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1
        Hour", 2017, §2.2 (gradual warm-up) and §5.1 (step decay).
    """

    def __init__(
        self,
        peak_learning_rate,
        warmup_steps,
        boundaries,
        decay_rate=0.1,
        initial_learning_rate=0.0,
        name="WarmupStepDecay",
    ):
        super().__init__()
        self.peak_learning_rate = validation.check_number(
            "peak_learning_rate", peak_learning_rate, low=0.0, low_inclusive=False
        )
        self.warmup_steps = _check_steps("warmup_steps", warmup_steps, 0)
        self.boundaries = self._check_boundaries(boundaries, self.warmup_steps)
        self.decay_rate = validation.check_number(
            "decay_rate", decay_rate, low=0.0, high=1.0, low_inclusive=False
        )
        self.initial_learning_rate = validation.check_number(
            "initial_learning_rate", initial_learning_rate, low=0.0
        )
        self.name = name

    @staticmethod
    def _check_boundaries(boundaries, warmup_steps):
        message = (
            "`boundaries` must be a non-empty list of strictly increasing integers "
            f">= warmup_steps ({warmup_steps}). Received: boundaries={boundaries!r}"
        )
        try:
            values = list(boundaries)
        except TypeError:
            raise ValueError(message) from None
        if not values:
            raise ValueError(message)
        for value in values:
            try:
                _check_steps("boundaries", value, warmup_steps)
            except ValueError:
                raise ValueError(message) from None
        if any(b <= a for a, b in zip(values, values[1:])):
            raise ValueError(message)
        return [int(v) for v in values]

    def __call__(self, step):
        with keras.name_scope(self.name):
            step = ops.cast(step, "float32")
            warmup_steps = float(self.warmup_steps)
            warm = linear_warmup(step, warmup_steps, self.initial_learning_rate, self.peak_learning_rate)
            boundaries = ops.convert_to_tensor([float(b) for b in self.boundaries], dtype="float32")
            passed = ops.sum(ops.cast(step >= boundaries, "float32"))
            decayed = self.peak_learning_rate * ops.power(self.decay_rate, passed)
            return ops.where(step < warmup_steps, warm, decayed)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "boundaries": list(self.boundaries),
            "decay_rate": self.decay_rate,
            "initial_learning_rate": self.initial_learning_rate,
            "name": self.name,
        }
