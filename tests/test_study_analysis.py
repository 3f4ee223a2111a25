"""The study's scaling analysis against hand computations.

Steps-to-target interpolation, the best learning rate per cell and when the grid
widens, the maximal-useful-batch rule, the ``S = S_min (1 + B_crit / B)`` fit on
synthetic curves (McCandlish et al. 2018), and the noise scale from the
optimizers' per-step statistics.
"""

import math

import numpy as np
import pytest

from tf_largebatch.study import analysis


def make_run(optimizer="A", batch_size=32, learning_rate=0.1, steps=(0, 10, 20, 30), accuracy=(0.1, 0.5, 0.7, 0.8),
             diverged=False, seed_offset=0):
    return {
        "optimizer": optimizer, "batch_size": batch_size, "learning_rate": learning_rate, "diverged": diverged,
        "seed_offset": seed_offset, "curve": {"step": list(steps), "test_accuracy": list(accuracy)},
        "best_test_accuracy": max(a for a in accuracy if a is not None),
        "final_test_accuracy": accuracy[-1],
    }


def test_steps_to_target_interpolates_linearly_between_evaluations():
    # 0.5 at step 10, 0.7 at step 20: 0.6 is half-way, 0.65 three quarters.
    assert analysis.steps_to_target([0, 10, 20], [0.1, 0.5, 0.7], 0.6) == pytest.approx(15.0)
    assert analysis.steps_to_target([0, 10, 20], [0.1, 0.5, 0.7], 0.65) == pytest.approx(17.5)
    # Uneven spacing: 0.2 at 100, 0.6 at 300 -> 0.3 at 100 + 200 * 0.1 / 0.4 = 150.
    assert analysis.steps_to_target([0, 100, 300], [0.0, 0.2, 0.6], 0.3) == pytest.approx(150.0)
    # Reached exactly at an evaluation; reached before any training; never reached.
    assert analysis.steps_to_target([0, 10, 20], [0.1, 0.5, 0.7], 0.5) == pytest.approx(10.0)
    assert analysis.steps_to_target([0, 10], [0.9, 0.95], 0.5) == 0.0
    assert analysis.steps_to_target([0, 10, 20], [0.1, 0.5, 0.7], 0.71) is None
    # The first crossing counts, even if the curve falls back afterwards.
    assert analysis.steps_to_target([0, 10, 20, 30], [0.1, 0.8, 0.2, 0.9], 0.7) == pytest.approx(10 * 0.6 / 0.7)
    # A missing (diverged) evaluation is no crossing.
    assert analysis.steps_to_target([0, 10, 20], [0.1, None, float("nan")], 0.05) == 0.0
    assert analysis.steps_to_target([0, 10, 20], [0.0, None, 0.9], 0.5) == 20.0
    with pytest.raises(ValueError, match="differ in length"):
        analysis.steps_to_target([0, 1], [0.1], 0.5)


def test_diverged_runs_have_no_steps_to_target():
    run = make_run(accuracy=(0.1, 0.9, 0.9, 0.9), diverged=True)
    assert analysis.run_steps_to_target(run, 0.5) is None
    assert analysis.run_steps_to_target({**run, "diverged": False}, 0.5) == pytest.approx(5.0)


def test_best_run_is_fewest_steps_then_best_accuracy_and_never_a_diverged_one():
    slow = make_run(learning_rate=0.1, accuracy=(0.1, 0.3, 0.6, 0.9))        # 0.5 at step 16.7
    fast = make_run(learning_rate=0.2, accuracy=(0.1, 0.6, 0.7, 0.75))       # 0.5 at step 8.3
    crashed = make_run(learning_rate=0.4, accuracy=(0.1, 0.9, None, None), diverged=True)
    assert analysis.best_run([slow, fast, crashed], 0.5) is fast
    # Nobody reaches 0.95: the highest best accuracy wins.
    assert analysis.best_run([slow, fast, crashed], 0.95) is slow
    assert analysis.best_run([crashed], 0.5) is None
    assert analysis.best_run([], 0.5) is None


