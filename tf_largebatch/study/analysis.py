"""The scaling analysis of a batch-size study: pure functions on recorded runs.

Protocol (Shallue et al., "Measuring the Effects of Data Parallelism on Neural
Network Training", JMLR 2019): for every batch size, tune the learning rate (and
here the schedule length) on a validation split and measure the number of *steps
to reach a target* accuracy on the test split, over several seeds. McCandlish et
al., "An Empirical Model of Large-Batch Training" (2018), predict the bend:
``S = S_min (1 + B_crit / B)`` (:mod:`tf_largebatch.study.scaling_fit`), with
``B_crit`` close to the gradient noise scale ``B_simple = tr(Sigma) / |G|^2``
(:func:`noise_scale`).

A *run* here is a dict with at least ``optimizer``, ``batch_size``,
``learning_rate``, ``diverged`` and ``curve`` (``{"step": [...],
"validation_accuracy": [...], "test_accuracy": [...]}``), as
:mod:`tf_largebatch.study.grid` records it.
"""

import math

import numpy as np

from tf_largebatch.callbacks import unbiased_noise_estimates
from tf_largebatch.study import statistics


def steps_to_target(steps, values, target):
    """First step at which ``values`` reaches ``target`` (>=), interpolated linearly.

    Between two evaluations ``(s0, v0)`` and ``(s1, v1)`` with ``v0 < target <=
    v1`` the crossing is at ``s0 + (s1 - s0) (target - v0) / (v1 - v0)``; it
    lies in ``[s0, s1]``, so its error is at most ``s1 - s0``.

    Args:
        steps: increasing optimizer steps of the evaluations.
        values: the metric at those steps (higher is better, e.g. accuracy).
        target: the value to reach.

    Returns:
        The (fractional) step, or ``None`` if the target is never reached.
    """
    if len(steps) != len(values):
        raise ValueError(f"`steps` and `values` differ in length: {len(steps)} != {len(values)}")
    previous = None
    for step, value in zip(steps, values):
        if value is not None and math.isfinite(value) and value >= target:
            if previous is None:
                return float(step)
            s0, v0 = previous
            return float(s0 + (step - s0) * (target - v0) / (value - v0))
        previous = (step, value) if value is not None and math.isfinite(value) else None
    return None


def run_steps_to_target(run, target, split="test"):
    """Steps to ``target`` accuracy on ``split`` of one run; ``None`` if never reached.

    A run that reached the target and diverged later has reached it.
    """
    if run is None:
        return None
    return steps_to_target(run["curve"]["step"], run["curve"][f"{split}_accuracy"], target)


def _rank(run, target, split):
    """Sort key: reached the target in fewer steps first, then higher best accuracy."""
    steps = run_steps_to_target(run, target, split)
    return (steps is None, steps if steps is not None else 0.0, -(run[f"best_{split}_accuracy"] or 0.0))


def best_run(runs, target, split="validation"):
    """The run with the fewest steps to ``target`` on ``split`` (the selection).

    If none reaches the target, the one with the highest best accuracy among
    those that did not diverge. ``None`` if there is no such run.
    """
    candidates = [run for run in runs
                  if run is not None and (not run["diverged"] or run_steps_to_target(run, target, split) is not None)]
    if not candidates:
        return None
    return min(candidates, key=lambda run: _rank(run, target, split))


def best_setting(groups, target, split="validation"):
    """The selected setting: the fewest mean steps to ``target`` over its tuning seeds, every seed reaching it.

    Args:
        groups: ``{setting: [runs]}``, one run per tuning seed of each setting
            (a setting is e.g. ``(learning_rate, length)``).
        target: the accuracy counted to.
        split: the selection split.

    Returns:
        ``(setting, reached)``: the setting whose every seed reached ``target``
        with the fewest mean steps (``reached`` True); if none did, the one with
        the highest mean best accuracy among those with no divergence before the
        target (``reached`` False); ``(None, False)`` if there is no such setting.
    """
    ranked = []
    for setting, runs in groups.items():
        runs = [run for run in runs if run is not None]
        if not runs:
            continue
        steps = [run_steps_to_target(run, target, split) for run in runs]
        if all(s is not None for s in steps):
            ranked.append(((0, float(np.mean(steps))), setting))
        elif not any(run["diverged"] for run in runs):
            accuracy = float(np.mean([run[f"best_{split}_accuracy"] or 0.0 for run in runs]))
            ranked.append(((1, -accuracy), setting))
    if not ranked:
        return None, False
    key, setting = min(ranked, key=lambda item: item[0])
    return setting, key[0] == 0


