"""The study's statistics against hand computations and NumPy written out again here.

t intervals (Student t, ddof=1), paired comparisons on the same seeds, the
percentile bootstrap with its fixed seed, McCandlish's fit with residuals, its
bootstrap band and the "does not fit" flag, the noise scale along runs, the
evaluation spacing bound, and the headline: identical optimizers give "no
significant difference", a truly faster rescaled copy is found.
"""

import math

import numpy as np
import pytest

from tf_largebatch.study import analysis, grid, report, scaling_fit, statistics

T_975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # Student-t 97.5 % quantiles (tables)


def test_t_interval_by_hand():
    got = statistics.t_interval([10.0, 12.0, 14.0])
    half = T_975[2] * 2.0 / math.sqrt(3)  # sd (ddof=1) of 10, 12, 14 is 2
    assert got["mean"] == pytest.approx(12.0) and got["sd"] == pytest.approx(2.0) and got["n"] == 3
    assert (got["low"], got["high"]) == pytest.approx((12.0 - half, 12.0 + half))
    values = [3.0, 5.0, 4.0, 8.0, 5.0]
    got = statistics.t_interval(values)
    half = T_975[4] * np.std(values, ddof=1) / math.sqrt(5)
    assert (got["low"], got["high"]) == pytest.approx((5.0 - half, 5.0 + half))
    assert statistics.t_interval([7.0]) == {"mean": 7.0, "low": None, "high": None, "sd": None, "n": 1}
    assert statistics.t_interval([])["mean"] is None


def test_paired_ratio_is_a_t_interval_on_per_seed_log_ratios():
    reference = [100.0, 120.0, 90.0, 110.0, 105.0]
    candidate = [80.0, 100.0, 75.0, 85.0, 90.0]
    d = np.log(np.array(candidate) / np.array(reference))
    half = T_975[4] * d.std(ddof=1) / math.sqrt(5)
    got = statistics.paired_ratio(candidate, reference)
    assert got["percent"] == pytest.approx(100 * (math.exp(d.mean()) - 1))
    assert got["low"] == pytest.approx(100 * (math.exp(d.mean() - half) - 1))
    assert got["high"] == pytest.approx(100 * (math.exp(d.mean() + half) - 1))
    assert got["significant"] and got["n"] == 5 and got["missing"] == 0
    # Identical values on every seed: 0 %, an interval of width 0 that holds 0, not significant.
    same = statistics.paired_ratio(reference, reference)
    assert same["percent"] == 0 and same["low"] == same["high"] == 0 and not same["significant"]
    # A seed that did not reach the target is left out and counted.
    partial = statistics.paired_ratio([80.0, None, 75.0], [100.0, 120.0, 90.0])
    assert partial["n"] == 2 and partial["missing"] == 1
    # Noisy, no true difference: the interval holds 0.
    assert not statistics.paired_ratio([100.0, 90.0, 130.0], [110.0, 100.0, 105.0])["significant"]
    with pytest.raises(ValueError, match="differ in length"):
        statistics.paired_ratio([1.0], [1.0, 2.0])


def test_bootstrap_is_reproducible_and_matches_a_percentile_bootstrap_written_again():
    groups = [[3.0, 5.0, 4.0, 9.0], [10.0, 12.0, 11.0]]

    def statistic(drawn):
        return float(np.mean(drawn[0]) + np.mean(drawn[1]))

    got = statistics.bootstrap_interval(groups, statistic, resamples=500, seed=3)
    assert got == statistics.bootstrap_interval(groups, statistic, resamples=500, seed=3)
    rng = np.random.default_rng(3)
    values = []
    for _ in range(500):
        a = np.array(groups[0])[rng.integers(0, 4, 4)]
        b = np.array(groups[1])[rng.integers(0, 3, 3)]
        values.append(a.mean() + b.mean())
    assert (got["low"], got["high"]) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])))
    assert got["valid"] == 500
    # A statistic that is mostly undefined gives no interval.
    assert statistics.bootstrap_interval(groups, lambda drawn: None, resamples=50)["low"] is None