def test_widening_direction_follows_the_best_learning_rate_to_an_edge():
    low = make_run(learning_rate=0.1, accuracy=(0.1, 0.3, 0.4, 0.6))
    mid = make_run(learning_rate=0.2, accuracy=(0.1, 0.6, 0.7, 0.8))
    high = make_run(learning_rate=0.4, accuracy=(0.1, 0.4, 0.5, 0.7))
    assert analysis.widening_direction([low, mid, high], 0.5) == 0
    assert analysis.widening_direction([low, mid], 0.5) == 1
    assert analysis.widening_direction([mid, high], 0.5) == -1
    diverged_high = {**high, "diverged": True}
    assert analysis.widening_direction([mid, diverged_high], 0.5) == -1
    assert analysis.widening_direction([{**low, "diverged": True}, diverged_high], 0.5) == -1
    assert analysis.widening_direction([], 0.5) == 0


def test_maximal_useful_batch_is_the_last_batch_within_2x_of_perfect_scaling():
    # Perfect scaling from (32, 1000): 500 at 64, 250 at 128, 125 at 256; 2x allows 1000, 500, 250.
    assert analysis.maximal_useful_batch([32, 64, 128, 256], [1000, 500, 300, 280]) == 128
    assert analysis.maximal_useful_batch([32, 64, 128, 256], [1000, 500, 500, 250]) == 256  # exactly 2x
    assert analysis.maximal_useful_batch([32, 64, 128, 256], [1000, 500, 500, 251]) == 128
    assert analysis.maximal_useful_batch([32, 64, 128, 256], [1000, 999, 1000, 10]) == 64
    assert analysis.maximal_useful_batch([32, 64, 128, 256], [1000, 1001, 10, 10]) == 32
    # A batch size that never reached the target ends the walk.
    assert analysis.maximal_useful_batch([32, 64, 128], [1000, None, 200]) == 32
    assert analysis.maximal_useful_batch([32, 64], [None, 10]) is None
    # Input order does not matter; tolerance 1 demands perfect scaling.
    assert analysis.maximal_useful_batch([128, 32, 64], [260, 1000, 500], tolerance=1.0) == 64


def test_critical_batch_fit_recovers_synthetic_curves():
    batches = np.array([32, 64, 128, 256, 512, 1024, 2048])
    for s_min, b_crit in ((100.0, 512.0), (40.0, 64.0), (1000.0, 4000.0)):
        steps = s_min * (1 + b_crit / batches)
        fit = analysis.fit_critical_batch(batches, steps)
        assert fit["s_min"] == pytest.approx(s_min, rel=1e-9)
        assert fit["b_crit"] == pytest.approx(b_crit, rel=1e-9)
        assert fit["points"] == len(batches)
        assert analysis.fitted_steps(fit, 300) == pytest.approx(s_min * (1 + b_crit / 300))
    # Multiplicative noise of +-5 %: the fit stays within ~15 % of the truth.
    noise = np.array([1.05, 0.96, 1.03, 0.95, 1.04, 0.97, 1.02])
    fit = analysis.fit_critical_batch(batches, 100.0 * (1 + 512.0 / batches) * noise)
    assert fit["s_min"] == pytest.approx(100.0, rel=0.15)
    assert fit["b_crit"] == pytest.approx(512.0, rel=0.15)


def test_critical_batch_fit_edge_cases():
    batches = [32, 64, 128, 256]
    # Steps falling faster than 1/B: no bend in range.
    fit = analysis.fit_critical_batch(batches, [3200.0 / (b / 32) ** 1.3 for b in batches])
    assert fit["s_min"] == 0.0 and fit["b_crit"] == math.inf
    assert analysis.fitted_steps(fit, 64) is None
    # Steps that grow with the batch: no benefit at all.
    fit = analysis.fit_critical_batch(batches, [100.0, 110.0, 120.0, 130.0])
    assert fit["b_crit"] == 0.0 and fit["s_min"] == pytest.approx(115.0)
    # Not enough points that reached the target.
    assert analysis.fit_critical_batch(batches, [100.0, None, None, None]) == {"s_min": None, "b_crit": None,
                                                                             "points": 1}


