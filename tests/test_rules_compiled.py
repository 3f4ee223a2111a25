"""The forms of ``tf_largebatch.optimizers.rules`` chosen when XLA compiles the step, against NumPy.

Under ``jit_compile=True`` the sums of squares are row sums by a matrix-vector
product and Adam's root moving average is always the ``hypot`` form; each is
checked here against float64 NumPy on both sides of every overflow/underflow
boundary that the plain forms have, in float32, float16 and bfloat16, and in
whole optimizer steps at gradient scales 1e-30 ... 1e30.
"""

import numpy as np
import pytest
import tensorflow as tf

import reference_optimizers as ref
from tf_largebatch.optimizers import LAMB, LARS, SNGM, keras_seam, rules

RTOL = 2e-6
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Shapes that take the row form (last axis >= 8, or a size divisible by 8) and shapes that cannot.
ROW_SHAPES = [(16, 8), (64,), (3, 3, 2, 16), (40, 3), (9, 10)]
OTHER_SHAPES = [(1,), (7,), (4, 3)]


def _random(shape, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def np_norm(x):
    return np.sqrt(np.sum(np.square(np.asarray(x, np.float64))))


def compiled(function):
    # No autograph: the rules have no Python control flow on tensors, and autograph can mistake one
    # lambda's source for another's when several sit in one test module.
    return tf.function(function, jit_compile=True, autograph=False)


# One compiled function each, so that tensors of one shape and dtype compile once.
compiled_l2_norm = compiled(rules.l2_norm)
compiled_sum_of_squares = compiled(rules.sum_of_squares)


def test_tracing_for_xla_is_true_only_in_a_trace_xla_compiles():
    seen = {}

    def record(key):
        seen[key] = keras_seam.tracing_for_xla()
        return tf.constant(0.0)

    record("eager")
    tf.function(lambda: record("graph"))()
    tf.function(lambda: record("xla"), jit_compile=True)()
    # A plain tf.function called inside a compiled one is compiled with it.
    inner = tf.function(lambda: record("nested"))
    tf.function(lambda: inner(), jit_compile=True)()
    assert seen == {"eager": False, "graph": False, "xla": True, "nested": True}


def test_the_row_form_is_the_one_that_runs_for_these_shapes():
    for shape in ROW_SHAPES:
        assert rules._rows_view(tf.zeros(shape)) is not None, shape
    for shape in OTHER_SHAPES:
        assert rules._rows_view(tf.zeros(shape)) is None, shape


@pytest.mark.parametrize("shape", ROW_SHAPES + OTHER_SHAPES)
def test_compiled_sum_of_squares_matches_float64(shape):
    x = _random(shape, seed=1)
    total = compiled_sum_of_squares(tf.constant(x)).numpy()
    assert total.dtype == np.float32
    np.testing.assert_allclose(total, np.sum(np.square(x.astype(np.float64))), rtol=RTOL)
    assert np.isinf(compiled_sum_of_squares(tf.fill([16, 8], 2e19)).numpy())
    assert np.isnan(compiled_sum_of_squares(tf.constant(np.where(x == x[(0,) * len(shape)], np.nan, x))).numpy())


@pytest.mark.parametrize("shape", ROW_SHAPES)
@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1e-8, 1.0, 1e8, 1e20, 1e30])
def test_compiled_l2_norm_matches_float64_at_every_scale(shape, scale):
    x = _random(shape, seed=2, scale=scale)
    np.testing.assert_allclose(compiled_l2_norm(tf.constant(x)).numpy(), np_norm(x), rtol=RTOL)


def _boundaries(size):
    """Values v of a tensor of ``size`` elements +-v around the plain form's limits: the sum of
    squares ``size * v**2`` just below / above float32's largest value, and just above / below
    ``size * 1e-30`` (the smallest sum trusted)."""
    overflow = np.sqrt(FLOAT32_MAX / size)
    return [(0.99 * overflow, True), (1.01 * overflow, False), (1.01e-15, True), (0.99e-15, False)]


