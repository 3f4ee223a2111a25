"""McCandlish et al.'s scaling model, fitted to steps to target, with its diagnostics.

The model (McCandlish et al. 2018, eq. 2.11) in its two forms, with the same two
parameters::

    steps      S = S_min (1 + B_crit / B)
    examples   E = E_min (1 + B / B_crit),     E = S B,  E_min = S_min B_crit

``B_crit`` is where both trade-offs are balanced: at ``B = B_crit`` a run needs
twice the minimal steps *and* twice the minimal examples. The study calls that
batch the **maximal useful batch**: beyond it, doubling the batch saves less than
a third of the steps (``S(2B)/S(B) > 2/3``) and costs more examples than it saves
steps. One number, one meaning: the study prints no other "useful batch".

:func:`fit_with_diagnostics` fits the per-batch mean of several seeds, prints
the relative residuals, bootstraps the parameters over seeds, and flags the fit
as **does not fit** when a point misses the curve by more than
:data:`RESIDUAL_THRESHOLD` *and* by more than two standard errors of its own mean.

References:
    McCandlish, Kaplan, Amodei and the OpenAI Dota Team, "An Empirical Model of
    Large-Batch Training", 2018, eq. (2.11) and Figure 4.
"""

import math

import numpy as np

from tf_largebatch.study import statistics

#: A point further than this (relative) from the fitted curve, and further than two standard errors
#: of its mean over seeds, makes the fit "does not fit".
RESIDUAL_THRESHOLD = 0.10


def fit_critical_batch(batch_sizes, steps):
    """Fits ``S = S_min (1 + B_crit / B)`` to steps to target by relative least squares.

    With ``a = S_min`` and ``c = S_min B_crit`` the model is linear, ``S = a + c /
    B``; minimising the relative residuals ``sum ((S_i - a - c / B_i) / S_i)^2``
    (steps span orders of magnitude) is a linear least-squares problem. Points
    that did not reach the target (``None``) are left out.

    Returns:
        ``{"s_min", "b_crit", "points"}``. With fewer than 2 points both are
        ``None``. If the best fit has ``S_min <= 0`` (no bend within the
        measured range: steps fall as fast as ``1 / B`` or faster), ``s_min`` is
        0 and ``b_crit`` is ``inf``; if it has ``c < 0`` (steps do not fall with
        the batch), ``b_crit`` is 0 and ``s_min`` is the mean of the steps.
    """
    points = [(float(b), float(s)) for b, s in zip(batch_sizes, steps) if s is not None and s > 0]
    result = {"s_min": None, "b_crit": None, "points": len(points)}
    if len(points) < 2:
        return result
    batch = np.array([b for b, _ in points])
    measured = np.array([s for _, s in points])
    design = np.stack([1.0 / measured, 1.0 / (batch * measured)], axis=1)
    (a, c), *_ = np.linalg.lstsq(design, np.ones_like(measured), rcond=None)
    if a <= 0:
        result.update(s_min=0.0, b_crit=math.inf)
    elif c < 0:
        result.update(s_min=float(measured.mean()), b_crit=0.0)
    else:
        result.update(s_min=float(a), b_crit=float(c / a))
    return result


def fitted_steps(fit, batch_size):
    """``S_min (1 + B_crit / B)`` of a :func:`fit_critical_batch` result (None if no finite fit)."""
    if fit["s_min"] is None or fit["b_crit"] is None or not math.isfinite(fit["b_crit"]):
        return None
    return fit["s_min"] * (1.0 + fit["b_crit"] / batch_size)


def residuals(fit, batch_sizes, steps):
    """Relative residuals ``S_i / fitted(B_i) - 1`` (``None`` where a value or the fit is missing)."""
    out = []
    for batch_size, value in zip(batch_sizes, steps):
        expected = fitted_steps(fit, batch_size)
        out.append(None if value is None or not expected else float(value) / expected - 1.0)
    return out


