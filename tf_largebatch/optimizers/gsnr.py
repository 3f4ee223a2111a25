"""GSNR math of the VRGD paper, as small pure functions.

Jiang et al., "Accelerating Large Batch Training via Gradient Signal to Noise
Ratio (GSNR)", Algorithm 1 (VR-SGD), 3 (VR-Adam) and 5 (VR-LAMB), eq. (7)-(10).

For ``k`` gradient samples ``g_i`` of one variable (each the mean gradient of
``B/k`` examples; samples are replicas x accumulation micro-batches)::

    mean      gbar  = (1/k) sum_i g_i
    variance  s2    = (1/k) sum_i (g_i - c)**2 - (gbar - c)**2     (clamped at 0)
    GSNR      r     = gbar**2 / s2                                 element-wise
    normalise r     = r / mean_J(r)                                variable's mean is 1
    clip      r     = clip(r, gamma, upper)                        paper: upper = 1

Moments about a shift ``c``. The variance is the same for every ``c``, but its
float32 round-off is not: with ``c = 0`` (raw moments) the two terms are each
about ``(1 + GSNR) s2`` and their difference loses ``log10(GSNR)`` digits, and
the sums over ``k`` samples carry a relative error growing with ``k``. At
``k = 2048`` an element with GSNR 1e3 was indistinguishable from a tie. So each
replica accumulates the moments of ``g - c`` with ``c`` = the mean gradient
of the previous *applied* update, which every replica holds identically (the
one all-reduce still carries exactly two moments, and the subtraction is part
of the pass that squares). The terms are then about ``s2 + (gbar - c)**2``:
when the mean gradient moves little between updates compared with the
per-sample noise, the cancellation is gone, whatever the GSNR. The first update
of a run has no previous mean: on one replica its shift is the first
micro-batch's gradient (a sample all the others are compared with, so ties
give exactly ``s2 = 0``). With several replicas each replica sees another
first micro-batch and no value is shared without a second collective, so the
first update has ``c = 0`` (raw moments) and only the raw resolution: a
variance under the round-off tolerance ``4 k eps * (1/k) sum g_i**2`` cannot be
told from 0. From ``k >= SHIFTED_MOMENTS_MIN_SAMPLES`` that tolerance lies
below genuine GSNRs (``1 / (4 k eps)`` is about 1e3 at ``k = 2048``), so that
update counts such a variance as *equal to the tolerance*
(``variance_from_square(..., at_resolution_limit=True)``): the GSNR is finite,
about ``gbar**2 / (4 k eps (1/k) sum g_i**2)`` (at most ``1 / (4 k eps)``),
the resolution limit, never infinite. A genuine GSNR of 1.1e3 at
``k = 2048`` reads as about 1e3 instead of reaching the upper clip bound; a
true tie on that one update reads the same (it cannot be told apart).
Every later update, and every update on one replica, has shifted moments and
exact ties. Below ``SHIFTED_MOMENTS_MIN_SAMPLES`` moments stay raw on every
update and round-off counts as a tie (only GSNRs above ``1 / (4 k eps)``,
over 3e4, are affected).

Degenerate statistics (the paper is silent; these are the documented choices,
all finite and all scale-free):

* ``s2 == 0`` and ``gbar != 0`` (every sample agrees exactly, e.g. identical
  replicas): infinite GSNR, so the factor is ``upper``; such elements are left
  out of the normalising mean (they would make it infinite).
* ``s2 == 0`` and ``gbar == 0`` (no sample carries any gradient): GSNR 0.
* no element with ``s2 > 0`` and ``gbar != 0`` (nothing to normalise against:
  a variable whose gradient is exactly zero, or a single-element variable whose
  normalised GSNR is 1 by definition): the normalised GSNR is 1 for the
  elements with finite GSNR, i.e. the base optimizer's step.
* ``s2`` below floating-point round-off of the second moment about ``c``
  counts as 0 (except on the raw first update with several replicas at large
  ``k``, above: there it counts as the tolerance). The tolerance is relative (``4 k eps_float32`` of
  ``(1/k) sum (g_i - c)**2``), so the result does not change when every
  gradient (and the shift with it) is multiplied by any ``c`` (GSNR is
  scale-free), and it only catches ties: identical samples give exactly
  ``s2 = 0`` up to that round-off.

References:
    Jiang et al., "Accelerating Large Batch Training via Gradient Signal to
        Noise Ratio (GSNR)", Algorithms 1, 3, 5, eq. (7)-(10).
    Chan, Golub and LeVeque, "Algorithms for Computing the Sample Variance:
        Analysis and Recommendations", The American Statistician, 1983
        (shifted data for the one-pass variance).
"""