def test_fit_recovers_the_model_in_both_forms_with_zero_residuals():
    batch_sizes = [16, 64, 256, 1024]
    steps = [100.0 * (1 + 256.0 / b) for b in batch_sizes]
    fit = scaling_fit.fit_with_diagnostics(batch_sizes, [[s * 0.97, s * 1.03, s] for s in steps])
    assert fit["s_min"] == pytest.approx(100.0, rel=1e-6) and fit["b_crit"] == pytest.approx(256.0, rel=1e-6)
    assert fit["e_min"] == pytest.approx(25600.0, rel=1e-6)
    # The examples form E = S B = E_min (1 + B / B_crit) with the same parameters.
    for b, s in zip(batch_sizes, steps):
        assert s * b == pytest.approx(fit["e_min"] * (1 + b / fit["b_crit"]), rel=1e-6)
    assert all(abs(r) < 1e-9 for r in fit["residuals"]) and not fit["does_not_fit"]
    assert fit["b_crit_low"] <= 256.0 <= fit["b_crit_high"]
    for b, low, high in fit["band"]:
        assert low <= scaling_fit.fitted_steps(fit, b) * (1 + 1e-9) and high >= scaling_fit.fitted_steps(fit, b) * (
            1 - 1e-9)


def test_residuals_are_measured_over_fitted_minus_one():
    fit = {"s_min": 10.0, "b_crit": 100.0}
    assert scaling_fit.residuals(fit, [100, 50], [25.0, None]) == [pytest.approx(0.25), None]


def test_a_curve_built_to_miss_the_fit_is_flagged():
    batch_sizes = [16, 64, 256, 1024]
    # Steps fall, then rise again: no S_min (1 + B_crit / B) passes near all of them.
    means = [400.0, 60.0, 100.0, 200.0]
    fit = scaling_fit.fit_with_diagnostics(batch_sizes, [[m * 0.99, m * 1.01, m] for m in means])
    assert fit["does_not_fit"] and fit["worst_residual"] > scaling_fit.RESIDUAL_THRESHOLD
    # The same miss with a seed spread far larger than it is not flagged: 2 standard errors cover it.
    assert not scaling_fit.misses(0.15, 0.10) and scaling_fit.misses(0.15, 0.02)
    assert not scaling_fit.misses(0.08, None) and scaling_fit.misses(-0.12, None)


def test_fit_edge_cases():
    assert scaling_fit.fit_critical_batch([16], [10.0])["b_crit"] is None
    assert scaling_fit.fit_critical_batch([16, 64], [400.0, 100.0])["b_crit"] == math.inf  # perfect scaling
    flat = scaling_fit.fit_critical_batch([16, 64, 256], [50.0, 60.0, 70.0])
    assert flat["b_crit"] == 0.0


def test_evaluation_spacing_bounds_the_crossing_error():
    for length, spacing in ((7, 0.05), (1000, 0.05), (4096, 0.1), (33, 0.5)):
        steps = grid.evaluation_steps(length, spacing)
        assert steps[0] == 0 and steps[-1] == length and steps == sorted(set(steps))
        for a, b in zip(steps, steps[1:]):
            assert b - a <= max(1, spacing * a)


def noise_run(seed, probes, accuracy_steps):
    steps = [0, 1, 2, 4]
    return {"seed": seed, "noise": probes,
            "curve": {"step": steps, "test_accuracy": [0.1 * (s >= accuracy_steps) + 0.5 for s in steps]}}


def test_noise_scale_pools_unbiased_estimates_until_the_target():
    k, micro = 4, 8
    big, small = 4 * k * micro, k * micro
    # Probes: |G_big|^2 and mean |G_small|^2, with the estimators written out (McCandlish et al., App. A.1).
    probes_a = [[0, [2.0, 2.2], [3.0, 3.1]], [1, [1.5, 1.6], [2.9, 3.2]], [4, [1.0, 1.1], [4.0, 4.0]]]
    run = noise_run(5, probes_a, accuracy_steps=2)  # reaches 0.6 at step 2: the probe at step 4 is left out
    squares, traces = [], []
    for _, bigs, smalls in probes_a[:2]:
        for g_big, g_small in zip(bigs, smalls):
            squares.append((k * micro * g_big - micro * g_small) / (k * micro - micro))
            traces.append((g_small - g_big) / (1 / micro - 1 / (k * micro)))
    got = analysis.noise_scale([run], k, micro, 0.6)
    assert got["checkpoints"] == 2 and big > small
    assert got["b_simple"] == pytest.approx(np.sum(traces) / np.sum(squares))
    assert got["low"] <= got["b_simple"] <= got["high"]
    assert [point["step"] for point in got["series"]] == [0, 1]
    assert analysis.noise_scale([], k, micro, 0.6)["b_simple"] is None