def _mean_or_none(values):
    return float(np.mean(values)) if len(values) else None


def misses(residual, relative_standard_error, threshold=RESIDUAL_THRESHOLD):
    """Whether one point misses the fit: beyond ``threshold`` and beyond two standard errors."""
    if residual is None:
        return False
    return abs(residual) > max(threshold, 2.0 * (relative_standard_error or 0.0))


def fit_with_diagnostics(batch_sizes, steps_by_seed, threshold=RESIDUAL_THRESHOLD):
    """The fit of the seed means, its residuals, bootstrap intervals and the "does not fit" flag.

    Args:
        batch_sizes: increasing batch sizes.
        steps_by_seed: per batch size, the steps to target of each seed that
            reached it (a list, possibly empty).
        threshold: relative residual beyond which (and beyond 2 standard errors)
            a point misses the fit.

    Returns:
        A dict: ``s_min``, ``b_crit``, ``e_min`` (= ``S_min B_crit``), their 95 %
        bootstrap intervals (``*_low``, ``*_high``; resampling seeds within each
        batch size, fixed seed), ``points``, ``mean_steps``, ``residuals``
        (relative), ``relative_standard_errors``, ``worst_residual``,
        ``does_not_fit`` (bool) and ``threshold``.
    """
    means = [_mean_or_none(values) for values in steps_by_seed]
    fit = fit_critical_batch(batch_sizes, means)
    relative_errors = []
    for values, mean in zip(steps_by_seed, means):
        if mean and len(values) >= 2:
            relative_errors.append(float(np.std(values, ddof=1) / math.sqrt(len(values)) / mean))
        else:
            relative_errors.append(None)
    fit_residuals = residuals(fit, batch_sizes, means)
    flagged = [misses(r, e, threshold) for r, e in zip(fit_residuals, relative_errors)]
    known = [abs(r) for r in fit_residuals if r is not None]
    result = {
        "s_min": fit["s_min"], "b_crit": fit["b_crit"], "points": fit["points"],
        "e_min": None if fit["s_min"] is None else fit["s_min"] * fit["b_crit"],
        "mean_steps": means, "residuals": fit_residuals, "relative_standard_errors": relative_errors,
        "misses": flagged, "worst_residual": max(known) if known else None,
        "does_not_fit": bool(any(flagged)) or (fit["b_crit"] is not None and not math.isfinite(fit["b_crit"])),
        "threshold": threshold, "band": None,
    }
    for name in ("s_min", "b_crit", "e_min"):
        result[f"{name}_low"] = result[f"{name}_high"] = None
    if fit["points"] >= 2 and any(len(g) >= 2 for g in steps_by_seed):
        result.update(_bootstrap(batch_sizes, steps_by_seed))
    return result


def _bootstrap(batch_sizes, steps_by_seed, band_points=25):
    """Percentile intervals of ``S_min``, ``B_crit``, ``E_min`` and of the fitted curve, over seeds."""
    grid = np.geomspace(min(batch_sizes), max(batch_sizes), band_points)

    def statistic(groups):
        inner = fit_critical_batch(batch_sizes, [_mean_or_none(g) for g in groups])
        if inner["s_min"] is None:
            return None
        curve = [fitted_steps(inner, b) for b in grid]
        return inner["s_min"], inner["b_crit"], inner["s_min"] * inner["b_crit"] if inner["s_min"] else None, curve

    draws = [d for d in statistics.bootstrap_draws(steps_by_seed, statistic)]
    out = {}
    for index, name in enumerate(("s_min", "b_crit", "e_min")):
        values = [None if d is None else d[index] for d in draws]
        out[f"{name}_low"], out[f"{name}_high"] = statistics.percentile_interval(values)
    band = []
    for i, b in enumerate(grid):
        low, high = statistics.percentile_interval([None if d is None else d[3][i] for d in draws])
        band.append([float(b), low, high])
    out["band"] = band
    return out
