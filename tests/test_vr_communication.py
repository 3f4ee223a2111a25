"""What the VR optimizers all-reduce: the bfloat16 second moment (opt-in) and the accumulated means.

The NumPy reference below is written from Algorithm 1 of the VRGD paper, with
the one approximation of ``second_moment_dtype="bfloat16"`` made explicit: the
second moment of the step's samples is rounded to bfloat16 (``ml_dtypes``, the
bfloat16 type NumPy uses through TensorFlow) before the variance is formed.
Nothing here imports the package's GSNR code.
"""

import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

import reference_optimizers as ref
import tf_largebatch.optimizers as tlb_opt
from test_vr import SHAPES, count_all_reduces, make_samples, make_variables, run_accumulated, run_replicated

NUM_SAMPLES = 4


def np_factor(samples, gamma, bfloat16_second_moment):
    """Normalised, clipped GSNR of one variable; the second moment rounded to bfloat16 if asked."""
    samples = np.asarray(samples, np.float32)
    mean = samples.astype(np.float64).mean(axis=0)
    second = (samples**2).mean(axis=0, dtype=np.float32)
    if bfloat16_second_moment:
        second = second.astype(ml_dtypes.bfloat16)
    variance = second.astype(np.float64) - mean**2
    assert np.all(variance > 0.02 * second), "the reference covers variances well above bfloat16's resolution"
    r = mean**2 / variance
    return np.clip(r / r.mean(), gamma, 1.0), mean


def np_momentum_trajectory(weights, samples, lr, momentum, bfloat16_second_moment, gamma=0.1):
    """VR-Momentum (beta_3 = 0): the factor times the mean, then Keras SGD's momentum step."""
    ws = [np.asarray(w, np.float64) for w in weights]
    states = [None] * len(ws)
    for step_samples in samples:
        for i, variable_samples in enumerate(step_samples):
            factor, mean = np_factor(variable_samples, gamma, bfloat16_second_moment)
            states[i], ws[i] = ref.sgd_momentum_step(states[i], ws[i], factor * mean, lr, momentum=momentum)
    return ws


def moderate_samples(rng, num_steps):
    """k = 4 samples per element, ``mean + sigma * (a, -a, b, -b)`` in a random order with a, b in
    [0.5, 1.5]: variance >= sigma**2 / 4 and GSNR <= 1 (far inside bfloat16's resolution)."""
    def variable_samples(shape):
        a, b = rng.uniform(0.5, 1.5, size=(2,) + shape)
        deviations = rng.permuted(np.stack([a, -a, b, -b]), axis=0)
        sigma = np.exp(rng.uniform(-1, 1, size=shape))
        return sigma * (0.5 * rng.uniform(-1, 1, size=shape) + deviations)

    return [[variable_samples(s) for s in SHAPES] for _ in range(num_steps)]


def test_bfloat16_second_moment_matches_the_reference_with_that_rounding():
    rng = np.random.default_rng(3)
    variables = make_variables(rng, SHAPES)
    start = [v.numpy() for v in variables]
    samples = moderate_samples(rng, 5)
    optimizer = tlb_opt.VRMomentum(0.1, momentum=0.9, gradient_accumulation_steps=NUM_SAMPLES,
                                   second_moment_dtype="bfloat16")
    got = run_accumulated(optimizer, variables, samples)
    rounded = np_momentum_trajectory(start, samples, 0.1, 0.9, bfloat16_second_moment=True)
    exact = np_momentum_trajectory(start, samples, 0.1, 0.9, bfloat16_second_moment=False)
    for g, e in zip(got, rounded):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-6)
    # The approximation is visible: the float32 reference is further away than the tolerance above.
    assert max(np.max(np.abs(g - e)) for g, e in zip(got, exact)) > 1e-4


def test_float32_second_moment_is_the_default_and_matches_the_exact_reference():
    rng = np.random.default_rng(3)
    variables = make_variables(rng, SHAPES)
    start = [v.numpy() for v in variables]
    samples = moderate_samples(rng, 5)
    optimizer = tlb_opt.VRMomentum(0.1, momentum=0.9, gradient_accumulation_steps=NUM_SAMPLES)
    assert optimizer.second_moment_dtype == "float32"
    got = run_accumulated(optimizer, variables, samples)
    for g, e in zip(got, np_momentum_trajectory(start, samples, 0.1, 0.9, bfloat16_second_moment=False)):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-6)


def test_identical_samples_still_give_the_upper_bound_in_bfloat16():
    """A tie stays a tie: bfloat16's rounding of the second moment is inside the tolerance."""
    variable = keras.Variable(np.zeros((3, 5), np.float32))
    optimizer = tlb_opt.VRSGD(1.0, gamma=0.1, gsnr_upper_bound=2.0, gradient_accumulation_steps=2,
                              second_moment_dtype="bfloat16")
    gradient = tf.constant(np.linspace(0.3, 7.1, 15, dtype=np.float32).reshape(3, 5))
    for _ in range(2):
        optimizer.apply([gradient], [variable])
    np.testing.assert_allclose(variable.numpy(), -2.0 * gradient.numpy(), rtol=1e-6)


