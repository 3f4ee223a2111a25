"""The study's statistics: intervals, paired comparisons and the bootstrap, as small pure functions.

Every comparison the study prints comes from these:

* :func:`t_interval`: the mean of a few seeds with a two-sided Student-t interval
  (``mean +- t_{(1+c)/2, n-1} s / sqrt(n)``, ``s`` with ``ddof=1``);
* :func:`paired_ratio`: two optimizers on the *same* seeds, compared through the
  per-seed log ratio of their steps, with a t interval on its mean, reported as a
  percentage difference (``100 (exp(d) - 1)``);
* :func:`bootstrap_interval`: a percentile bootstrap with a fixed seed, for
  statistics that have no closed-form interval (the critical batch of a fit).

References:
    Shallue et al., "Measuring the Effects of Data Parallelism on Neural Network
    Training", JMLR 2019. Efron and Tibshirani, "An Introduction to the Bootstrap",
    1993, ch. 13 (percentile intervals).
"""

import math

import numpy as np

#: Confidence level of every interval the study prints.
CONFIDENCE = 0.95
#: Seed of every bootstrap (the same data give the same interval).
BOOTSTRAP_SEED = 0
#: Bootstrap resamples.
BOOTSTRAP_RESAMPLES = 2000


def t_quantile(probability, degrees_of_freedom):
    """The Student-t quantile ``t_{p, df}`` (``scipy.stats.t.ppf``)."""
    from scipy import stats

    return float(stats.t.ppf(probability, degrees_of_freedom))


def t_interval(values, confidence=CONFIDENCE):
    """Mean of ``values`` with a two-sided Student-t interval.

    Args:
        values: finite numbers (e.g. one per seed).
        confidence: in (0, 1).

    Returns:
        ``{"mean", "low", "high", "sd", "n"}``; with ``n < 2`` the interval is
        ``None`` (one seed has no spread), with ``n == 0`` everything is ``None``.
    """
    values = np.asarray([float(v) for v in values], dtype=np.float64)
    n = len(values)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "sd": None, "n": 0}
    mean = float(values.mean())
    if n < 2:
        return {"mean": mean, "low": None, "high": None, "sd": None, "n": 1}
    sd = float(values.std(ddof=1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "sd": sd, "n": n}


def paired_ratio(candidate, reference, confidence=CONFIDENCE):
    """How many more (or fewer) steps ``candidate`` needs than ``reference`` on the same seeds.

    Per seed ``d_i = log(candidate_i / reference_i)``; a t interval on the mean
    of ``d`` is mapped back to a percentage, ``100 (exp(d) - 1)``: negative means
    the candidate needs fewer steps. Seeds where either value is missing (the
    target was not reached) are left out and counted.

    Args:
        candidate: per-seed positive numbers or ``None``.
        reference: the same seeds' numbers for the reference, same length.
        confidence: in (0, 1).

    Returns:
        ``{"percent", "low", "high", "n", "missing", "significant"}``;
        ``significant`` is True when the interval excludes 0 (needs ``n >= 2``).
    """
    if len(candidate) != len(reference):
        raise ValueError(f"paired values differ in length: {len(candidate)} != {len(reference)}")
    pairs = [(c, r) for c, r in zip(candidate, reference) if c is not None and r is not None and c > 0 and r > 0]
    interval = t_interval([math.log(c / r) for c, r in pairs], confidence)

    def percent(value):
        return None if value is None else 100.0 * (math.exp(value) - 1.0)

    significant = interval["low"] is not None and (interval["low"] > 0 or interval["high"] < 0)
    return {"percent": percent(interval["mean"]), "low": percent(interval["low"]),
            "high": percent(interval["high"]), "n": interval["n"], "missing": len(candidate) - len(pairs),
            "significant": bool(significant)}


def bootstrap_draws(samples, statistic, resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED):
    """``statistic`` of ``resamples`` bootstrap resamples of independent groups (fixed seed).

    Each resample draws, within every group independently and with replacement,
    as many values as the group holds, then evaluates ``statistic`` on the
    resampled groups.

    Args:
        samples: a list of groups, each a list of numbers (e.g. one group per
            batch size, holding its seeds' steps to target).
        statistic: ``statistic(groups) -> value`` (anything; e.g. a float or a tuple).
        resamples: number of bootstrap resamples.
        seed: seed of the resampling.

    Returns:
        The list of ``resamples`` values.
    """
    rng = np.random.default_rng(seed)
    groups = [np.asarray(group, dtype=np.float64) for group in samples]
    return [statistic([group[rng.integers(0, len(group), len(group))] if len(group) else group for group in groups])
            for _ in range(resamples)]


def percentile_interval(values, confidence=CONFIDENCE, minimum_valid=0.5):
    """``(low, high)`` percentiles of the finite ``values``; ``(None, None)`` if fewer than ``minimum_valid`` are."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values or len(finite) < minimum_valid * len(values):
        return None, None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_interval(samples, statistic, confidence=CONFIDENCE, resamples=BOOTSTRAP_RESAMPLES,
                       seed=BOOTSTRAP_SEED):
    """Percentile bootstrap interval of ``statistic`` over independent groups of samples.

    Resamples where ``statistic`` returns ``None`` or a non-finite value are
    dropped and counted (:func:`bootstrap_draws` draws them).

    Returns:
        ``{"low", "high", "valid", "resamples"}`` (``low``/``high`` ``None`` if
        fewer than half the resamples gave a finite value).
    """
    values = bootstrap_draws(samples, statistic, resamples, seed)
    low, high = percentile_interval(values, confidence)
    valid = sum(v is not None and math.isfinite(v) for v in values)
    return {"low": low, "high": high, "valid": valid, "resamples": resamples}
