"""Training callbacks: GSNR and gradient-noise-scale monitoring.

The VR optimizers (:mod:`tf_largebatch.optimizers.vr`) already compute, on every
update, the mean and the variance of the ``k`` gradient samples of the step
(``k`` = replicas x accumulation micro-batches), and record per-variable sums of
them on the updates a reader asks for (or on every update with
``record_gradient_statistics=True``); every other optimizer of the package
records them on every update when created with
``record_gradient_statistics=True`` (the squares travel in the step's one
all-reduce; off by default). :class:`GSNRMonitor` turns those records into TensorBoard summaries,
including McCandlish et al.'s simple gradient noise scale
``B_simple = tr(Sigma) / |G|^2``. It adds no backward pass and no collective: it
only reads optimizer variables on logging steps.

Noise-scale math (McCandlish et al. 2018, Appendix A.1). A gradient estimated
from ``B`` examples has ``E|G_B|^2 = |G|^2 + tr(Sigma) / B``, with ``G`` the true
gradient and ``Sigma`` the per-example gradient covariance. Measuring
``|G_B|^2`` at two batch sizes ``B_small < B_big`` gives unbiased estimates::

    |G|^2     = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

Here ``B_big = B`` (the global batch) and ``B_small = B / k`` (one sample); the
VR statistics give ``|G_big|^2 = sum gbar^2`` and the mean over samples of
``|G_small|^2 = sum (variance + gbar^2)``. Both estimates are noisy (``|G|^2``
can be negative), so each is smoothed by its own exponential moving average and
``B_simple`` is the ratio of the averages, as the paper recommends.
"""

import importlib.util
import math
import os

import keras
import tensorflow as tf

from tf_largebatch import validation
from tf_largebatch.optimizers import LargeBatchOptimizer, moments


# --------------------------------------------------------------------- math
def unbiased_noise_estimates(small_square_norm, big_square_norm, small_batch, big_batch):
    """McCandlish et al.'s unbiased ``(|G|^2, tr(Sigma))`` from two batch sizes.

    Args:
        small_square_norm: ``|G_small|^2``, squared norm of a gradient over
            ``small_batch`` examples (or its mean over several such gradients).
        big_square_norm: ``|G_big|^2``, squared norm of a gradient over
            ``big_batch`` examples.
        small_batch: ``B_small > 0``.
        big_batch: ``B_big > B_small``.

    Returns:
        ``(gradient_square_norm, trace_covariance)``, floats (either may be
        negative for a single noisy measurement; they are unbiased).

    References:
        McCandlish et al., "An Empirical Model of Large-Batch Training", 2018,
        Appendix A.1.
    """
    if not 0 < small_batch < big_batch:
        raise ValueError(
            f"Need 0 < small_batch < big_batch. Received: small_batch={small_batch!r}, big_batch={big_batch!r}"
        )
    gradient_square_norm = (big_batch * big_square_norm - small_batch * small_square_norm) / (big_batch - small_batch)
    trace_covariance = (small_square_norm - big_square_norm) / (1.0 / small_batch - 1.0 / big_batch)
    return gradient_square_norm, trace_covariance


def noise_estimates_from_gradient_statistics(mean_square, variance, num_samples, global_batch_size):
    """``(|G|^2, tr(Sigma))`` from the VR optimizers' per-step statistics.

    With ``k`` samples each the mean gradient of ``B / k`` examples, ``mean_square
    = sum gbar^2 = |G_big|^2`` (batch ``B``) and ``variance + mean_square`` is the
    mean over samples of ``|g_i|^2 = |G_small|^2`` (batch ``B / k``). The
    estimates simplify to ``|G|^2 = M - V / (k - 1)`` and ``tr(Sigma) = B V /
    (k - 1)``: the per-sample estimates of
    :func:`tf_largebatch.optimizers.moments.unbiased_noise_estimates`, with the
    per-example covariance ``tr(Sigma)`` being ``B / k`` times the per-sample one.

    Args:
        mean_square: ``sum gbar^2`` over all variables' elements.
        variance: ``sum sigma^2`` over all variables' elements, with
            ``sigma^2 = (1/k) sum_i g_i^2 - gbar^2``.
        num_samples: ``k >= 2``.
        global_batch_size: ``B``, examples per update over all samples.
    """
    if num_samples < 2:
        raise ValueError(f"The noise scale needs k >= 2 gradient samples. Received: num_samples={num_samples!r}")
    sample_variance, square_norm = moments.unbiased_noise_estimates(mean_square, variance, num_samples)
    return square_norm, sample_variance * (global_batch_size / num_samples)