def synthetic_run(optimizer, batch_size, seed_offset, crossing, lr=0.1, length=100):
    """A run whose test and validation accuracy rise linearly to 1 at 2 * crossing (crosses 0.5 at ``crossing``)."""
    steps = list(range(0, 2 * int(crossing) + 2))
    accuracy = [min(1.0, s / (2.0 * crossing)) for s in steps]
    return {"optimizer": optimizer, "batch_size": batch_size, "learning_rate": lr, "length": length,
            "seed_offset": seed_offset, "seed": seed_offset, "diverged": False, "best_test_accuracy": 1.0,
            "best_validation_accuracy": 1.0, "noise": [],
            "curve": {"step": steps, "validation_accuracy": accuracy, "test_accuracy": accuracy}}


def synthetic_study(scale_of_second, noise=0.0):
    """Two optimizers on the same seeds; the second's steps are the first's times ``scale_of_second``."""
    rng = np.random.default_rng(0)
    batch_sizes, seeds = [16, 64, 256], 5
    runs, plan = [], {"tuning": {}, "selected": {}, "reporting": {}, "reporting_setting": {}, "sensitivity": {}}
    for b in batch_sizes:
        for name in ("A", "B"):
            plan["tuning"][(name, b)] = []
            plan["selected"][(name, b, 0.5)] = (0.1, 100)
            plan["reporting_setting"][(name, b, 0.5)] = (0.1, 100)
            plan["reporting"][(name, b, 0.5)] = []
        for seed in range(1, seeds + 1):
            base = 200.0 * (1 + 64.0 / b) * (1 + 0.15 * rng.normal())
            for name, factor in (("A", 1.0), ("B", scale_of_second * (1 + noise * rng.normal()))):
                run = synthetic_run(name, b, seed, base * factor)
                runs.append(run)
                plan["reporting"][(name, b, 0.5)].append(report._key(run))
    return report.analyse(runs, plan, [0.5], ["A", "B"], {}, batch_sizes, (4, 8))


def test_identical_optimizers_give_no_significant_difference():
    result = synthetic_study(1.0)
    comparisons = result["paired_comparisons"]
    assert len(comparisons) == 3 and not any(c["significant"] for c in comparisons)
    text = "\n".join(report.headline(result))
    assert "no significant difference" in text and "fewer steps" not in text and "too few" not in text


def test_a_truly_faster_rescaled_copy_is_found_with_its_interval():
    result = synthetic_study(0.7, noise=0.03)
    for comparison in result["paired_comparisons"]:
        assert comparison["significant"] and comparison["low"] < -30 + 8 and comparison["high"] > -30 - 8
        assert comparison["n"] == 5
    text = "\n".join(report.headline(result))
    assert "B needs" in text and "fewer steps than A" in text and "n = 5 seeds" in text
    cell = next(c for c in result["summary"] if (c["optimizer"], c["batch_size"]) == ("A", 64))
    steps = [s for s in cell["steps_by_seed"]]
    interval = statistics.t_interval(steps)
    assert (cell["mean_steps"], cell["low_steps"], cell["high_steps"]) == pytest.approx(
        (interval["mean"], interval["low"], interval["high"]))
    assert cell["n"] == cell["reached"] == 5


def test_sensitivity_reports_the_reaching_range_and_where_divergence_starts():
    runs = [synthetic_run("A", 64, 0, 10, lr=lr) for lr in (0.025, 0.05, 0.1, 0.2)]
    runs.append({**synthetic_run("A", 64, 0, 10, lr=0.4), "diverged": True,
                 "curve": {"step": [0, 1], "validation_accuracy": [0.0, 0.1], "test_accuracy": [0.0, 0.1]}})
    got = analysis.sensitivity(runs, 0.1, 0.5)
    assert (got["reaching_low"], got["reaching_high"], got["diverges_from"]) == (0.025, 0.2, 0.4)
    assert [p["factor"] for p in got["points"]] == pytest.approx([0.25, 0.5, 1, 2, 4])


def test_critical_batch_trend_reads_the_intervals():
    def fit(b_crit, low, high):
        return {"b_crit": b_crit, "b_crit_low": low, "b_crit_high": high, "does_not_fit": False}

    result = {"targets": [0.8, 0.9], "optimizers": ["A", "B", "C"],
              "fits": {"A@0.8": fit(50, 40, 60), "A@0.9": fit(120, 90, 150),
                       "B@0.8": fit(50, 40, 60), "B@0.9": fit(55, 45, 70),
                       "C@0.8": fit(50, 40, 60), "C@0.9": {**fit(200, 150, 250), "does_not_fit": True}}}
    lines = report.critical_batch_trend(result)
    assert lines[0].startswith("A: B_crit grows") and "no change" in lines[1] and len(lines) == 2
    assert report.critical_batch_trend({**result, "targets": [0.9]}) == []
