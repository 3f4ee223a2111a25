"""AdaScale SGD as a Keras 3 optimizer: the base recipe's learning rate at any batch size.

Johnson, Agrawal, Gu and Guestrin, "AdaScale SGD: A User-Friendly Algorithm for
Distributed Training", ICML 2020, Algorithm 1. The unbiased estimators of
``sigma**2`` and ``|grad F|**2`` come from the package's moments recorder
(:meth:`~tf_largebatch.optimizers.moments.MomentsRecorder.noise_estimates`,
from the update's one all-reduce); the smoothing, the gain ratio, its guards
and the clock are in :mod:`~tf_largebatch.optimizers.gain`; the replica
plumbing (accumulation, the all-reduce, the non-finite policy) is the chassis
(:class:`~tf_largebatch.optimizers.base.LargeBatchOptimizer` and its
:class:`~tf_largebatch.optimizers.reducer.ReplicaReducer`). This module is the
Keras surface: the :class:`AdaScale` wrapper and the
:class:`StopAtScaleInvariantSteps` callback.
"""

import copy

import keras
import tensorflow as tf

from tf_largebatch import validation
from tf_largebatch.optimizers import gain, keras_seam
from tf_largebatch.optimizers.base import LargeBatchOptimizer, apply_reduced_gradients, check_inner_optimizer
from tf_largebatch.optimizers.moments import MomentsRecorder
from tf_largebatch.optimizers.slots import tf_variable

#: Base-optimizer keyword arguments that belong to the wrapper (they act on the
#: gradient samples); every other one belongs to the inner optimizer.
WRAPPER_ARGUMENTS = ("use_ema", "ema_momentum", "ema_overwrite_frequency", "gradient_accumulation_steps",
                     "loss_scale_factor", "nonfinite_gradients", "record_gradient_statistics")
_INNER_ARGUMENTS = ("weight_decay", "exclude_from_weight_decay", "clipnorm", "clipvalue", "global_clipnorm")

#: The wrapper's own scalar state, in ``optimizer.variables`` and checkpoints:
#: (attribute, variable name, initial value or None for "set at build").
_STATE = (
    ("_variance_average", "adascale_variance_average", 0.0),
    ("_norm_average", "adascale_norm_average", 0.0),
    ("_tau", "adascale_scale_invariant_steps", 0.0),
    ("_gain", "adascale_gain", 1.0),
    ("_scaled_learning_rate", "adascale_scaled_learning_rate", None),
    ("_scale", "adascale_scale", None),  # 0: S = k, re-read from the strategy (e.g. after a restore)
)


