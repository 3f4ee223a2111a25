"""The moments recorder: sample moments and the unbiased noise estimates, against NumPy.

The references are written from the definitions (k samples g_i, each the mean
gradient of B/k examples): sigma^2 = 1/(k-1) sum_i |g_i - gbar|^2 and
|grad F|^2 = |gbar|^2 - sigma^2/k, the unbiased estimates AdaScale and
McCandlish et al. use. Nothing here calls the package's moment code twice.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_largebatch.optimizers as tlb_opt
from tf_largebatch.optimizers import moments


def numpy_noise(samples):
    """``(sigma^2, |grad F|^2)`` over all elements of all variables, from per-variable ``(k, ...)`` samples."""
    k = samples[0].shape[0]
    sigma = sum(np.sum((s - s.mean(axis=0)) ** 2) for s in samples) / (k - 1)
    signal = sum(np.sum(s.mean(axis=0) ** 2) for s in samples)
    return sigma, signal - sigma / k


@pytest.mark.parametrize("k", [2, 5])
def test_unbiased_estimates_from_the_definitions(k):
    rng = np.random.default_rng(k)
    samples = [rng.normal(1.0, 2.0, size=(k, 3, 4)), rng.normal(-0.5, 0.1, size=(k, 6))]
    mean_square = sum(np.sum(s.mean(axis=0) ** 2) for s in samples)
    variance = sum(np.sum(s.var(axis=0)) for s in samples)  # (1/k), as the table holds it
    got = moments.unbiased_noise_estimates(mean_square, variance, k)
    np.testing.assert_allclose(got, numpy_noise(samples), rtol=1e-12)


def test_unbiased_estimates_are_unbiased_on_average():
    """Over many draws of k samples with known |grad F|^2 and sigma^2, the means match."""
    rng = np.random.default_rng(0)
    k, grad, sd = 4, np.array([0.3, -0.2, 0.1]), 0.5
    draws = rng.normal(grad, sd, size=(20000, k, 3))
    estimates = np.array([moments.unbiased_noise_estimates(np.sum(d.mean(0) ** 2), np.sum(d.var(0)), k)
                          for d in draws])
    np.testing.assert_allclose(estimates.mean(axis=0), [3 * sd**2, np.sum(grad**2)], rtol=0.02, atol=2e-3)


def test_one_sample_is_refused():
    with pytest.raises(ValueError, match="k >= 2"):
        moments.unbiased_noise_estimates(1.0, 0.5, 1)


@pytest.mark.parametrize("shifted", [False, True])
def test_sample_moments_match_numpy(shifted):
    rng = np.random.default_rng(3)
    replicas, k = 2, 6
    g = rng.normal(0.7, 0.3, size=(k, 5)).astype(np.float32)
    shift = g.mean(axis=0) + 0.01 if shifted else None
    c = 0.0 if shift is None else shift
    # Each replica holds k / R micro-batch samples and hands h = g / R; sums over replicas of their means.
    d = (g - c) / replicas
    per_replica = d.reshape(replicas, k // replicas, 5)
    sum_of_means = per_replica.mean(axis=1).sum(axis=0)
    sum_of_squares = (per_replica**2).mean(axis=1).sum(axis=0)
    got = moments.sample_moments(tf.constant(sum_of_means), tf.constant(sum_of_squares),
                                 None if shift is None else tf.constant(shift), num_replicas=replicas, num_samples=k)
    np.testing.assert_allclose(got.mean.numpy(), g.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(got.variance.numpy(), g.var(axis=0), rtol=1e-3)
    np.testing.assert_allclose(got.signal.numpy(), g.mean(axis=0) ** 2, rtol=1e-5)


@pytest.mark.parametrize("name", ["LAMB", "VRAdam"])
def test_recorder_noise_estimates_after_real_updates(name):
    """Through the optimizer's own accumulation and all-reduce: the recorder's estimates of the last update."""
    rng = np.random.default_rng(9)
    k = 4
    variables = [keras.Variable(rng.normal(size=(3, 2)).astype("float32")),
                 keras.Variable(rng.normal(size=(2,)).astype("float32"))]
    optimizer = getattr(tlb_opt, name)(learning_rate=0.01, gradient_accumulation_steps=k,
                                       record_gradient_statistics=True)
    optimizer.build(variables)
    for _ in range(2):
        samples = [rng.normal(0.5, 1.0, size=(k,) + tuple(v.shape)).astype("float32") for v in variables]
        for i in range(k):
            optimizer.apply([tf.constant(s[i]) for s in samples], variables)
    recorder = optimizer.moments_recorder
    assert recorder.num_samples == k and optimizer.gradient_statistics_step == 2
    sigma, signal = recorder.noise_estimates()
    np.testing.assert_allclose([float(sigma), float(signal)], numpy_noise(samples), rtol=1e-4, atol=1e-6)
    # Inside a tf.function too (as a consumer inside the step would read it).
    graph_sigma, _ = tf.function(recorder.noise_estimates)()
    np.testing.assert_allclose(float(graph_sigma), float(sigma), rtol=1e-7)


def test_optimizers_without_statistics_have_no_recorder():
    optimizer = tlb_opt.LAMB(learning_rate=0.01)
    assert optimizer.moments_recorder is None and not optimizer.records_gradient_statistics
