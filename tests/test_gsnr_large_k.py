"""VR-SGD at large k with raised clip bounds, against VRGD eq. 8 computed in NumPy (float64).

An element with GSNR about 1,100 (mean 1.0, standard deviation 0.03) next to
low-GSNR elements: with ``gsnr_upper_bound=1e9`` and ``gamma=1e-6`` nothing is
clipped, so every element's factor is eq. 8's normalised GSNR itself. Raw
float32 moments at k = 2048 read that element as a tie (factor = the upper
bound, a weight jump of 1e9 x lr, after which float32 weights absorb every
later step of that element); the factor must be eq. 8's on every update,
the first included.

References:
    Jiang et al., "Accelerating Large Batch Training via Gradient Signal to
        Noise Ratio (GSNR)", eq. (8)-(9), Algorithm 1.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_largebatch as tlb

MEANS = np.array([1.0, 0.5, -0.2, 0.1, 0.05, -0.01])
STDS = np.array([0.03, 0.5, 0.4, 0.6, 0.3, 0.2])


def eq8_factor(samples, gamma, upper, resolution_floor=False):
    """VRGD eq. 8-9 in float64: r = gbar^2 / s2, r / mean_J(r), clip(gamma, upper).

    ``resolution_floor``: the documented raw-moment resolution limit (first update with
    several replicas): a variance under 4 k eps_float32 (1/k) sum g^2 counts as that value.
    """
    g = samples.astype(np.float64)
    mean = g.mean(axis=0)
    variance = ((g - mean) ** 2).mean(axis=0)  # the 1/k variance of the paper
    if resolution_floor:
        tolerance = 4 * np.finfo(np.float32).eps * g.shape[0] * (g**2).mean(axis=0)
        variance = np.maximum(variance, tolerance)
    r = mean**2 / variance
    return np.clip(r / r.mean(), gamma, upper)


def draw(rng, k, updates):
    return [(MEANS + STDS * rng.standard_normal((k, MEANS.size))).astype(np.float32) for _ in range(updates)]


def vrsgd_updates(samples_per_update, k, gamma, upper):
    """Feeds each update's k samples as k micro-batches of one device; returns
    ``w_before - w_after`` of every update (learning rate 1, weights left to move)."""
    weight = keras.Variable(np.zeros(MEANS.size, np.float32))
    optimizer = tlb.optimizers.VRSGD(learning_rate=1.0, gamma=gamma, gsnr_upper_bound=upper,
                                     gradient_accumulation_steps=k)
    optimizer.build([weight])

    @tf.function
    def one_update(samples):
        for i in tf.range(k):
            optimizer.apply_gradients([(samples[i], weight)])

    steps = []
    for samples in samples_per_update:
        before = weight.numpy().astype(np.float64)
        one_update(tf.constant(samples))
        steps.append(before - weight.numpy())
    return steps


@pytest.mark.parametrize("k,upper", [(2048, 1e9), (2048, 10.0), (256, 1e9), (8, 1e9), (2048, 1.0)])
def test_every_update_follows_eq8_at_large_k_and_raised_bounds(k, upper):
    rng = np.random.default_rng(22)
    gamma = 1e-6
    updates = draw(rng, k, 3)
    steps = vrsgd_updates(updates, k, gamma, upper)
    for t, (samples, step) in enumerate(zip(updates, steps)):
        expected = eq8_factor(samples, gamma, upper) * samples.astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(step, expected, rtol=2e-3, atol=1e-7, err_msg=f"update {t + 1}")


def test_identical_samples_are_still_a_tie_on_the_first_update():
    """The first micro-batch as the first update's shift makes a tie exact: s2 = 0, factor = upper."""
    k = 2048
    rng = np.random.default_rng(23)
    row = rng.standard_normal((1, MEANS.size)).astype(np.float32)
    noisy = draw(rng, k, 1)[0]
    samples = np.repeat(row, k, axis=0)
    samples[:, -1] = noisy[:, -1]  # one noisy element, so the normalising mean is finite
    steps = vrsgd_updates([samples], k, gamma=0.1, upper=3.0)
    np.testing.assert_allclose(steps[0][:-1], 3.0 * row[0, :-1], rtol=1e-4)


def _feed(optimizer, weight, samples):
    @tf.function
    def feed(samples):
        for i in tf.range(tf.shape(samples)[0]):
            optimizer.apply_gradients([(samples[i], weight)])

    feed(tf.constant(samples))


def _make(k):
    weight = keras.Variable(np.zeros(MEANS.size, np.float32))
    optimizer = tlb.optimizers.VRSGD(learning_rate=1.0, gamma=1e-6, gsnr_upper_bound=1e9,
                                     gradient_accumulation_steps=k)
    optimizer.build([weight])
    return weight, optimizer