@pytest.mark.parametrize("shape", [(16, 8), (64,)])
@pytest.mark.parametrize("side", range(4))
def test_compiled_l2_norm_switches_form_at_the_boundary_and_matches_float64_on_both_sides(shape, side):
    size = int(np.prod(shape))
    value, plain = _boundaries(size)[side]
    x = (value * np.resize([1.0, -1.0], size)).astype(np.float32).reshape(shape)
    representable = compiled(lambda t: rules.squares_representable(rules.sum_of_squares(t), float(size)))
    assert representable(tf.constant(x)).numpy() == plain
    np.testing.assert_allclose(compiled_l2_norm(tf.constant(x)).numpy(), np_norm(x), rtol=RTOL)


@pytest.mark.parametrize("side", range(4))
def test_compiled_global_norm_switches_form_on_the_total_and_matches_float64_on_both_sides(side):
    """Two tensors of 128 elements: at the overflow boundary the total overflows where neither does."""
    value, plain = _boundaries(256)[side]
    tensors = [np.full((16, 8), value, np.float32), np.full((128,), -value, np.float32)]
    total = compiled(lambda a, b: rules.squares_representable(rules.sum_of_squares(a) + rules.sum_of_squares(b),
                                                              256.0))
    assert total(*tensors).numpy() == plain
    expected = np_norm(np.concatenate([t.ravel() for t in tensors]))
    norm = compiled(lambda a, b: rules.global_norm([a, b]))(*[tf.constant(t) for t in tensors]).numpy()
    np.testing.assert_allclose(norm, expected, rtol=RTOL)


@pytest.mark.parametrize("scales", [(1.0, 1.0, 1.0), (1e-30, 1e-30, 1e-30), (1e30, 1e30, 1e30), (1e30, 1e-30, 1.0)])
def test_compiled_global_norm_matches_float64(scales):
    tensors = [_random(shape, seed=i, scale=s) for i, (shape, s) in enumerate(zip(ROW_SHAPES, scales))]
    expected = np.sqrt(sum(np_norm(t) ** 2 for t in tensors))
    norm = compiled(lambda *ts: rules.global_norm(list(ts)))(*[tf.constant(t) for t in tensors]).numpy()
    np.testing.assert_allclose(norm, expected, rtol=RTOL)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_compiled_l2_norm_of_low_precision_tensors(dtype):
    low = tf.cast(tf.constant(_random((16, 8), seed=3)), dtype)
    expected = np_norm(tf.cast(low, tf.float32).numpy())
    np.testing.assert_allclose(compiled_l2_norm(low).numpy(), expected, rtol=RTOL)
    np.testing.assert_allclose(compiled_sum_of_squares(low).numpy(), expected**2, rtol=RTOL)


def test_compiled_l2_norm_of_zeros_and_of_the_extreme_float32_values():
    assert compiled_l2_norm(tf.zeros((16, 8))).numpy() == 0.0
    big = np.resize(np.array([3e37, -1.5e37], np.float32), (8, 8))  # norm 1.9e38, squares overflow
    np.testing.assert_allclose(compiled_l2_norm(tf.constant(big)).numpy(), np_norm(big), rtol=RTOL)
    assert np.isinf(compiled_l2_norm(tf.fill([8, 8], 3e38)).numpy())  # the true norm is beyond float32
    tiny = np.resize(np.array([2e-38, 4e-38, -6e-38], np.float32), (16, 8))
    np.testing.assert_allclose(compiled_l2_norm(tf.constant(tiny)).numpy(), np_norm(tiny), rtol=RTOL)


# The boundaries of test_rules.ROOT_BOUNDARIES: around float32's largest value, plus a tiny element
# whose square the plain form would flush to 0.
ROOT_BOUNDARIES = [
    (0.0, 0.0, 1.84e19), (0.0, 0.0, 1.85e19),
    (0.999, 1.84e19, 0.0), (0.999, 1.85e19, 0.0),
    (0.5, 1.84e19, 1.84e19), (0.5, 1.85e19, 1.85e19),
]


