"""The scaling analysis of a batch-size study: pure functions on recorded runs.

Protocol (Shallue et al., "Measuring the Effects of Data Parallelism on Neural
Network Training", JMLR 2019): for every batch size, tune the learning rate and
measure the number of *steps to reach a target* test metric; plot steps against
batch size on log-log axes next to perfect scaling (steps halve when the batch
doubles). McCandlish et al., "An Empirical Model of Large-Batch Training" (2018),
predict the bend: ``S = S_min (1 + B_crit / B)``, with ``B_crit`` close to the
gradient noise scale ``B_noise = tr(Sigma) / |G|^2``.

A *run* here is a dict with at least ``optimizer``, ``batch_size``,
``learning_rate``, ``diverged`` and ``curve`` (``{"step": [...],
"test_accuracy": [...]}``), as :mod:`tf_largebatch.study.grid` records it.
"""

import math

import numpy as np

from tf_largebatch.callbacks import noise_estimates_from_gradient_statistics


def steps_to_target(steps, values, target):
    """First step at which ``values`` reaches ``target`` (>=), interpolated linearly.

    Between two evaluations ``(s0, v0)`` and ``(s1, v1)`` with ``v0 < target <=
    v1`` the crossing is at ``s0 + (s1 - s0) (target - v0) / (v1 - v0)``.

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


def run_steps_to_target(run, target):
    """Steps to ``target`` test accuracy of one run; ``None`` if diverged or never reached."""
    if run["diverged"]:
        return None
    return steps_to_target(run["curve"]["step"], run["curve"]["test_accuracy"], target)


def _rank(run, target):
    """Sort key: reached the target in fewer steps first, then higher best accuracy."""
    steps = run_steps_to_target(run, target)
    return (steps is None, steps if steps is not None else 0.0, -run["best_test_accuracy"])


def best_run(runs, target):
    """The run with the fewest steps to target among ``runs`` that did not diverge.

    If none reaches the target, the one with the highest best test accuracy.
    ``None`` if every run diverged (or ``runs`` is empty).
    """
    candidates = [run for run in runs if not run["diverged"]]
    if not candidates:
        return None
    return min(candidates, key=lambda run: _rank(run, target))


def widening_direction(runs, target):
    """Where the learning-rate grid of one (optimizer, batch size) must grow, if anywhere.

    Returns ``+1`` when the best run has the largest learning rate tried, ``-1``
    when it has the smallest (or when every run diverged: go lower), else 0.
    """
    if not runs:
        return 0
    rates = sorted(run["learning_rate"] for run in runs)
    best = best_run(runs, target)
    if best is None:
        return -1
    if best["learning_rate"] == rates[-1]:
        return 1
    if best["learning_rate"] == rates[0]:
        return -1
    return 0


def maximal_useful_batch(batch_sizes, steps, tolerance=2.0):
    """The largest batch size still within ``tolerance`` x of perfect scaling.

    Perfect scaling from the smallest batch ``B0`` with steps ``S0`` (that
    reached the target) is ``S0 B0 / B``; a batch size is useful while its steps
    are at most ``tolerance`` times that. The walk goes up from ``B0`` and stops
    at the first batch size that fails (or never reached the target).

    Args:
        batch_sizes: increasing batch sizes.
        steps: steps to target at each (``None``: not reached).
        tolerance: float >= 1.

    Returns:
        The batch size, or ``None`` if the smallest did not reach the target.
    """
    pairs = sorted(zip(batch_sizes, steps))
    if not pairs or pairs[0][1] is None:
        return None
    base_batch, base_steps = pairs[0]
    useful = base_batch
    for batch_size, value in pairs[1:]:
        if value is None or value > tolerance * base_steps * base_batch / batch_size:
            break
        useful = batch_size
    return useful


def fit_critical_batch(batch_sizes, steps):
    """Fits ``S = S_min (1 + B_crit / B)`` to steps-to-target by relative least squares.

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

    References:
        McCandlish et al., "An Empirical Model of Large-Batch Training", 2018,
        eq. (2.11) and Figure 4.
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
    """``S_min (1 + B_crit / B)`` of a :func:`fit_critical_batch` result (None if no fit)."""
    if fit["s_min"] is None or not math.isfinite(fit["b_crit"]):
        return None
    return fit["s_min"] * (1.0 + fit["b_crit"] / batch_size)