@keras.saving.register_keras_serializable(package="tf_largebatch")
class AdaScale(LargeBatchOptimizer):
    """Wraps an optimizer and scales its learning rate by AdaScale's gain ratio.

    Per update, from the ``k >= 2`` gradient samples (replicas x
    ``gradient_accumulation_steps`` micro-batches) that the update's one
    all-reduce already carries (the estimates from the moments recorder,
    :meth:`~tf_largebatch.optimizers.moments.MomentsRecorder.noise_estimates`;
    the rest in :mod:`~tf_largebatch.optimizers.gain`)::

        sigma2, mu2  = unbiased variance at one base batch and |grad F|^2
        averages     <- theta * averages + (1 - theta) * (sigma2, mu2)
        r_t          = (sigma2_avg + mu2_avg) / (sigma2_avg / S + mu2_avg)   in [1, S]
        inner update with gbar at learning rate r_t * eta(tau_t)
        tau_{t+1}    = tau_t + r_t

    ``eta`` is the inner optimizer's learning rate as the base recipe (batch
    ``B_0``) defines it, a float or a ``LearningRateSchedule``; the schedule is
    evaluated at the scale-invariant clock ``tau`` (base-run updates done), not
    at ``iterations``. Train until :attr:`scale_invariant_steps` reaches the base
    run's number of updates (:class:`StopAtScaleInvariantSteps` stops ``fit``
    there). With identical samples (``sigma2 = 0``) ``r_t = 1`` and the update
    is the inner optimizer's own.

    Validated (tests against a NumPy reference of Algorithm 1) around
    ``keras.optimizers.SGD`` with and without (Nesterov) momentum, as in the
    paper, whose theory is for plain SGD and whose experiments use momentum
    0.9. Other inner optimizers run (the learning rate they see is
    ``r_t * eta(tau_t)``), but nothing is known about whether the gain is the
    right correction for them: for Adam-like methods the paper itself says
    adaptive methods need a different treatment. Layer-wise trust ratios (LARS,
    LAMB) already normalise the step and combine with AdaScale untested.

    The gain is computed from the gradient *before* the inner optimizer's
    clipping or weight decay. A skipped update (non-finite gradient) leaves no
    trace: the averages, ``tau`` and the gain are untouched, and the inner
    optimizer does not advance.

    Args:
        inner_optimizer: an unbuilt ``keras.optimizers.Optimizer`` (SGD, SGD
            with momentum, ...) whose learning rate (float or
            ``LearningRateSchedule``) is the base recipe's. AdaScale takes it
            over: afterwards the inner optimizer's ``learning_rate`` is the
            scaled rate ``r_t * eta(tau_t)`` of the last update.
        scale: float >= 1 or ``None``: ``S``, the update's batch over the base
            batch. ``None``: ``S = k``, each gradient sample is one base batch
            (the paper's setting: ``S`` workers, one base batch each), read from
            the current strategy (so a restore onto another number of replicas
            follows it). Change it during training with :meth:`set_scale` (the
            adaptive batch size does); a scale set is saved with the optimizer.
        smoothing: float in [0, 1) or ``None``: the moving-average factor
            ``theta``; ``None`` gives ``max(1 - S/1000, 0)``, re-evaluated when
            the scale changes.
        gradient_accumulation_steps: int or None; each micro-batch is a
            gradient sample (``k`` = replicas x steps; ``k >= 2`` is required).
        use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor: as
            for any Keras optimizer; they belong to the wrapper.
        nonfinite_gradients: ``"skip"`` (default) or ``"raise"``.
        record_gradient_statistics: ``True`` (the only value): the gain reads
            the recorder's noise estimates on every update, so the per-variable
            sums of the monitoring statistics (:meth:`gradient_statistics`,
            read by ``GSNRMonitor``) are recorded on every update too; their
            mean-GSNR column only on the updates after
            :meth:`request_gradient_statistics` (``GSNRMonitor`` asks before
            each reading); on the other updates it keeps its last computed value.
        name: string.

    ``weight_decay``, ``exclude_from_weight_decay``, ``clipnorm``,
    ``clipvalue``, ``global_clipnorm`` and ``learning_rate`` belong to the
    inner optimizer; passing them here is an error.

    References:
        Johnson, Agrawal, Gu and Guestrin, "AdaScale SGD: A User-Friendly
            Algorithm for Distributed Training", ICML 2020, Algorithm 1.
        McCandlish, Kaplan, Amodei et al., "An Empirical Model of Large-Batch
            Training", 2018, Appendix A (the unbiased estimators).
    """

    def __init__(self, inner_optimizer, scale=None, smoothing=None, record_gradient_statistics=True,
                 name="adascale", **kwargs):
        _reject_inner_arguments(kwargs)
        if record_gradient_statistics is not True:
            raise ValueError("AdaScale records the gradient statistics on every update (its gain reads them): "
                             "`record_gradient_statistics` can only be True. "
                             f"Received: record_gradient_statistics={record_gradient_statistics!r}")
        check_inner_optimizer(inner_optimizer, "AdaScale")
        base_learning_rate = _base_learning_rate(inner_optimizer)
        super().__init__(learning_rate=base_learning_rate, name=name,
                         record_gradient_statistics=record_gradient_statistics, **kwargs)
        self.scale = validation.check_number("scale", scale, low=1.0, allow_none=True)
        self.smoothing = validation.check_number("smoothing", smoothing, low=0.0, high=1.0, high_inclusive=False,
                                                 allow_none=True)
        self.inner_optimizer = inner_optimizer
        keras_seam.replace_learning_rate(inner_optimizer, self._inner_learning_rate)

    # ----------------------------------------------------------- Keras surface
    @property
    def variables(self):
        return keras_seam.own_variables(self) + self.inner_optimizer.variables

    @keras_seam.no_automatic_dependency_tracking
    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.inner_optimizer.build(var_list)
        initial = {"_scaled_learning_rate": self._initial_learning_rate(),
                   "_scale": 0.0 if self.scale is None else float(self.scale)}
        for attribute, variable_name, value in _STATE:
            setattr(self, attribute, self._replica_identical_scalar(variable_name, initial.get(attribute, value)))

    def _initial_learning_rate(self):
        """``eta(0)`` as a Python float, computed outside any trace.

        ``build`` may run inside the first traced step (``fit`` builds an unbuilt
        optimizer there); an initializer that reads the learning-rate variable
        cannot be lifted out of an XLA-compiled function, a constant can.
        """
        with tf.init_scope():
            return float(self._base_learning_rate_at(0.0).numpy())

    def _replica_identical_scalar(self, name, value):
        """A float32 scalar every replica computes identically from the all-reduced
        statistics and writes without communication (sync-on-read, mean)."""
        strategy = keras_seam.distribution_strategy(self)
        with strategy.extended.colocate_vars_with(tf_variable(keras_seam.micro_step_counter(self))):
            with keras_seam.name_scope(self):
                variable = keras.Variable(
                    initializer=keras.initializers.Constant(value), shape=(),
                    dtype="float32", trainable=False, aggregation="mean", synchronization="on_read", name=name,
                )
        keras_seam.track_variable(self, variable)
        return variable

    def _inner_learning_rate(self):
        """What the inner optimizer reads as its learning rate: ``r_t * eta(tau_t)``."""
        if not self.built:
            return self._base_learning_rate_at(0.0)
        return tf.convert_to_tensor(self._scaled_learning_rate)

    def _base_learning_rate_at(self, step):
        """``eta(step)``: the base recipe's learning rate at a (fractional) step."""
        stored = keras_seam.stored_learning_rate(self)
        if isinstance(stored, keras.optimizers.schedules.LearningRateSchedule):
            return tf.cast(stored(tf.cast(step, tf.float32)), tf.float32)
        return tf.cast(tf.convert_to_tensor(stored), tf.float32)

    def _current_learning_rate(self):
        # ``optimizer.learning_rate``: the base rate at the scale-invariant clock.
        return self._base_learning_rate_at(self._tau if self.built else 0.0)

    @property
    def scale_invariant_steps(self):
        """``tau``: updates of the base run that the updates so far are worth (a Python float)."""
        return float(self._tau.numpy()) if self.built else 0.0

    @property
    def gain(self):
        """The last applied update's gain ratio ``r_t`` (1 before any)."""
        return float(self._gain.numpy()) if self.built else 1.0

    @property
    def scaled_learning_rate(self):
        """The learning rate the inner optimizer used last: ``r_t * eta(tau_t)``."""
        return float(keras.ops.convert_to_numpy(self._inner_learning_rate()))

    @property
    def current_scale(self):
        """``S`` in use (a Python float)."""
        if self.built:
            return float(self._scale_in_use())
        return float(self.scale) if self.scale is not None else float(self.num_gradient_samples)

    def _scale_in_use(self):
        """``S``: the scale set (``scale=`` or :meth:`set_scale`), else ``k`` of the current strategy."""
        scale = tf.convert_to_tensor(self._scale)
        return tf.where(scale > 0.0, scale, float(self.num_gradient_samples))

    def noise_scale(self, base_batch_size):
        """McCandlish et al.'s ``B_simple = tr(Sigma) / |G|^2`` in examples, from the averages.

        Args:
            base_batch_size: ``B_0``, the examples in one base batch (the batch
                of the recipe at ``S = 1``).
        """
        self._check_built("noise_scale")
        return float(gain.noise_scale(self._variance_average, self._norm_average, base_batch_size))

    def set_scale(self, scale):
        """Sets ``S`` (call eagerly, between ``fit`` calls): the batch over the base batch."""
        validation.check_number("scale", scale, low=1.0)
        self._check_built("set_scale")
        self._scale.assign(float(scale))

    def _check_built(self, what):
        if not self.built:
            raise ValueError(f"Build {type(self).__name__} (its first step, or `optimizer.build(variables)`) "
                             f"before calling {what}.")

    # ------------------------------------------------------------ update path
    def _make_moments_recorder(self):
        # The gain reads the recorder's sums on every update (``observe`` records
        # them always); the mean-GSNR column only on request (``GSNRMonitor``).
        return MomentsRecorder(statistic_names=self.statistic_names, every_update=False)

    def _update_from_reduced_statistics(self, statistics, trainable_variables):
        """One applied update (skipped ones never get here): the recorder's moments, the gain, the inner step."""
        means = self._moments.observe(statistics, trainable_variables)
        sample_variance, gradient_norm = self._moments.noise_estimates()
        tau = tf.convert_to_tensor(self._tau)
        ratio, variance_average, norm_average, next_tau = gain.gain_step(
            tf.convert_to_tensor(self._variance_average), tf.convert_to_tensor(self._norm_average), tau,
            sample_variance, gradient_norm, num_samples=self.num_gradient_samples,
            scale=self._scale_in_use(), smoothing=self.smoothing,
        )
        self._scaled_learning_rate.assign(ratio * self._base_learning_rate_at(tau))
        self._variance_average.assign(variance_average)
        self._norm_average.assign(norm_average)
        self._gain.assign(ratio)
        self._tau.assign(next_tau)
        apply_reduced_gradients(self.inner_optimizer, means, trainable_variables)

    # ------------------------------------------------------------------ config
    def get_config(self):
        config = super().get_config()
        config = {key: config[key] for key in ("name",) + WRAPPER_ARGUMENTS if key in config}
        inner = keras.saving.serialize_keras_object(self.inner_optimizer)
        # The inner optimizer's learning rate is AdaScale's callable; save the base recipe's in its place.
        stored = keras_seam.stored_learning_rate(self)
        inner["config"]["learning_rate"] = (
            keras.optimizers.schedules.serialize(stored)
            if isinstance(stored, keras.optimizers.schedules.LearningRateSchedule)
            else float(keras.ops.convert_to_numpy(stored))
        )
        config.update({"inner_optimizer": inner, "scale": self.scale, "smoothing": self.smoothing})
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = copy.deepcopy(config)  # Keras's from_config rewrites the nested learning rate in place
        inner = keras.saving.deserialize_keras_object(config.pop("inner_optimizer"), custom_objects=custom_objects)
        return cls(inner, **config)


