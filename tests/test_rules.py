"""Each function of ``tf_largebatch.optimizers.rules`` against NumPy (float64) written here."""

import numpy as np
import pytest
import tensorflow as tf

from tf_largebatch.optimizers import rules

SHAPES = [(1,), (7,), (4, 3), (3, 3, 2, 4)]
RTOL = 2e-6


def _random(shape, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def np_norm(x):
    return np.sqrt(np.sum(np.square(np.asarray(x, np.float64))))


# ------------------------------------------------------------------- norms
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e-8, 1.0, 1e8, 1e20, 1e30])
def test_l2_norm_matches_float64_at_every_scale(shape, scale):
    """Squares of 1e30 overflow float32 and squares of 1e-30 underflow: the scaled norm does neither."""
    x = _random(shape, scale=scale)
    norm = rules.l2_norm(tf.constant(x)).numpy()
    assert norm.dtype == np.float32
    np.testing.assert_allclose(norm, np_norm(x), rtol=RTOL)


def test_l2_norm_of_the_largest_and_smallest_float32_values():
    big = np.array([3e38, -3e38 / 2], np.float32)
    np.testing.assert_allclose(rules.l2_norm(big).numpy(), np_norm(big), rtol=RTOL)
    tiny = np.array([2e-38, 4e-38, -6e-38], np.float32)  # normal floats (TF flushes subnormals to 0)
    np.testing.assert_allclose(rules.l2_norm(tiny).numpy(), np_norm(tiny), rtol=RTOL)
    # The true norm beyond float32's range is inf, as it must be.
    assert np.isinf(rules.l2_norm(np.full((4,), 3e38, np.float32)).numpy())


def test_l2_norm_zero_nonfinite_and_low_precision():
    assert rules.l2_norm(np.zeros((3, 2), np.float32)).numpy() == 0.0
    assert np.isnan(rules.l2_norm(np.array([1.0, np.nan], np.float32)).numpy())
    assert not np.isfinite(rules.l2_norm(np.array([1.0, np.inf], np.float32)).numpy())
    x = _random((5, 4), seed=3)
    for dtype in (tf.bfloat16, tf.float16):
        low = tf.cast(tf.constant(x), dtype)
        np.testing.assert_allclose(rules.l2_norm(low).numpy(), np_norm(tf.cast(low, tf.float32).numpy()), rtol=RTOL)


def test_l2_norm_compiles_under_xla():
    norm = tf.function(rules.l2_norm, jit_compile=True)
    x = _random((6, 5), seed=4, scale=1e30)
    np.testing.assert_allclose(norm(tf.constant(x)).numpy(), np_norm(x), rtol=RTOL)


@pytest.mark.parametrize("scales", [(1.0, 1.0, 1.0), (1e-30, 1e-30, 1e-30), (1e30, 1e30, 1e30),
                                    (1e30, 1e-30, 1.0), (0.0, 1e-25, 0.0)])
def test_global_norm_matches_float64(scales):
    tensors = [_random(shape, seed=i, scale=s) for i, (shape, s) in enumerate(zip(SHAPES, scales))]
    expected = np.sqrt(sum(np_norm(t) ** 2 for t in tensors))
    np.testing.assert_allclose(rules.global_norm([tf.constant(t) for t in tensors]).numpy(), expected, rtol=RTOL)


def test_global_norm_of_zeros_is_zero():
    assert rules.global_norm([np.zeros((2,), np.float32), np.zeros((3, 1), np.float32)]).numpy() == 0.0


# -------------------------------------------------------------- normalize
@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_normalize_gives_a_unit_direction(scale):
    x = _random((4, 3), seed=5, scale=scale)
    direction = rules.normalize(tf.constant(x), rules.l2_norm(x)).numpy()
    np.testing.assert_allclose(direction, x.astype(np.float64) / np_norm(x), rtol=1e-5, atol=1e-7)
    assert rules.normalize(tf.zeros((3,)), tf.constant(0.0)).numpy().tolist() == [0.0, 0.0, 0.0]


# ------------------------------------------------------------ trust ratio
def np_trust_ratio(w_norm, u_norm, c=1.0, bounds=None, eps=0.0, wd=0.0):
    if w_norm == 0 or u_norm == 0:
        return 1.0
    phi = w_norm if bounds is None else min(max(w_norm, bounds[0]), bounds[1])
    return c * phi / (u_norm + wd * w_norm + eps)


