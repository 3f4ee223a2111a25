"""Pollux's goodput model (tf_largebatch.goodput): closed forms, the AdaScale link, the step-time fit."""

import numpy as np
import pytest

from tf_largebatch import goodput
from tf_largebatch.optimizers import gain


def test_efficiency_is_one_at_the_base_batch_and_falls_with_the_batch():
    sizes = np.array([32, 64, 128, 1024])
    efficiency = goodput.statistical_efficiency(sizes, noise_scale=200.0, base_batch_size=32)
    assert efficiency[0] == 1.0
    assert np.all(np.diff(efficiency) < 0)
    np.testing.assert_allclose(efficiency, (200 + 32) / (200 + sizes))
    # No noise: every example beyond the base batch is wasted (efficiency M_0 / M).
    np.testing.assert_allclose(goodput.statistical_efficiency(sizes, 0.0, 32), 32 / sizes)
    # No measurable signal: any batch is small.
    np.testing.assert_array_equal(goodput.statistical_efficiency(sizes, np.inf, 32), 1.0)


@pytest.mark.parametrize("noise_scale", [0.0, 10.0, 300.0, 1e5])
def test_efficiency_is_adascale_gain_over_scale(noise_scale):
    base, sizes = 16, np.array([16, 48, 160, 1600])
    scale = sizes / base
    np.testing.assert_allclose(goodput.adascale_gain(sizes, noise_scale, base) / scale,
                               goodput.statistical_efficiency(sizes, noise_scale, base), rtol=1e-12)
    # The same gain from the optimizer's own formula, with sigma^2 = phi |G|^2 / M_0.
    norm = 0.37
    variance = noise_scale * norm / base
    got = [float(gain.gain_ratio(variance, norm, s)) for s in scale]
    np.testing.assert_allclose(got, goodput.adascale_gain(sizes, noise_scale, base), rtol=1e-5)


def test_step_time_fit_recovers_an_affine_model_and_respects_signs():
    sizes = np.array([8, 16, 64, 128])
    alpha, beta = goodput.fit_step_time(sizes, 0.25 + 0.002 * sizes)
    assert (alpha, beta) == (pytest.approx(0.25), pytest.approx(0.002))
    assert goodput.fit_step_time([8, 8], [0.1, 0.3]) == (0.0, pytest.approx(0.2 / 8))
    alpha, beta = goodput.fit_step_time([8, 16], [0.1, 0.3])  # would need alpha < 0
    assert alpha == 0.0 and beta == pytest.approx((8 * 0.1 + 16 * 0.3) / (64 + 256))
    assert goodput.fit_step_time([8, 16], [0.3, 0.1]) == (pytest.approx(0.2), 0.0)
    with pytest.raises(ValueError, match="observations"):
        goodput.fit_step_time([], [])


def test_best_batch_size_brackets_the_continuous_optimum():
    # goodput ~ M / ((alpha + beta M)(phi + M)) peaks at M* = sqrt(alpha phi / beta).
    alpha, beta, phi, base = 0.5, 0.001, 2000.0, 8
    optimum = np.sqrt(alpha * phi / beta)  # 1000
    candidates = goodput.candidate_batch_sizes(8, 4096, 8)
    best = goodput.best_batch_size(candidates, phi, base, alpha, beta)
    assert abs(best - optimum) <= 8
    values = goodput.goodput(np.array(candidates), phi, base, alpha, beta)
    assert values[candidates.index(best)] == values.max()
    # Pure compute cost (no fixed cost): the smallest batch; constant time: the largest.
    assert goodput.best_batch_size(candidates, phi, base, 0.0, 1e-3) == 8
    assert goodput.best_batch_size(candidates, phi, base, 1.0, 0.0) == 4096


def test_candidates_are_the_multiples_in_range():
    assert goodput.candidate_batch_sizes(10, 40, 8) == [16, 24, 32, 40]
    with pytest.raises(ValueError, match="multiple of 64"):
        goodput.candidate_batch_sizes(10, 40, 64)