import numpy as np
import tensorflow as tf

#: Relative round-off tolerance per gradient sample for ``(1/k) sum (g - c)**2 - (gbar - c)**2``.
VARIANCE_ROUNDOFF_PER_SAMPLE = 4.0 * float(np.finfo(np.float32).eps)

#: The dtypes the second moment can be all-reduced in (``second_moment_dtype`` of the VR optimizers).
SECOND_MOMENT_DTYPES = ("float32", "bfloat16")

#: bfloat16's unit round-off (8 significant bits): a rounding moves a value by at most this fraction of it.
BFLOAT16_UNIT_ROUNDOFF = 2.0**-8


def second_moment_reduction_error(dtype, num_replicas):
    """Bound on the relative error of the all-reduced second moment from reducing it in ``dtype``.

    ``"float32"``: 0 (the float32 round-off is in :data:`VARIANCE_ROUNDOFF_PER_SAMPLE`).
    ``"bfloat16"``: each replica's value is rounded to bfloat16 once and the
    all-reduce may add the ``R`` non-negative values in bfloat16, rounding each
    partial sum: at most ``(2 R - 1) u`` with ``u = 2**-8`` (2.7 % at ``R = 4``).

    Args:
        dtype: one of :data:`SECOND_MOMENT_DTYPES`.
        num_replicas: ``R``.
    """
    if dtype == "float32":
        return 0.0
    if dtype == "bfloat16":
        return (2.0 * num_replicas - 1.0) * BFLOAT16_UNIT_ROUNDOFF
    raise ValueError(f"`second_moment_dtype` must be one of {SECOND_MOMENT_DTYPES}. Received: {dtype!r}")


#: Names of the per-variable statistics recorded for monitoring, in order.
STATISTIC_NAMES = ("mean_square", "variance", "gsnr_mean", "fraction_at_lower", "fraction_at_upper")


def shifted_local_moments(gradient, shift, num_replicas):
    """One replica's two local moments about the shared shift: ``(d, d**2)``.

    Inside a replica Keras hands the optimizer ``h = g / R``; the shift ``c``
    is in units of ``g``, so ``d = h - c / R = (g - c) / R``. ``shift=None``
    means ``c = 0``. Both are float32.
    """
    d = tf.cast(gradient, tf.float32)
    if shift is not None:
        d = d - tf.cast(shift, tf.float32) * (1.0 / float(num_replicas))
    return d, tf.square(d)


def moments_from_replica_sums(sum_of_means, sum_of_mean_squares, num_replicas):
    """Sample moments about the shift ``c`` from all-reduced per-replica sums.

    Each replica averages ``d = h - c / R`` and ``d**2`` over its ``A``
    micro-batches (:func:`shifted_local_moments`); the all-reduce sums over the
    ``R`` replicas. With ``k = R A`` samples ``g = R h``::

        gbar - c              = sum_d mean_a d         = sum_of_means
        (1/k) sum (g - c)**2  = R * sum_d mean_a d**2  = R * sum_of_mean_squares

    Returns ``(gbar - c, (1/k) sum (g - c)**2)`` for :func:`sample_variance`;
    ``gbar`` itself is :func:`unshift` of the first. Without a shift (``c = 0``)
    these are the raw mean and second moment.
    """
    shifted_mean = tf.cast(sum_of_means, tf.float32)
    shifted_second_moment = float(num_replicas) * tf.cast(sum_of_mean_squares, tf.float32)
    return shifted_mean, shifted_second_moment


def unshift(shifted_mean, shift):
    """``gbar = (gbar - c) + c``; ``shift=None`` means ``c = 0``."""
    return shifted_mean if shift is None else shifted_mean + tf.cast(shift, tf.float32)


def sample_variance(mean, second_moment, num_samples):
    """``second_moment - mean**2`` (moments about any common shift), clamped at 0,
    with round-off (``4 k eps`` of ``second_moment``) counted as 0."""
    return variance_from_square(tf.square(mean), second_moment, num_samples)