class DebiasedMovingAverage:
    """Exponential moving average with Adam's start-up bias correction.

    ``a <- decay * a + (1 - decay) * x`` from ``a = 0``; :attr:`value` is
    ``a / (1 - decay**n)`` after ``n`` updates, so the first value is ``x``
    itself rather than ``(1 - decay) * x``. ``decay = 0`` is no smoothing.
    """

    def __init__(self, decay):
        self.decay = validation.check_probability("smoothing", decay)
        self.average = 0.0
        self.count = 0

    def update(self, value):
        self.average = self.decay * self.average + (1.0 - self.decay) * float(value)
        self.count += 1
        return self.value

    @property
    def value(self):
        if self.count == 0:
            return math.nan
        return self.average / (1.0 - self.decay**self.count)


# ----------------------------------------------------------------- callback
def _require_tensorboard():
    """``tf.summary.scalar`` comes from the ``tensorboard`` package, which TensorFlow
    2.21 does not install itself; say so before training starts."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ImportError(
            "GSNRMonitor writes TensorBoard summaries with tf.summary.scalar, which needs the tensorboard "
            "package (TensorFlow does not install it): pip install tensorboard, or tf_largebatch[tensorboard]."
        )


def records_gradient_statistics(optimizer):
    """Whether ``optimizer`` (not what it wraps) can record per-update gradient statistics.

    The VR optimizers always can (on the updates asked for, or on every one);
    every other optimizer of the package when created with
    ``record_gradient_statistics=True``.
    """
    return isinstance(optimizer, LargeBatchOptimizer) and optimizer.records_gradient_statistics


def find_statistics_optimizer(optimizer):
    """The optimizer that records gradient statistics, unwrapping ``LossScaleOptimizer``.

    Raises:
        ValueError: if neither ``optimizer`` nor what it wraps records them.
    """
    current = optimizer
    while current is not None:
        if records_gradient_statistics(current):
            return current
        current = current.inner_optimizer if isinstance(current, keras.optimizers.LossScaleOptimizer) else None
    raise ValueError(
        "GSNRMonitor reads the per-step gradient statistics that the optimizers of tf_largebatch record: the "
        "VR optimizers (on request), every other one when created with record_gradient_statistics=True (optionally "
        f"inside a keras LossScaleOptimizer). Received: optimizer={optimizer!r}, which records none. Pass "
        "record_gradient_statistics=True (e.g. tlb.optimizers.LAMB(..., record_gradient_statistics=True)), "
        "or use a VR optimizer."
    )


class GSNRMonitor(keras.callbacks.Callback):
    """Writes GSNR statistics and the gradient noise scale to TensorBoard.

    Works with the VR optimizers and with any optimizer of this package created
    with ``record_gradient_statistics=True`` (also inside a
    ``LossScaleOptimizer``), which compute the statistics as part of their update
    from the ``k`` gradient samples of each step (``k`` = replicas x
    ``gradient_accumulation_steps``, at least 2):
    the callback itself adds no backward pass and no collective. The VR
    optimizers compute the monitoring statistics only on the updates the
    callback asks for (one per reading, via ``request_gradient_statistics``),
    so attached it costs their reductions once every ``update_freq`` batches,
    and not attached nothing.

    Every ``update_freq`` batches, at the first optimizer update completed in
    or after that batch, with the step being that update's
    ``optimizer.iterations``, it writes:

    * ``noise_scale/trace_covariance`` and ``noise_scale/gradient_square_norm``:
      exponential moving averages (decay ``smoothing``, bias-corrected) of the
      unbiased estimates of ``tr(Sigma)`` and ``|G|^2`` (module docstring);
    * ``noise_scale/b_simple``: their ratio ``B_simple`` in examples, McCandlish
      et al.'s estimate of the critical batch size; not written while the
      smoothed ``|G|^2`` is not positive (the ratio is then meaningless);
    * ``gsnr/fraction_at_lower`` / ``gsnr/fraction_at_upper``: fraction of all
      elements whose normalised GSNR was clipped at ``gamma`` / at the upper
      bound;
    * with ``per_variable=True``, per variable path ``p``: ``gsnr_mean/p`` (the
      mean over the variable's elements of the raw GSNR ``gbar^2 / sigma^2``),
      ``gsnr_fraction_at_lower/p`` and ``gsnr_fraction_at_upper/p``.

    The moving averages run over the readings (one per ``update_freq``
    batches) and persist across ``fit`` calls. If the global batch size changes
    (batch-size scheduling), set :attr:`global_batch_size` before the next
    ``fit``.

    Args:
        log_dir: directory for the TensorBoard event files (may be the same as
            ``keras.callbacks.TensorBoard``'s, e.g. ``log_dir + "/gsnr"``).
        global_batch_size: int >= 2, examples per optimizer update over all
            replicas and accumulation micro-batches (``B``).
        update_freq: int >= 1, read and write every this many batches.
        smoothing: float in [0, 1), decay of the two moving averages.
        per_variable: bool, also write per-variable scalars.

    Raises:
        ImportError: at construction, if the ``tensorboard`` package (which
            provides ``tf.summary.scalar``) is not installed.

    References:
        McCandlish et al., "An Empirical Model of Large-Batch Training", 2018,
        §2.2 and Appendix A.1. Jiang et al., "Accelerating Large Batch Training
        via Gradient Signal to Noise Ratio (GSNR)", eq. (7)-(9).
    """

    def __init__(self, log_dir, global_batch_size, update_freq=100, smoothing=0.9, per_variable=False):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise ValueError(f"`log_dir` must be a non-empty path. Received: log_dir={log_dir!r}")
        self.log_dir = os.fspath(log_dir)
        self.global_batch_size = validation.check_positive_int("global_batch_size", global_batch_size, minimum=2)
        self.update_freq = validation.check_positive_int("update_freq", update_freq)
        self.smoothing = validation.check_probability("smoothing", smoothing)
        self.per_variable = validation.check_bool("per_variable", per_variable)
        _require_tensorboard()
        self.trace_covariance = DebiasedMovingAverage(self.smoothing)
        self.gradient_square_norm = DebiasedMovingAverage(self.smoothing)
        self._writer = None
        self._statistics_optimizer = None
        self._batches = 0
        self._last_step = None
        self._reading_due = self._requested = False

    # Keras hooks ------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._statistics_optimizer = find_statistics_optimizer(self.model.optimizer)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        self._batches = 0
        self._reading_due = self._requested = False

    def on_train_batch_begin(self, batch, logs=None):
        if (self._batches + 1) % self.update_freq == 0 and not self._reading_due:
            self._reading_due, self._requested = True, False
        self._request_statistics()

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        self._request_statistics()  # an optimizer built only in the first step
        if self._reading_due and self.write_summaries():
            self._reading_due = False

    def _request_statistics(self):
        if self._reading_due and not self._requested and self._statistics_optimizer.built:
            self._statistics_optimizer.request_gradient_statistics()
            self._requested = True

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

    # ----------------------------------------------------------------------
    def write_summaries(self):
        """Reads the newest recorded statistics and writes them, once per update.

        A reading is due every ``update_freq`` batches; the optimizer is asked
        for the statistics of its next update at the start of that batch
        (:meth:`~tf_largebatch.optimizers.LargeBatchOptimizer.request_gradient_statistics`;
        optimizers created with ``record_gradient_statistics=True`` record
        every update anyway). The scalars are written at the step of the update
        they were recorded on (``gradient_statistics_step``); mid gradient
        accumulation, the reading waits for the update.

        Returns the dict of scalars written (empty if no update was recorded
        since the last reading).
        """
        optimizer = self._statistics_optimizer
        if optimizer is None or not optimizer.built:
            return {}
        step = optimizer.gradient_statistics_step
        if step == 0 or step == self._last_step:
            return {}
        self._last_step = step
        statistics = optimizer.gradient_statistics()
        sizes = {v.path: int(math.prod(v.shape)) for v in self.model.trainable_variables}
        mean_square = sum(s["mean_square"] for s in statistics.values())
        variance = sum(s["variance"] for s in statistics.values())
        gradient_square_norm, trace_covariance = noise_estimates_from_gradient_statistics(
            mean_square, variance, optimizer.num_gradient_samples, self.global_batch_size
        )
        scalars = {
            "noise_scale/trace_covariance": self.trace_covariance.update(trace_covariance),
            "noise_scale/gradient_square_norm": self.gradient_square_norm.update(gradient_square_norm),
        }
        if self.gradient_square_norm.value > 0:
            scalars["noise_scale/b_simple"] = self.trace_covariance.value / self.gradient_square_norm.value
        total = sum(sizes[path] for path in statistics)
        # Clip fractions exist for the VR optimizers only (the others do not clip a GSNR).
        clipped = [name for name in ("fraction_at_lower", "fraction_at_upper") if name in next(iter(statistics.values()))]
        for name in clipped:
            scalars[f"gsnr/{name}"] = sum(s[name] * sizes[path] for path, s in statistics.items()) / total
        if self.per_variable:
            for path, s in statistics.items():
                scalars[f"gsnr_mean/{path}"] = s["gsnr_mean"]
                for name in clipped:
                    scalars[f"gsnr_{name}/{path}"] = s[name]
        with self._writer.as_default(step=step):
            for tag, value in scalars.items():
                tf.summary.scalar(tag, value)
        return scalars
