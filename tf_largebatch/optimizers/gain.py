"""AdaScale's gain ratio and scale-invariant clock, as small pure functions.

Johnson, Agrawal, Gu and Guestrin, "AdaScale SGD: A User-Friendly Algorithm for
Distributed Training", ICML 2020, Algorithm 1.

Notation. An update averages ``k >= 2`` gradient samples ``g_1 .. g_k``
(replicas x accumulation micro-batches), each the mean gradient of ``B / k``
examples. The *scale* ``S >= 1`` is the update's batch ``B`` over the base
batch ``B_0`` of the recipe being scaled (by default ``S = k``: each sample is
one base batch, as in the paper, where each of ``S`` workers computes one
base-batch gradient). All quantities are sums over every element of every
trained variable (squared L2 norms, traces). The two unbiased estimates come
from the package's moments recorder
(:func:`tf_largebatch.optimizers.moments.unbiased_noise_estimates`, whose
docstring derives them; this module does not compute moments)::

    s2_b       = 1/(k-1) sum_i |g_i - gbar|^2      unbiased variance of one sample
    mu2        = |gbar|^2 - s2_b / k              unbiased |grad F|^2

and this module rescales the first to one base batch::

    sigma2     = s2_b * S / k

``sigma2`` is the paper's ``sigma^2`` (the variance of a base-batch gradient,
``tr(Sigma) / B_0`` with ``Sigma`` the per-example covariance) and ``mu2`` its
``|grad F(w)|^2``: ``E|gbar|^2 = |grad F|^2 + tr(Sigma) / B`` and
``s2_b / k`` is unbiased for ``tr(Sigma) / B`` (McCandlish, Kaplan, Amodei
et al., "An Empirical Model of Large-Batch Training", 2018, Appendix A, whose
``|G|^2`` and ``tr(Sigma)`` estimators these are, written with ``k`` samples
of ``B / k`` examples in place of their two batch sizes). With ``S = k`` they
are exactly the paper's Algorithm 1 estimators ``sigma_hat^2 = 1/(S-1) sum
|g_i - gbar|^2`` and ``mu_hat^2 = |gbar|^2 - sigma_hat^2 / S``.

Smoothing (the paper's practical algorithm averages the two estimates over
updates, with a factor that depends on the scale; the default factor here is
fairscale's, ``theta = max(1 - S/1000, 0)``: a larger scale averages over
fewer updates, since each update already averages over more samples), or a
fixed ``theta`` given by the user::

    sigma2_avg <- theta * sigma2_avg + (1 - theta) * sigma2
    mu2_avg    <- theta * mu2_avg    + (1 - theta) * mu2
    r_t        =  (sigma2_avg + mu2_avg) / (sigma2_avg / S + mu2_avg)
    tau_{t+1}  =  tau_t + r_t

The averages start at 0 and are not bias-corrected: both carry the same
factor ``1 - prod(theta)``, which cancels in ``r_t`` (and in the noise
scale). They average the *unclamped* estimates, so a single negative ``mu2``
(likely when the true gradient is small against the noise) does not bias them.

Guards (the paper is silent; documented choices, all scale-free, no epsilon):

* ``mu2_avg <= 0`` is read as ``|grad F|^2 = 0``: the gain is ``S`` when
  ``sigma2_avg > 0`` (pure noise: the full linear-scaling gain), and 1 when
  both are 0 (no gradient at all: the inner optimizer's step).
* ``sigma2_avg == 0`` (identical samples: every replica saw the same data):
  ``r_t = 1``, i.e. the inner optimizer's own update. Identical samples give
  exactly 0 because the per-element variance below round-off of its second
  moment is counted as 0 (:func:`tf_largebatch.optimizers.gsnr.sample_variance`).
* ``r_t`` is clipped to ``[1, S]`` against round-off (it lies there whenever
  ``sigma2_avg >= 0`` and ``mu2_avg >= 0``).

References:
    Johnson, Agrawal, Gu and Guestrin, "AdaScale SGD: A User-Friendly Algorithm
        for Distributed Training", ICML 2020, Algorithm 1, Section 3.
    McCandlish, Kaplan, Amodei and the OpenAI Dota Team, "An Empirical Model of
        Large-Batch Training", arXiv:1812.06162, 2018, Appendix A.
"""