def variance_from_square(square_of_mean, second_moment, num_samples, at_resolution_limit=False,
                         second_moment_error=0.0):
    """:func:`sample_variance` from ``mean**2`` (which callers also need).

    Args:
        square_of_mean: ``(gbar - c)**2``.
        second_moment: ``(1/k) sum (g_i - c)**2``.
        num_samples: ``k``.
        second_moment_error: a further relative error of ``second_moment``
            (:func:`second_moment_reduction_error`, when it was all-reduced in
            bfloat16), added to the round-off tolerance: a variance below it
            cannot be told from a tie and counts as one.
        at_resolution_limit: ``False``, ``True`` or a boolean scalar tensor:
            the moments are raw (``c = 0``) at a ``k`` whose round-off
            tolerance lies below genuine GSNRs (the first update with several
            replicas, module docstring). A variance under the tolerance is then
            only known to be at most the tolerance, and the tolerance itself is
            returned (a finite GSNR at the resolution limit), not 0.
    """
    variance = second_moment - square_of_mean
    tolerance = (VARIANCE_ROUNDOFF_PER_SAMPLE * float(num_samples) + float(second_moment_error)) * second_moment
    if at_resolution_limit is False:
        return tf.where(variance > tolerance, variance, 0.0)  # a scalar 0: no zero-filled pass
    floor = tf.where(tf.convert_to_tensor(at_resolution_limit), tolerance, tf.zeros_like(tolerance))
    return tf.where(variance > tolerance, variance, floor)


def raw_gsnr(signal, variance):
    """Element-wise GSNR ``signal / variance`` and its mean over the finite elements.

    ``signal`` and ``variance`` are non-negative. Returns ``(raw, mean_gsnr)``:
    ``raw`` is ``+inf`` exactly where ``variance == 0 < signal`` (every sample
    agrees: infinite GSNR) and ``0`` where both are 0 (``xdivy``), so the
    upper clip bound needs no mask of its own. ``mean_gsnr`` leaves the
    infinite elements out; it costs one reduction, plus a second pass only when
    some element is infinite.
    """
    raw = tf.math.xdivy(signal, variance)
    total = tf.reduce_sum(raw)
    size = tf.cast(tf.size(raw), raw.dtype)

    def mean_of_finite():
        finite = raw < np.inf
        count = tf.reduce_sum(tf.cast(finite, raw.dtype))
        return tf.reduce_sum(tf.where(finite, raw, tf.zeros_like(raw))) / tf.maximum(count, 1.0)

    return raw, tf.cond(tf.math.is_finite(total), lambda: total / size, mean_of_finite)


def normalize_raw_gsnr(raw, mean_gsnr):
    """``raw / mean_gsnr`` (eq. 8's normalisation; infinite elements stay infinite).

    With nothing to normalise against (``mean_gsnr == 0``: every finite
    element is 0) the finite elements are 1, i.e. the base optimizer's step.
    One element-wise pass either way.
    """
    return tf.cond(mean_gsnr > 0, lambda: raw / mean_gsnr, lambda: raw + 1.0)


def clipped_gsnr(mean, variance, lower, upper):
    """The clipped, normalised GSNR ``r`` of eq. (9): ``(factor, mean_gsnr)``."""
    return clipped_gsnr_of_signal(tf.square(mean), variance, lower, upper)


def clipped_gsnr_of_signal(signal, variance, lower, upper):
    """:func:`clipped_gsnr` from the signal ``mean**2``. An infinite GSNR clips to
    ``upper`` (the documented degenerate case)."""
    raw, mean_gsnr = raw_gsnr(signal, variance)
    normalized = normalize_raw_gsnr(raw, mean_gsnr)
    return tf.clip_by_value(normalized, tf.cast(lower, normalized.dtype), tf.cast(upper, normalized.dtype)), mean_gsnr


def gsnr_statistics(mean, variance, factor, mean_gsnr, lower, upper, signal=None):
    """Per-variable monitoring statistics, a float32 vector in the order of
    :data:`STATISTIC_NAMES`: ``sum gbar**2``, ``sum s2``, the mean raw GSNR, and
    the fractions of elements clipped at ``lower`` and at ``upper``. ``signal``:
    ``mean**2`` if the caller has it."""
    return tf.stack(
        [
            tf.reduce_sum(tf.square(mean) if signal is None else signal),
            tf.reduce_sum(variance),
            mean_gsnr,
            tf.reduce_mean(tf.cast(factor <= lower, tf.float32)),
            tf.reduce_mean(tf.cast(factor >= upper, tf.float32)),
        ]
    )


def gsnr_factor(mean, variance, lower, upper):
    """:func:`clipped_gsnr` plus :func:`gsnr_statistics`: ``(factor, statistics)``."""
    factor, mean_gsnr = clipped_gsnr(mean, variance, lower, upper)
    return factor, gsnr_statistics(mean, variance, factor, mean_gsnr, lower, upper)
