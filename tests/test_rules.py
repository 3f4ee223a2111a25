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


def test_sum_of_squares_matches_float64_and_overflows_like_the_plain_sum():
    for shape in SHAPES:
        x = _random(shape, seed=1)
        total = rules.sum_of_squares(tf.constant(x)).numpy()
        assert total.dtype == np.float32
        np.testing.assert_allclose(total, np.sum(np.square(x.astype(np.float64))), rtol=RTOL)
    assert np.isinf(rules.sum_of_squares(np.array([2e19, 1.0], np.float32)).numpy())


# Where the plain sum of squares stops being the norm: it overflows above float32's largest
# value (3.4028e38), and it is trusted only from size * 1e-30 up (squares below ~1.2e-38 flush).
NORM_BOUNDARIES = [
    (1.30e19, True), (1.31e19, False),  # 2 * x**2 = 3.38e38 (finite) / 3.43e38 (inf)
    (1.01e-15, True), (0.99e-15, False),  # 2 * x**2 = 2.04e-30 / 1.96e-30 against 2 * 1e-30
]


@pytest.mark.parametrize("value, plain", NORM_BOUNDARIES)
def test_l2_norm_switches_form_at_the_representable_boundary_and_matches_float64_on_both_sides(value, plain):
    x = np.array([value, -value], np.float32)
    representable = rules.squares_representable(rules.sum_of_squares(x), 2.0).numpy()
    assert representable == plain
    np.testing.assert_allclose(rules.l2_norm(tf.constant(x)).numpy(), np_norm(x), rtol=RTOL)


@pytest.mark.parametrize("value, plain", NORM_BOUNDARIES)
def test_global_norm_switches_form_on_the_total_and_matches_float64_on_both_sides(value, plain):
    """One test on the total of two tensors; at the overflow boundary the total overflows where
    neither tensor alone does."""
    tensors = [np.array([value], np.float32), np.array([-value], np.float32)]
    if value > 1:
        assert rules.squares_representable(rules.sum_of_squares(tensors[0]), 1.0).numpy()
    total = rules.sum_of_squares(tensors[0]) + rules.sum_of_squares(tensors[1])
    assert rules.squares_representable(total, 2.0).numpy() == plain
    expected = np_norm(np.concatenate(tensors))
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
    # A NaN element gives a NaN norm, and stays NaN (the other elements are divided by inf).
    nan_direction = rules.normalize(tf.constant([1.0, np.nan]), tf.constant(np.nan)).numpy()
    assert nan_direction[0] == 0.0 and np.isnan(nan_direction[1])


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


def np_adam_direction(m, v, beta_1, beta_2, step, epsilon):
    m_hat = np.asarray(m, np.float64) / (1 - beta_1**step)
    v_hat = np.asarray(v, np.float64) / (1 - beta_2**step)
    return m_hat / (np.sqrt(v_hat) + epsilon)