def test_bfloat16_halves_the_second_moments_payload_in_the_one_all_reduce(mirrored, monkeypatch):
    dtypes = []
    original = tf.distribute.ReplicaContext.all_reduce

    def recording_all_reduce(self, reduce_op, value, options=None):
        dtypes.append([t.dtype for t in tf.nest.flatten(value)])
        return original(self, reduce_op, value, options)

    monkeypatch.setattr(tf.distribute.ReplicaContext, "all_reduce", recording_all_reduce)
    rng = np.random.default_rng(0)
    start = [rng.normal(size=s).astype("float32") for s in SHAPES]
    run_replicated(mirrored(2), lambda: tlb_opt.VRAdam(0.01, second_moment_dtype="bfloat16"), start,
                   make_samples(rng, SHAPES, 2, 2), 1)
    count = len(SHAPES)
    # Per replica: the mean gradients in float32, the second moments in bfloat16 (a collective packs
    # one dtype, so two calls).
    assert sorted(dtypes, key=lambda call: call[0] == tf.bfloat16) == [[tf.float32] * count] * 2 + [
        [tf.bfloat16] * count] * 2


def test_bfloat16_under_mirrored_strategy_is_close_to_one_device(mirrored):
    """Two replicas round each replica's second moment and may sum in bfloat16: within its resolution."""
    rng = np.random.default_rng(13)
    start = [rng.normal(size=s).astype("float32") for s in SHAPES]
    samples = moderate_samples(rng, 3)
    single = [keras.Variable(w) for w in start]
    run_accumulated(tlb_opt.VRMomentum(0.1, gradient_accumulation_steps=NUM_SAMPLES), single, samples)
    replicated, _ = run_replicated(
        mirrored(2), lambda: tlb_opt.VRMomentum(0.1, gradient_accumulation_steps=2, second_moment_dtype="bfloat16"),
        start, samples, 2)
    for a, b in zip(replicated, single):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("bad", ["float16", "bf16", None, 16])
def test_a_bad_second_moment_dtype_is_an_error_naming_the_argument(bad):
    with pytest.raises(ValueError, match="second_moment_dtype"):
        tlb_opt.VRAdam(0.01, second_moment_dtype=bad)
    with pytest.raises(ValueError, match="second_moment_dtype"):
        tlb_opt.VR(keras.optimizers.SGD(0.1), second_moment_dtype=bad)


def test_second_moment_dtype_survives_the_config_round_trip():
    variant = tlb_opt.VRMomentum(0.05, second_moment_dtype="bfloat16", gradient_accumulation_steps=2)
    config = variant.get_config()
    assert config["second_moment_dtype"] == "bfloat16"
    assert tlb_opt.VRMomentum.from_config(config).second_moment_dtype == "bfloat16"
    wrapper = tlb_opt.VR(keras.optimizers.Adam(0.001), second_moment_dtype="bfloat16")
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(wrapper))
    assert clone.second_moment_dtype == "bfloat16" and clone.get_config() == wrapper.get_config()


def test_the_accumulated_means_are_the_sequential_float32_sums():
    """The reducer's all-reduced statistics equal NumPy's sequential float32 sums of the micro-batches
    and of their squares, and the accumulators are zero after the update."""
    rng = np.random.default_rng(5)
    samples = rng.normal(size=(3, 4, 6)).astype(np.float32) * np.float32(1e3) + np.float32(0.1)
    seen = []
    variable = keras.Variable(np.zeros((4, 6), np.float32))
    optimizer = tlb_opt.VRSGD(0.0, gradient_accumulation_steps=3)
    optimizer.build([variable])
    original = optimizer._update_from_reduced_statistics

    def recording(statistics, variables):
        seen.append([s[0] for s in statistics])
        return original(statistics, variables)

    optimizer._update_from_reduced_statistics = recording
    for sample in samples:
        optimizer.apply([tf.constant(sample)], [variable])
    total, total_squares = np.zeros((4, 6), np.float32), np.zeros((4, 6), np.float32)
    for sample in samples:  # sequential float32 sums, in micro-batch order
        total += sample
        total_squares += np.square(sample)
    mean, mean_square = seen[0]
    np.testing.assert_array_equal(mean.numpy(), total / np.float32(3))
    np.testing.assert_array_equal(mean_square.numpy(), total_squares / np.float32(3))
    assert all(not np.any(a.numpy()) for accumulator in optimizer._reducer.accumulators for a in accumulator)