def test_noise_scale_is_the_ratio_of_averaged_unbiased_estimates():
    # k = 4 samples of B / k = 16 examples, B = 64. With M = sum gbar^2, V = sum s2:
    # |G|^2 = M - V / (k - 1), tr(Sigma) = B V / (k - 1) (McCandlish et al., App. A.1).
    steps = [(2.0, 3.0), (1.0, 0.75)]
    g1, t1 = 2.0 - 3.0 / 3, 64 * 3.0 / 3
    g2, t2 = 1.0 - 0.75 / 3, 64 * 0.75 / 3
    result = analysis.noise_scale(steps, num_samples=4, batch_size=64)
    assert result["gradient_square_norm"] == pytest.approx((g1 + g2) / 2)
    assert result["trace_covariance"] == pytest.approx((t1 + t2) / 2)
    assert result["b_noise"] == pytest.approx((t1 + t2) / (g1 + g2))
    assert result["b_noise"] != pytest.approx((t1 / g1 + t2 / g2) / 2)  # not the mean of ratios
    assert result["steps"] == 2
    # All signal drowned in noise: |G|^2 <= 0 gives no noise scale rather than a negative one.
    assert analysis.noise_scale([(1.0, 6.0)], num_samples=4, batch_size=64)["b_noise"] is None
    with pytest.raises(ValueError, match="k >= 2"):
        analysis.noise_scale([(1.0, 1.0)], num_samples=1, batch_size=64)
    with pytest.raises(ValueError, match="at least one step"):
        analysis.noise_scale([], num_samples=4, batch_size=64)


def test_summarize_picks_best_learning_rates_and_fits_each_optimizer():
    runs = []
    # Optimizer A: steps to 0.5 are 800, 400, 200, 150 at B = 32 .. 256 (bends after 128).
    for batch_size, crossing in ((32, 800), (64, 400), (128, 200), (256, 150)):
        for learning_rate, slower in ((0.1, 2.0), (0.2, 1.0), (0.4, 1.5)):
            step = crossing * slower
            runs.append(make_run("A", batch_size, learning_rate, steps=(0, step, 2 * step),
                                 accuracy=(0.1, 0.5, 0.6)))
    runs.append(make_run("A", 256, 0.2, steps=(0, 10), accuracy=(0.1, 0.9), seed_offset=1))  # ignored
    runs.append(make_run("B", 32, 0.1, accuracy=(0.1, None, None, None), diverged=True))
    cells, per_optimizer = analysis.summarize(runs, 0.5, ["A", "B"], [32, 64, 128, 256])
    assert cells[("A", 64)]["best_learning_rate"] == 0.2
    assert cells[("A", 64)]["steps_to_target"] == pytest.approx(400)
    assert cells[("A", 256)]["runs"] == 3 and not cells[("A", 256)]["learning_rate_at_edge"]
    assert per_optimizer["A"]["maximal_useful_batch"] == 256  # 150 <= 2 * 100
    fit = analysis.fit_critical_batch([32, 64, 128, 256], [800, 400, 200, 150])
    assert per_optimizer["A"]["b_crit"] == pytest.approx(fit["b_crit"])
    assert cells[("B", 32)]["best_learning_rate"] is None and cells[("B", 32)]["diverged_runs"] == 1
    assert per_optimizer["B"]["maximal_useful_batch"] is None and per_optimizer["B"]["b_crit"] is None
    assert ("B", 64) not in cells


def test_seed_spread_over_seeds_of_one_configuration():
    runs = [make_run("A", 256, 0.2, accuracy=(0.1, a, a, a), seed_offset=i) for i, a in enumerate((0.6, 0.7, 0.8))]
    runs.append(make_run("A", 256, 0.2, accuracy=(0.1, None, None, None), diverged=True, seed_offset=3))
    spread = analysis.seed_spread(runs, 0.65, "A", 256, 0.2)
    assert spread["seeds"] == 4 and spread["diverged"] == 1
    assert spread["best_test_accuracy_mean"] == pytest.approx(0.7)
    assert spread["best_test_accuracy_std"] == pytest.approx(np.std([0.6, 0.7, 0.8]))
    assert (spread["best_test_accuracy_min"], spread["best_test_accuracy_max"]) == (0.6, 0.8)
    # 0.65 is reached by seeds 1 and 2 only, both at 10 * 0.55 / 0.6 and 10 * 0.55 / 0.7.
    assert spread["reached_target"] == 2
    assert spread["steps_to_target_min"] == pytest.approx(10 * 0.55 / 0.7)
    assert spread["steps_to_target_max"] == pytest.approx(10 * 0.55 / 0.6)
