"""GSNR math of the VRGD paper, as small pure functions.

Jiang et al., "Accelerating Large Batch Training via Gradient Signal to Noise
Ratio (GSNR)" (``shared/papers/vrgd_gsnr_large_batch.txt``), Algorithm 1 (VR-SGD),
3 (VR-Adam) and 5 (VR-LAMB), eq. (7)-(10).

For ``k`` gradient samples ``g_i`` of one variable (each the mean gradient of
``B/k`` examples; samples are replicas x accumulation micro-batches)::

    mean      gbar  = (1/k) sum_i g_i
    variance  s2    = (1/k) sum_i g_i**2 - gbar**2       (clamped at 0)
    GSNR      r     = gbar**2 / s2                       element-wise
    normalise r     = r / mean_J(r)                      variable's mean is 1
    clip      r     = clip(r, gamma, upper)              paper: upper = 1

Degenerate statistics (the paper is silent; these are our documented choices,
all finite and all scale-free):

* ``s2 == 0`` and ``gbar != 0`` (every sample agrees exactly, e.g. identical
  replicas): infinite GSNR, so the factor is ``upper``; such elements are left
  out of the normalising mean (they would make it infinite).
* ``s2 == 0`` and ``gbar == 0`` (no sample carries any gradient): GSNR 0.
* no element with ``s2 > 0`` and ``gbar != 0`` (nothing to normalise against:
  a variable whose gradient is exactly zero, or a single-element variable whose
  normalised GSNR is 1 by definition): the normalised GSNR is 1 for the
  elements with finite GSNR, i.e. the base optimizer's step.
* ``s2`` below floating-point round-off of ``(1/k) sum g_i**2`` counts as 0.
  The tolerance is relative (``4 k eps_float32``), so the result does not change
  when every gradient is multiplied by any ``c`` (GSNR is scale-free).
"""

import numpy as np
import tensorflow as tf

#: Relative round-off tolerance per gradient sample for ``(1/k) sum g**2 - gbar**2``.
VARIANCE_ROUNDOFF_PER_SAMPLE = 4.0 * float(np.finfo(np.float32).eps)

#: Names of the per-variable statistics recorded for monitoring, in order.
STATISTIC_NAMES = ("mean_square", "variance", "gsnr_mean", "fraction_at_lower", "fraction_at_upper")


def moments_from_replica_sums(sum_of_means, sum_of_mean_squares, num_replicas):
    """Sample mean and second moment from all-reduced per-replica sums.

    Inside a replica Keras hands the optimizer ``h = g / R`` (the loss is scaled
    by ``1/R``). Each replica averages ``h`` and ``h**2`` over its ``A``
    micro-batches; the all-reduce sums over the ``R`` replicas. With ``k = R A``
    samples ``g = R h``::

        gbar           = sum_d mean_a h          = sum_of_means
        (1/k) sum g**2 = R * sum_d mean_a h**2   = R * sum_of_mean_squares
    """
    mean = tf.cast(sum_of_means, tf.float32)
    second_moment = float(num_replicas) * tf.cast(sum_of_mean_squares, tf.float32)
    return mean, second_moment


def sample_variance(mean, second_moment, num_samples):
    """``(1/k) sum g**2 - gbar**2``, clamped at 0, with round-off counted as 0."""
    variance = second_moment - tf.square(mean)
    tolerance = VARIANCE_ROUNDOFF_PER_SAMPLE * float(num_samples) * second_moment
    return tf.where(variance > tolerance, variance, tf.zeros_like(variance))


def normalized_gsnr(signal, variance):
    """Element-wise GSNR ``signal / variance`` divided by its mean (eq. 8).

    Written for few full passes over the variable (this runs every step on every
    replica): one division, one mask, three reductions and one multiply-add;
    everything else is scalar. Returns ``(normalized, mean_gsnr, certain)``:
    the normalised GSNR (meaningless where ``certain``, which callers overwrite),
    the mean raw GSNR over the elements with finite GSNR, and the mask of
    elements with zero variance but non-zero signal (infinite GSNR).
    """
    raw = tf.math.divide_no_nan(signal, variance)  # 0 where variance == 0
    certain = tf.logical_and(tf.equal(variance, 0.0), signal > 0.0)
    count = tf.cast(tf.size(raw), tf.float32) - tf.reduce_sum(tf.cast(certain, tf.float32))
    mean_gsnr = tf.reduce_sum(raw) / tf.maximum(count, 1.0)
    has_mean = mean_gsnr > 0
    scale = tf.where(has_mean, 1.0 / tf.where(has_mean, mean_gsnr, 1.0), 0.0)
    offset = tf.where(has_mean, 0.0, 1.0)  # nothing to normalise against: 1
    return raw * scale + offset, mean_gsnr, certain


def gsnr_factor(mean, variance, lower, upper):
    """The clipped, normalised GSNR ``r`` of eq. (9), plus monitoring statistics.

    Returns ``(factor, statistics)`` where ``statistics`` is a float32 vector in
    the order of :data:`STATISTIC_NAMES`.
    """
    signal = tf.square(mean)
    normalized, mean_gsnr, certain = normalized_gsnr(signal, variance)
    factor = tf.where(certain, tf.cast(upper, tf.float32), tf.clip_by_value(normalized, lower, upper))
    statistics = tf.stack(
        [
            tf.reduce_sum(signal),
            tf.reduce_sum(variance),
            mean_gsnr,
            tf.reduce_mean(tf.cast(factor <= lower, tf.float32)),
            tf.reduce_mean(tf.cast(factor >= upper, tf.float32)),
        ]
    )
    return factor, statistics