import tensorflow as tf

from tf_largebatch.optimizers import rules

#: ``theta = max(1 - S / SMOOTHING_HORIZON, 0)`` by default.
SMOOTHING_HORIZON = 1000.0


def base_batch_variance(sample_variance, num_samples, scale):
    """``sigma2 = s2_b * S / k``: the variance of a gradient over one base batch.

    A sample holds ``B / k`` examples and a base batch ``B / S``, and the
    variance of a mean over ``n`` examples is ``tr(Sigma) / n``.
    """
    return sample_variance * (tf.cast(scale, tf.float32) / float(num_samples))


def default_smoothing(scale):
    """``theta = max(1 - S / 1000, 0)`` (a float32 tensor)."""
    return tf.maximum(1.0 - tf.cast(scale, tf.float32) / SMOOTHING_HORIZON, 0.0)


def smooth(average, estimate, theta):
    """``theta * average + (1 - theta) * estimate``."""
    return rules.moving_average(tf.cast(average, tf.float32), tf.cast(estimate, tf.float32), theta)


def gain_ratio(variance, norm, scale):
    """``r = (sigma2 + mu2) / (sigma2 / S + mu2)`` in ``[1, S]``, with the module's guards.

    Args:
        variance: ``sigma2`` (smoothed), >= 0.
        norm: ``mu2`` (smoothed), any sign; ``<= 0`` counts as 0.
        scale: ``S >= 1``.
    """
    scale = tf.cast(scale, tf.float32)
    variance = tf.maximum(tf.cast(variance, tf.float32), 0.0)
    norm = tf.maximum(tf.cast(norm, tf.float32), 0.0)
    numerator = variance + norm
    denominator = variance / scale + norm
    ratio = tf.math.divide_no_nan(numerator, denominator)  # 0 / 0 (no gradient at all) -> 0, then 1
    return tf.clip_by_value(ratio, 1.0, scale)


def advance_clock(tau, gain):
    """``tau_{t+1} = tau_t + r_t`` (scale-invariant steps: base-run updates done)."""
    return tf.cast(tau, tf.float32) + tf.cast(gain, tf.float32)


def noise_scale(variance, norm, base_batch_size):
    """McCandlish et al.'s simple noise scale ``B_simple = tr(Sigma) / |G|^2`` in examples.

    ``tr(Sigma) = sigma2 * B_0``. ``mu2 <= 0`` gives ``+inf`` (no measurable
    signal: any batch is "small"); ``sigma2 == 0`` gives 0.
    """
    trace = tf.maximum(tf.cast(variance, tf.float32), 0.0) * float(base_batch_size)
    norm = tf.cast(norm, tf.float32)
    return tf.where(norm > 0.0, trace / tf.where(norm > 0.0, norm, 1.0),
                    tf.where(trace > 0.0, float("inf"), 0.0))


def gain_step(variance_average, norm_average, tau, sample_variance, gradient_norm, *, num_samples, scale,
              smoothing=None):
    """One whole AdaScale step of the statistics: Algorithm 1 with the smoothed estimators.

    Args:
        variance_average, norm_average: the moving averages before this update.
        tau: the scale-invariant clock before this update (``tau_t``).
        sample_variance: ``s2_b``, the unbiased variance of one of the ``k``
            samples, summed over elements (the recorder's ``sigma**2``).
        gradient_norm: ``mu2``, the unbiased ``|grad F|^2`` (may be negative).
        num_samples: ``k >= 2`` (a Python int).
        scale: ``S >= 1`` (float or scalar tensor).
        smoothing: ``theta`` in ``[0, 1)``, or ``None`` for :func:`default_smoothing`.

    Returns:
        ``(gain r_t, new variance average, new norm average, tau_{t+1})``; the
        update itself uses ``r_t * eta(tau_t)``.
    """
    theta = default_smoothing(scale) if smoothing is None else tf.constant(smoothing, tf.float32)
    variance = base_batch_variance(tf.cast(sample_variance, tf.float32), num_samples, scale)
    norm = tf.cast(gradient_norm, tf.float32)
    variance_average = smooth(variance_average, variance, theta)
    norm_average = smooth(norm_average, norm, theta)
    gain = gain_ratio(variance_average, norm_average, scale)
    return gain, variance_average, norm_average, advance_clock(tau, gain)