def test_first_update_shift_leaves_no_trace_of_a_skipped_cycle_and_resumes_exactly(tmp_path):
    """k = 64 on one device: a first cycle with a NaN is skipped and the next one sets the
    shift again (the run equals the run without it); a checkpoint in the middle of the first
    cycle resumes to the uninterrupted run."""
    k = 64
    rng = np.random.default_rng(24)
    first, second = draw(rng, k, 2)
    straight_weight, straight = _make(k)
    _feed(straight, straight_weight, np.concatenate([first, second]))

    broken = draw(rng, k, 1)[0]
    broken[5, 2] = np.nan
    skipped_weight, skipped = _make(k)
    _feed(skipped, skipped_weight, np.concatenate([broken, first, second]))
    assert skipped.skipped_updates == 1
    np.testing.assert_array_equal(skipped_weight.numpy(), straight_weight.numpy())

    cut_weight, cut = _make(k)
    _feed(cut, cut_weight, first[:17])
    path = tf.train.Checkpoint(weight=cut_weight, optimizer=cut).save(str(tmp_path / "ckpt"))
    resumed_weight, resumed = _make(k)
    tf.train.Checkpoint(weight=resumed_weight, optimizer=resumed).restore(path).assert_consumed()
    _feed(resumed, resumed_weight, np.concatenate([first[17:], second]))
    np.testing.assert_allclose(resumed_weight.numpy(), straight_weight.numpy(), rtol=1e-6)
    expected = -eq8_factor(first, 1e-6, 1e9) * first.astype(np.float64).mean(axis=0)
    expected -= eq8_factor(second, 1e-6, 1e9) * second.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(straight_weight.numpy(), expected, rtol=2e-3)


def vrsgd_updates_on_replicas(strategy, samples_per_update, gamma, upper):
    """Each update's k samples as R replicas x (k / R) micro-batches under ``strategy``
    (replica d takes rows d*A .. (d+1)*A - 1, and hands the optimizer g / R as Keras
    does); returns ``w_before - w_after`` of every update (learning rate 1)."""
    replicas = strategy.num_replicas_in_sync
    k = samples_per_update[0].shape[0]
    accumulation = k // replicas
    with strategy.scope():
        weight = keras.Variable(np.zeros(MEANS.size, np.float32))
        optimizer = tlb.optimizers.VRSGD(learning_rate=1.0, gamma=gamma, gsnr_upper_bound=upper,
                                         gradient_accumulation_steps=accumulation)
        optimizer.build([weight])

    @tf.function
    def micro_step(per_replica, i):
        def step(samples):
            optimizer.apply_gradients([(samples[i] / replicas, weight)])

        strategy.run(step, args=(per_replica,))

    steps = []
    for samples in samples_per_update:
        rows = samples.reshape(replicas, accumulation, MEANS.size)
        per_replica = strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(rows[context.replica_id_in_sync_group]))
        before = weight.numpy().astype(np.float64)
        for i in range(accumulation):
            micro_step(per_replica, tf.constant(i))
        steps.append(before - weight.numpy())
    assert int(optimizer.iterations) == len(samples_per_update)
    return steps


@pytest.mark.parametrize("upper", [1.0, 10.0, 1e9])
def test_replicas_times_accumulation_at_large_k_follow_eq8(mirrored, upper):
    """4 replicas x 512 micro-batches (k = 2048). The first update has no shared shift
    (raw float32 moments): the GSNR ~1,100 element sits at the raw resolution limit
    ``1 / (4 k eps)`` ~ 1,024, and is read as that finite GSNR, not as a tie (which
    would give it the upper bound: a 1e9 weight jump). Eq. 8 to the resolution limit
    there (the other elements' factors move by the ratio 1,100 / 1,024), exactly on
    every later update (moments about the previous mean). Without the floor, the
    first update of the GSNR ~1,100 element would take the upper bound."""
    rng = np.random.default_rng(25)
    gamma, k = 1e-6, 2048
    updates = draw(rng, k, 3)
    steps = vrsgd_updates_on_replicas(mirrored(4), updates, gamma, upper)
    for t, (samples, step) in enumerate(zip(updates, steps)):
        mean = samples.astype(np.float64).mean(axis=0)
        expected = eq8_factor(samples, gamma, upper, resolution_floor=t == 0) * mean
        assert np.all(np.isfinite(step)), f"update {t + 1}"
        if t == 0:
            factor = step / mean
            assert factor.max() <= 1.001 * min(upper, MEANS.size), factor  # r / mean_J(r) <= J: not 1e9
            # eq. 8 itself, to the resolution limit (the ratio 1,100 / 1,024 and no more)
            np.testing.assert_allclose(step, eq8_factor(samples, gamma, upper) * mean, rtol=0.12, atol=1e-7)
        np.testing.assert_allclose(step, expected, rtol=2e-3, atol=1e-7, err_msg=f"update {t + 1}")
