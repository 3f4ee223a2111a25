"""AdaScale's gain ratio and clock (tf_largebatch.optimizers.gain) against the NumPy reference of Algorithm 1."""

import numpy as np
import pytest
import tensorflow as tf

from reference_adascale import AdaScaleReference, flat
from tf_largebatch.optimizers import gain


def summed_moments(samples):
    """What the package's recorder hands AdaScale (MomentsRecorder.noise_estimates), in NumPy:
    s2_b = 1/(k-1) sum_i |g_i - gbar|^2 and mu2 = |gbar|^2 - s2_b / k (float32 samples)."""
    g = np.stack([flat(s) for s in samples]).astype(np.float32)
    k = len(samples)
    mean = g.mean(axis=0)
    sample_variance = float(np.sum((g - mean) ** 2) / (k - 1))
    return sample_variance, float(np.sum(mean**2)) - sample_variance / k


def run_gain_steps(sample_sets, scale=None, smoothing=None):
    variance = norm = tau = tf.constant(0.0)
    out = []
    for samples in sample_sets:
        k = len(samples)
        s = float(k if scale is None else scale)
        ratio, variance, norm, next_tau = gain.gain_step(variance, norm, tau, *summed_moments(samples),
                                                          num_samples=k, scale=s, smoothing=smoothing)
        out.append((float(ratio), float(tau), float(variance), float(norm)))
        tau = next_tau
    return out, float(tau)


def random_sample_sets(steps, k, signal, seed=0):
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(steps):
        true = signal * rng.normal(size=(5,))
        sets.append([[true[:3] + rng.normal(size=3), (true[3:] + rng.normal(size=2)).reshape(2, 1)]
                     for _ in range(k)])
    return sets


@pytest.mark.parametrize("k,scale,smoothing", [(4, None, None), (4, None, 0.5), (8, None, 0.0), (4, 16.0, 0.9),
                                               (2, None, 0.99)])
@pytest.mark.parametrize("signal", [0.2, 1.0, 5.0])
def test_gain_and_clock_match_algorithm_1_over_several_steps(k, scale, smoothing, signal):
    sets = random_sample_sets(6, k, signal, seed=k)
    got, final_tau = run_gain_steps(sets, scale, smoothing)
    reference = AdaScaleReference(scale, smoothing)
    for samples, (ratio, tau_before, variance, norm) in zip(sets, got):
        expected_gain, expected_tau, _ = reference.step(samples)
        np.testing.assert_allclose(ratio, expected_gain, rtol=1e-5)
        np.testing.assert_allclose(tau_before, expected_tau, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(variance, reference.variance_average, rtol=1e-5)
        np.testing.assert_allclose(norm, reference.norm_average, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(final_tau, reference.tau, rtol=1e-5)


def test_gain_lies_in_one_to_scale_and_grows_with_the_noise():
    gains = []
    for signal in (10.0, 1.0, 0.3, 0.05):
        got, _ = run_gain_steps(random_sample_sets(5, 4, signal, seed=3), smoothing=0.5)
        gains.append(got[-1][0])
        assert all(1.0 <= g <= 4.0 for g, *_ in got)
    assert gains == sorted(gains), gains  # less signal, more gain


def test_identical_samples_give_gain_one():
    sample = [np.array([0.3, -1.0, 2.0]), np.array([[1e-3], [5.0]])]
    got, tau = run_gain_steps([[sample] * 4] * 3)
    assert [g for g, *_ in got] == [1.0, 1.0, 1.0]
    assert tau == 3.0


def test_zero_gradient_gives_gain_one_and_pure_noise_gives_the_scale():
    zero = [np.zeros(3), np.zeros((2, 1))]
    got, _ = run_gain_steps([[zero] * 4] * 2)
    assert [g for g, *_ in got] == [1.0, 1.0]
    # Samples +n, -n (mean exactly 0): |grad F|^2 estimate is negative, read as 0 -> gain S.
    n = [np.array([1.0, -2.0, 0.5]), np.array([[0.1], [3.0]])]
    minus = [-part for part in n]
    got, _ = run_gain_steps([[n, minus, n, minus]] * 2, smoothing=0.0)
    assert got[-1][3] < 0  # the (unclamped) average of mu2
    assert [g for g, *_ in got] == [4.0, 4.0]


@pytest.mark.parametrize("factor", [1e-6, 1e-3, 1e3, 1e6])
def test_gain_is_scale_free(factor):
    sets = random_sample_sets(4, 4, 0.7, seed=11)
    scaled = [[[factor * part for part in s] for s in samples] for samples in sets]
    base, _ = run_gain_steps(sets, smoothing=0.5)
    got, _ = run_gain_steps(scaled, smoothing=0.5)
    np.testing.assert_allclose([g for g, *_ in got], [g for g, *_ in base], rtol=1e-5)


def test_default_smoothing_follows_the_scale():
    np.testing.assert_allclose(gain.default_smoothing(4.0), 0.996, rtol=1e-6)
    assert float(gain.default_smoothing(1000.0)) == 0.0
    assert float(gain.default_smoothing(4096.0)) == 0.0


def test_noise_scale_is_trace_over_squared_norm():
    assert float(gain.noise_scale(0.5, 0.25, 32)) == pytest.approx(64.0)
    assert float(gain.noise_scale(0.5, -0.1, 32)) == np.inf
    assert float(gain.noise_scale(0.0, 0.0, 32)) == 0.0