def noise_estimates(run, samples, micro_batch):
    """Per noise checkpoint of one run: ``(step, [|G|^2 per probe], [tr(Sigma) per probe])``.

    Each probe holds ``|G_big|^2`` over ``samples * micro_batch`` examples and
    the mean ``|G_small|^2`` over its micro-batches of ``micro_batch``; McCandlish
    et al.'s unbiased estimators (App. A.1,
    :func:`tf_largebatch.callbacks.unbiased_noise_estimates`) turn them into
    ``|G|^2`` and ``tr(Sigma)``.
    """
    out = []
    for step, big, small in run.get("noise") or []:
        pairs = [unbiased_noise_estimates(s, b, micro_batch, samples * micro_batch) for b, s in zip(big, small)]
        out.append((step, [g for g, _ in pairs], [t for _, t in pairs]))
    return out


def noise_scale(runs, samples, micro_batch, target, split="test"):
    """``B_simple = tr(Sigma) / |G|^2`` along runs up to their target, with a bootstrap standard error.

    Pools every probe taken before each run reached ``target`` on ``split`` (all
    probes of a run that never reached it), averages ``|G|^2`` and ``tr(Sigma)``
    separately and divides (as McCandlish et al. recommend). The standard error
    and 95 % interval come from a bootstrap over checkpoints (run, step), each
    resampled with all its probes (fixed seed).

    Returns:
        ``{"b_simple", "standard_error", "low", "high", "checkpoints", "series"}``
        (``series``: per run seed and step, that checkpoint's own ratio), or
        ``b_simple`` None if there are no probes or the mean ``|G|^2`` is not positive.
    """
    units, series = [], []
    for run in runs:
        reached = run_steps_to_target(run, target, split)
        for step, squares, traces in noise_estimates(run, samples, micro_batch):
            if reached is not None and step > reached:
                break
            units.append((float(np.sum(squares)), float(np.sum(traces)), len(squares)))
            mean_square = float(np.mean(squares))
            series.append({"seed": run["seed"], "step": step,
                           "b_simple": float(np.mean(traces)) / mean_square if mean_square > 0 else None})
    result = {"b_simple": None, "standard_error": None, "low": None, "high": None, "checkpoints": len(units),
              "series": series}
    if not units:
        return result

    def ratio(chosen):
        square = sum(u[0] for u in chosen)
        return sum(u[1] for u in chosen) / square if square > 0 else None

    value = ratio(units)
    if value is None:
        return result
    rng = np.random.default_rng(statistics.BOOTSTRAP_SEED)
    draws = [ratio([units[i] for i in rng.integers(0, len(units), len(units))])
             for _ in range(statistics.BOOTSTRAP_RESAMPLES)]
    draws = [d for d in draws if d is not None and math.isfinite(d)]
    if len(units) >= 2 and draws:
        low, high = np.quantile(draws, [0.025, 0.975])
        result.update(standard_error=float(np.std(draws, ddof=1)), low=float(low), high=float(high))
    result["b_simple"] = value
    return result


def intervals_agree(low_a, high_a, low_b, high_b):
    """Whether two intervals overlap (``None`` if either is missing)."""
    if None in (low_a, high_a, low_b, high_b):
        return None
    return bool(low_a <= high_b and low_b <= high_a)


def sensitivity(runs, centre_learning_rate, target, split="validation"):
    """The learning-rate sensitivity around a selected learning rate.

    Args:
        runs: the sensitivity runs (one seed, one schedule length), any order.
        centre_learning_rate: the selected learning rate they surround.
        target: the accuracy counted to.

    Returns:
        ``{"points": [{"learning_rate", "factor", "steps_to_target", "diverged"}...],
        "reaching_low", "reaching_high"`` (the contiguous range of learning rates
        around the centre that reached the target), ``"diverges_from"`` (the
        smallest learning rate above the centre that diverged, or None)``}``.
    """
    points = []
    for run in sorted(runs, key=lambda r: r["learning_rate"]):
        points.append({"learning_rate": run["learning_rate"], "factor": run["learning_rate"] / centre_learning_rate,
                       "steps_to_target": run_steps_to_target(run, target, split), "diverged": run["diverged"]})
    centre = min(range(len(points)), key=lambda i: abs(math.log(points[i]["factor"]))) if points else None
    low = high = None
    if centre is not None and points[centre]["steps_to_target"] is not None:
        lo = hi = centre
        while lo > 0 and points[lo - 1]["steps_to_target"] is not None:
            lo -= 1
        while hi < len(points) - 1 and points[hi + 1]["steps_to_target"] is not None:
            hi += 1
        low, high = points[lo]["learning_rate"], points[hi]["learning_rate"]
    above = [p["learning_rate"] for p in points[(centre or 0) + 1:] if p["diverged"]] if points else []
    return {"points": points, "reaching_low": low, "reaching_high": high,
            "diverges_from": min(above) if above else None}