@pytest.mark.parametrize("decay, root_value, gradient_value", ROOT_BOUNDARIES)
def test_compiled_root_moving_average_is_the_exact_hypot_form_on_both_sides_of_overflow(decay, root_value,
                                                                                      gradient_value):
    """Under XLA the hypot form runs even when the plain form is allowed (a tolerance): the tiny
    element is kept, not flushed, and every element matches float64."""
    root = np.array([root_value, 0.0, 1.0], np.float32)
    gradient = np.array([gradient_value, 1e-25, 1.0], np.float32)
    def root_step(r, g):
        return rules.root_moving_average(r, g, decay, underflow_tolerance=1e-10)

    step = compiled(root_step)
    result = step(tf.constant(root), tf.constant(gradient)).numpy()
    decay64 = np.float64(np.float32(decay))
    expected = np.sqrt(decay64 * root.astype(np.float64) ** 2 + (1 - decay64) * gradient.astype(np.float64) ** 2)
    assert result[1] > 0
    np.testing.assert_allclose(result, expected, rtol=1e-6)


def _run_compiled(optimizer, weights, gradients):
    variables = ref.make_variables(weights, None, "float32")
    optimizer.build(variables)
    apply = tf.function(lambda grads: optimizer.apply(grads, variables), jit_compile=True)
    for gs in gradients:
        apply([tf.constant(np.asarray(g, np.float32)) for g in gs])
    return [v.numpy().astype(np.float64) for v in variables]


def _problem(steps=2):
    rng = np.random.default_rng(4)
    shapes = [(16, 8), (3, 3, 2, 16), (7,)]
    weights = [rng.normal(size=s) for s in shapes]
    gradients = [[rng.normal(size=s) for s in shapes] for _ in range(steps)]
    return weights, gradients


@pytest.mark.slow  # four XLA compilations of a whole optimizer step each (~10 s each on a busy 2-core CPU)
@pytest.mark.parametrize("factory", [
    lambda: SNGM(0.1), lambda: LARS(0.05), lambda: LAMB(0.05, epsilon=0.0, trust_ratio_bounds=(0.1, 3.0)),
], ids=["SNGM", "LARS", "LAMB-eps0"])
def test_compiled_steps_are_invariant_to_the_gradient_scale_and_equal_the_graph_steps(factory):
    """Whole optimizer steps under XLA: gradients times 1e-30 or 1e30 take the steps of gradients
    of 1, and those equal the steps of the graph-mode forms."""
    weights, gradients = _problem()
    reference, _ = ref.run_keras(factory(), weights, gradients, compiled=True)
    for scale in (1.0, 1e-30, 1e30):
        steps = _run_compiled(factory(), weights, [[scale * g for g in gs] for gs in gradients])
        for got, expected in zip(steps, reference[-1]):
            np.testing.assert_allclose(got, expected, rtol=1e-4 if scale != 1.0 else 1e-5, atol=1e-6)


# ----------------------------------------------------------- the fused momentum step
@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_apply_heavy_ball_is_the_momentum_step_in_one_kernel(mode, dtype):
    """``u <- beta u + g; w <- w - lr u`` against NumPy, three steps, eagerly, in graph mode and under XLA."""
    w0, u0 = _random((9, 10), seed=5).astype(dtype), _random((9, 10), seed=6).astype(dtype)
    variable, velocity = tf.Variable(w0), tf.Variable(u0)
    step = lambda g, lr: rules.apply_heavy_ball(variable, velocity, g, lr, 0.9)  # noqa: E731
    if mode != "eager":
        step = tf.function(step, jit_compile=mode == "xla", autograph=False)
    w, u = w0.astype(np.float64), u0.astype(np.float64)
    for t in range(3):
        g, lr = _random((9, 10), seed=7 + t).astype(dtype), 0.1 / (t + 1)
        step(tf.constant(g), tf.constant(lr, dtype))
        u = 0.9 * u + g
        w = w - lr * u
    rtol = 1e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(velocity.numpy(), u, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(variable.numpy(), w, rtol=rtol, atol=rtol)


def test_apply_heavy_ball_refuses_state_of_another_dtype():
    with pytest.raises(ValueError, match="float32"):
        rules.apply_heavy_ball(tf.Variable(tf.zeros((2,), tf.bfloat16)), tf.Variable(tf.zeros((2,))), tf.ones((2,)),
                               0.1, 0.9)