def noise_scale(statistics, num_samples, batch_size):
    """McCandlish et al.'s simple noise scale ``B_simple = tr(Sigma) / |G|^2`` over several steps.

    Each step's unbiased estimates of ``|G|^2`` and ``tr(Sigma)`` come from the
    package's own formula
    (:func:`tf_largebatch.callbacks.noise_estimates_from_gradient_statistics`);
    as the paper recommends, they are averaged separately and then divided.

    Args:
        statistics: per step, ``(mean_square, variance)``, the sums over every
            variable of an optimizer's ``gradient_statistics()``.
        num_samples: k >= 2 gradient samples per step.
        batch_size: examples per step, over all samples.

    Returns:
        ``{"b_noise", "gradient_square_norm", "trace_covariance", "steps"}``;
        ``b_noise`` is ``None`` when the averaged ``|G|^2`` is not positive.
    """
    if not statistics:
        raise ValueError("`statistics` must hold at least one step, got none.")
    estimates = [
        noise_estimates_from_gradient_statistics(mean_square, variance, num_samples, batch_size)
        for mean_square, variance in statistics
    ]
    gradient_square_norm = float(np.mean([g for g, _ in estimates]))
    trace_covariance = float(np.mean([t for _, t in estimates]))
    return {
        "b_noise": trace_covariance / gradient_square_norm if gradient_square_norm > 0 else None,
        "gradient_square_norm": gradient_square_norm,
        "trace_covariance": trace_covariance,
        "steps": len(statistics),
    }


def summarize(runs, target, optimizers, batch_sizes):
    """Per (optimizer, batch size) the best run, and per optimizer the scaling numbers.

    Returns:
        ``(cells, per_optimizer)``: ``cells[(optimizer, batch_size)]`` is a dict with
        ``best_learning_rate``, ``steps_to_target``, ``best_test_accuracy``,
        ``final_test_accuracy``, ``runs``, ``diverged_runs`` (None values when every
        run diverged); ``per_optimizer[optimizer]`` holds ``maximal_useful_batch``,
        ``s_min`` and ``b_crit``.
    """
    cells = {}
    for optimizer in optimizers:
        for batch_size in batch_sizes:
            group = [r for r in runs if r["optimizer"] == optimizer and r["batch_size"] == batch_size
                     and r["seed_offset"] == 0]
            if not group:
                continue
            best = best_run(group, target)
            cells[(optimizer, batch_size)] = {
                "optimizer": optimizer,
                "batch_size": batch_size,
                "runs": len(group),
                "diverged_runs": sum(r["diverged"] for r in group),
                "best_learning_rate": best["learning_rate"] if best else None,
                "steps_to_target": run_steps_to_target(best, target) if best else None,
                "best_test_accuracy": best["best_test_accuracy"] if best else None,
                "final_test_accuracy": best["final_test_accuracy"] if best else None,
                "learning_rate_at_edge": widening_direction(group, target) != 0,
            }
    per_optimizer = {}
    for optimizer in optimizers:
        measured = [(b, cells[(optimizer, b)]["steps_to_target"]) for b in batch_sizes if (optimizer, b) in cells]
        fit = fit_critical_batch([b for b, _ in measured], [s for _, s in measured])
        per_optimizer[optimizer] = {
            "maximal_useful_batch": maximal_useful_batch([b for b, _ in measured], [s for _, s in measured]),
            "s_min": fit["s_min"],
            "b_crit": fit["b_crit"],
            "fit_points": fit["points"],
        }
    return cells, per_optimizer


def seed_spread(runs, target, optimizer, batch_size, learning_rate):
    """Mean, standard deviation, min and max over seeds of one configuration's results."""
    group = [r for r in runs if r["optimizer"] == optimizer and r["batch_size"] == batch_size
             and r["learning_rate"] == learning_rate]
    accuracies = [r["best_test_accuracy"] for r in group if not r["diverged"]]
    steps = [run_steps_to_target(r, target) for r in group]
    reached = [s for s in steps if s is not None]
    return {
        "optimizer": optimizer,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seeds": len(group),
        "diverged": sum(r["diverged"] for r in group),
        "best_test_accuracy_mean": float(np.mean(accuracies)) if accuracies else None,
        "best_test_accuracy_std": float(np.std(accuracies)) if accuracies else None,
        "best_test_accuracy_min": min(accuracies) if accuracies else None,
        "best_test_accuracy_max": max(accuracies) if accuracies else None,
        "steps_to_target_min": min(reached) if reached else None,
        "steps_to_target_max": max(reached) if reached else None,
        "reached_target": len(reached),
    }