@pytest.mark.parametrize(
    "w_norm, u_norm, kwargs",
    [
        (3.0, 0.5, {}),
        (3.0, 0.5, dict(trust_coefficient=0.001, epsilon=1e-3)),
        (3.0, 0.5, dict(bounds=(0.1, 2.0))),
        (0.01, 0.5, dict(bounds=(0.1, 2.0))),
        (0.7, 0.5, dict(bounds=(0.1, 2.0), weight_decay=0.1)),
        (2.0, 1e-31, {}),
        (1e-15, 1e15, {}),
        (0.0, 0.5, {}),
        (3.0, 0.0, dict(weight_decay=0.1)),
    ],
)
def test_trust_ratio_matches_numpy(w_norm, u_norm, kwargs):
    ratio = rules.trust_ratio(tf.constant(w_norm), tf.constant(u_norm), **kwargs).numpy()
    reference_kwargs = dict(kwargs)
    reference_kwargs = dict(c=reference_kwargs.pop("trust_coefficient", 1.0), eps=reference_kwargs.pop("epsilon", 0.0),
                            wd=reference_kwargs.pop("weight_decay", 0.0), **reference_kwargs)
    np.testing.assert_allclose(ratio, np_trust_ratio(np.float32(w_norm), np.float32(u_norm), **reference_kwargs),
                               rtol=RTOL)


def test_trust_ratio_sum_of_norms_is_the_triangle_bound_of_norm_of_sum():
    w, g, wd = _random((5, 3), seed=6), _random((5, 3), seed=7), 0.3
    norm_of_sum = rules.trust_ratio(rules.l2_norm(w), rules.l2_norm(g + wd * w)).numpy()
    sum_of_norms = rules.trust_ratio(rules.l2_norm(w), rules.l2_norm(g), weight_decay=wd).numpy()
    np.testing.assert_allclose(sum_of_norms, np_norm(w) / (np_norm(g) + wd * np_norm(w)), rtol=RTOL)
    assert sum_of_norms < norm_of_sum
    parallel = rules.trust_ratio(rules.l2_norm(w), rules.l2_norm(2 * w), weight_decay=wd).numpy()
    np.testing.assert_allclose(parallel, rules.trust_ratio(rules.l2_norm(w), rules.l2_norm(2 * w + wd * w)).numpy(),
                               rtol=RTOL)


# -------------------------------------------------------- small elementwise steps
def test_add_weight_decay_heavy_ball_moving_average():
    g, w, m = _random((4,), 8), _random((4,), 9), _random((4,), 10)
    np.testing.assert_allclose(rules.add_weight_decay(g, w, 0.1).numpy(), g + 0.1 * np.float64(w), rtol=RTOL)
    np.testing.assert_allclose(rules.heavy_ball(tf.constant(m), tf.constant(g), 0.9).numpy(), 0.9 * m + g.astype(
        np.float64), rtol=RTOL, atol=1e-7)
    np.testing.assert_allclose(rules.moving_average(tf.constant(m), tf.constant(g), 0.9).numpy(),
                               0.9 * m + 0.1 * g.astype(np.float64), rtol=RTOL, atol=1e-7)


@pytest.mark.parametrize("decay, step", [(0.9, 1), (0.999, 3), (0.0, 5), (0.5, 40)])
def test_bias_correction(decay, step):
    a = _random((3,), 11)
    expected = a / (1.0 - decay**step)
    np.testing.assert_allclose(rules.bias_correction(tf.constant(a), decay, tf.constant(step, tf.int64)).numpy(),
                               expected, rtol=1e-5)


def test_adam_direction_and_its_epsilon_zero_guard():
    m, v = _random((5,), 12), np.abs(_random((5,), 13))
    root = np.sqrt(v)
    np.testing.assert_allclose(rules.adam_direction(tf.constant(m), tf.constant(root), 1e-3).numpy(),
                               m / (np.sqrt(v.astype(np.float64)) + 1e-3), rtol=1e-5)
    # epsilon = 0 and an element that never had a gradient (m = v = 0): 0, not NaN.
    m[2] = root[2] = 0.0
    direction = rules.adam_direction(tf.constant(m), tf.constant(root), 0.0).numpy()
    assert direction[2] == 0.0
    m, root, direction = np.delete(m, 2), np.delete(root, 2), np.delete(direction, 2)
    np.testing.assert_allclose(direction, m / root.astype(np.float64), rtol=1e-5)


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1.0, 1e20, 1e30])
def test_hypot_matches_float64_where_squares_would_overflow(scale):
    a, b = _random((6,), 14, scale), _random((6,), 15, scale)
    b[0], a[1], a[2], b[2] = 0.0, 0.0, 0.0, 0.0
    expected = np.hypot(a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(rules.hypot(tf.constant(a), tf.constant(b)).numpy(), expected, rtol=RTOL)


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_root_moving_average_and_root_bias_correction_are_roots_of_the_plain_ones(scale):
    """Three steps of Adam's second moment, kept as its root, against the float64 moments."""
    decay, root, v = 0.999, np.zeros((4,), np.float32), np.zeros((4,))
    for step in range(1, 4):
        g = _random((4,), 20 + step, scale)
        v = decay * v + (1 - decay) * np.square(g.astype(np.float64))
        root = rules.root_moving_average(tf.constant(root), tf.constant(g), decay).numpy()
        np.testing.assert_allclose(root, np.sqrt(v), rtol=1e-5)
        corrected = rules.root_bias_correction(tf.constant(root), decay, tf.constant(step, tf.int64)).numpy()
        np.testing.assert_allclose(corrected, np.sqrt(v / (1 - decay**step)), rtol=1e-5)