def _reject_inner_arguments(kwargs):
    for argument in _INNER_ARGUMENTS + ("learning_rate",):
        if kwargs.get(argument) is not None:
            raise ValueError(
                f"AdaScale does not take `{argument}`: set it on the inner optimizer, e.g. "
                f"AdaScale(keras.optimizers.SGD({argument}=...)). Received: {argument}={kwargs[argument]!r}"
            )
        kwargs.pop(argument, None)


def _base_learning_rate(inner_optimizer):
    """The inner optimizer's learning rate as a float or a schedule (the base recipe's)."""
    stored = keras_seam.stored_learning_rate(inner_optimizer)
    if isinstance(stored, keras.optimizers.schedules.LearningRateSchedule):
        return stored
    if isinstance(stored, keras.Variable):
        if tf.executing_eagerly():
            return float(stored.numpy())
        # Constructed inside a graph (e.g. a config check): the value it was created with.
        return float(tf.get_static_value(stored.value.initial_value))
    raise ValueError(
        "AdaScale needs the inner optimizer's learning rate as a float or a "
        f"keras.optimizers.schedules.LearningRateSchedule; received a {type(stored).__name__}. "
        "A schedule is evaluated at the scale-invariant clock tau."
    )


class StopAtScaleInvariantSteps(keras.callbacks.Callback):
    """Stops ``fit`` once AdaScale's clock ``tau`` reaches the base run's number of updates.

    AdaScale's updates at scale ``S`` are worth ``r_t`` (between 1 and ``S``)
    updates of the base run each; the base recipe's step budget is reached when
    ``optimizer.scale_invariant_steps >= steps``. Checked after every batch.

    Args:
        steps: float > 0, the base run's number of updates (e.g. epochs x
            examples / base batch size).
    """

    def __init__(self, steps):
        super().__init__()
        self.steps = validation.check_number("steps", steps, low=0.0, low_inclusive=False)

    def _adascale(self):
        optimizer = self.model.optimizer
        if not isinstance(optimizer, AdaScale):  # e.g. inside a LossScaleOptimizer
            optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        if not isinstance(optimizer, AdaScale):
            raise ValueError("StopAtScaleInvariantSteps needs a model compiled with an AdaScale optimizer; "
                             f"received {type(self.model.optimizer).__name__}.")
        return optimizer

    def on_train_begin(self, logs=None):
        self._adascale()

    def on_train_batch_end(self, batch, logs=None):
        if self._adascale().scale_invariant_steps >= self.steps:
            self.model.stop_training = True