@pytest.mark.parametrize("beta_1, beta_2, step", [(0.9, 0.999, 1), (0.8, 0.95, 3), (0.0, 0.0, 2), (0.9, 0.999, 40)])
def test_bias_corrected_adam_direction_and_its_epsilon_zero_guard(beta_1, beta_2, step):
    m, v = _random((5,), 12), np.abs(_random((5,), 13))
    root = np.sqrt(v)
    direction = rules.bias_corrected_adam_direction(tf.constant(m), tf.constant(root), beta_1, beta_2,
                                                    tf.constant(step, tf.int64), 1e-3).numpy()
    np.testing.assert_allclose(direction, np_adam_direction(m, root.astype(np.float64) ** 2, beta_1, beta_2, step,
                                                            1e-3), rtol=1e-5)
    # epsilon = 0 and an element that never had a gradient (m = v = 0): 0, not NaN.
    m[2] = root[2] = 0.0
    direction = rules.bias_corrected_adam_direction(tf.constant(m), tf.constant(root), beta_1, beta_2, step,
                                                    0.0).numpy()
    assert direction[2] == 0.0
    m, root, direction = np.delete(m, 2), np.delete(root, 2), np.delete(direction, 2)
    np.testing.assert_allclose(direction, np_adam_direction(m, root.astype(np.float64) ** 2, beta_1, beta_2, step,
                                                            0.0), rtol=1e-5)


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1.0, 1e20, 1e30])
def test_hypot_matches_float64_where_squares_would_overflow(scale):
    a, b = _random((6,), 14, scale), _random((6,), 15, scale)
    b[0], a[1], a[2], b[2] = 0.0, 0.0, 0.0, 0.0
    expected = np.hypot(a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(rules.hypot(tf.constant(a), tf.constant(b)).numpy(), expected, rtol=RTOL)


@pytest.mark.parametrize("tolerance", [0.0, 1e-10], ids=["hypot-form", "plain-form-allowed"])
@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_root_moving_average_and_the_adam_direction_from_it_match_the_plain_moments(scale, tolerance):
    """Three steps of Adam's second moment, kept as its root, against the float64 moments; with a
    tolerance the plain form runs at scale 1 and falls back to the hypot form at 1e30 (its squares
    overflow); at 1e-30 its underflow error is within the tolerance."""
    decay, root, v, m = 0.999, np.zeros((4,), np.float32), np.zeros((4,)), np.zeros((4,))
    for step in range(1, 4):
        g = _random((4,), 20 + step, scale)
        v = decay * v + (1 - decay) * np.square(g.astype(np.float64))
        m = 0.9 * m + 0.1 * g
        root = rules.root_moving_average(tf.constant(root), tf.constant(g), decay,
                                         underflow_tolerance=tolerance).numpy()
        if tolerance and scale < 1e-20:
            np.testing.assert_allclose(root, np.sqrt(v), atol=rules.root_underflow_error(decay))
            continue
        np.testing.assert_allclose(root, np.sqrt(v), rtol=1e-5)
        direction = rules.bias_corrected_adam_direction(tf.constant(m.astype(np.float32)), tf.constant(root), 0.9,
                                                        decay, tf.constant(step, tf.int64), 0.0).numpy()
        np.testing.assert_allclose(direction, np_adam_direction(m, v, 0.9, decay, step, 0.0), rtol=1e-5)


# (decay, root, gradient, the plain form's largest square is finite): around float32's largest value 3.4028e38.
ROOT_BOUNDARIES = [
    (0.0, 0.0, 1.84e19, True), (0.0, 0.0, 1.85e19, False),  # g**2 = 3.386e38 / 3.42e38
    (0.999, 1.84e19, 0.0, True), (0.999, 1.85e19, 0.0, False),  # 0.999 * r**2 = 3.382e38 / 3.419e38
    (0.5, 1.84e19, 1.84e19, True), (0.5, 1.85e19, 1.85e19, False),  # each term finite, their sum 3.386e38 / inf
]


@pytest.mark.parametrize("decay, root_value, gradient_value, plain", ROOT_BOUNDARIES)
def test_root_moving_average_switches_to_the_hypot_form_at_overflow_and_matches_float64_on_both_sides(
        decay, root_value, gradient_value, plain):
    """One element crosses the overflow boundary; another, tiny element shows which form ran: the plain
    form flushes its square to 0 (an error within the bound), the hypot form keeps it exactly."""
    root = np.array([root_value, 0.0, 1.0], np.float32)
    gradient = np.array([gradient_value, 1e-25, 1.0], np.float32)
    tensor_decay = np.float32(decay)
    kept, added = np.sqrt(tensor_decay) * root, np.sqrt(np.float32(1.0) - tensor_decay) * gradient
    with np.errstate(over="ignore"):
        assert np.isfinite(np.float32(kept[0]) ** 2 + np.float32(added[0]) ** 2) == plain
    result = rules.root_moving_average(tf.constant(root), tf.constant(gradient), decay, underflow_tolerance=1e-10)
    result = result.numpy()
    decay = np.float64(tensor_decay)  # the decay as float32 holds it (0.999 is 0.99900001)
    expected = np.sqrt(decay * root.astype(np.float64) ** 2 + (1 - decay) * gradient.astype(np.float64) ** 2)
    if plain:
        assert result[1] == 0.0 and expected[1] > 0  # the tiny element's square underflowed
        np.testing.assert_allclose(result, expected, rtol=1e-6, atol=rules.root_underflow_error(decay))
    else:
        assert result[1] > 0
        np.testing.assert_allclose(result, expected, rtol=1e-6)
    # Without a tolerance the hypot form always runs: exact for the tiny element too.
    exact = rules.root_moving_average(tf.constant(root), tf.constant(gradient), decay).numpy()
    np.testing.assert_allclose(exact, expected, rtol=1e-6)


@pytest.mark.parametrize("decay", [0.0, 0.9, 0.999])
def test_root_moving_average_underflow_error_stays_within_its_bound_over_many_updates(decay):
    """Gradients around the scale where the plain form's squares underflow, for 300 updates: the
    accumulated error stays below root_underflow_error(decay); at scale 1 the form is exact."""
    rng = np.random.default_rng(0)
    bound = rules.root_underflow_error(decay)
    scales = np.array([1e-22, 1e-20, 1e-19, bound, 10 * bound, 1.0], np.float32)
    root, v = np.zeros((6,), np.float32), np.zeros((6,))
    decay32 = np.float64(np.float32(decay))  # 300 updates: the float32 rounding of 0.999 would show
    for _ in range(300):
        g = (scales * rng.normal(size=6)).astype(np.float32)
        v = decay32 * v + (1 - decay32) * np.square(g.astype(np.float64))
        root = rules.root_moving_average(tf.constant(root), tf.constant(g), decay, underflow_tolerance=bound).numpy()
        np.testing.assert_allclose(root, np.sqrt(v), rtol=1e-5, atol=bound)
    assert root[0] == 0.0  # the smallest scale has underflowed: the bound is what was tested
    np.testing.assert_allclose(root[-1], np.sqrt(v[-1]), rtol=1e-5)


def test_adam_root_tolerance_admits_the_plain_form_for_the_usual_epsilons_only():
    for epsilon in (1e-6, 1e-7, 1e-8):
        assert rules.adam_root_tolerance(epsilon, 0.999) >= rules.root_underflow_error(0.999)
    for epsilon in (0.0, 1e-12):
        assert rules.adam_root_tolerance(epsilon, 0.999) < rules.root_underflow_error(0.999)
    # The definition: the root's error, bias-corrected at the worst step (t = 1), is float32 rounding of epsilon.
    tolerance = rules.adam_root_tolerance(1e-6, 0.99)
    np.testing.assert_allclose(tolerance / np.sqrt(1 - 0.99), 1e-6 * 2.0**-24, rtol=1e-12)
