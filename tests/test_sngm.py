"""SNGM against the NumPy reference, and the SNGM paper's own checks (Lemma 2, eq. 10, eq. 13-14)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference_optimizers as ref
from reference_optimizers import RTOL, ATOL, assert_histories_close  # noqa: F401
from tf_largebatch.optimizers import SNGM


CASES = [
    dict(),
    dict(momentum=0.0),
    dict(momentum=0.5, weight_decay=1e-2),
    dict(layerwise=True),
    dict(layerwise=True, momentum=0.99, weight_decay=1e-3),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_sngm_matches_reference(case):
    weights, gradients = ref.random_problem(steps=6)
    history, _ = ref.run_keras(SNGM(learning_rate=0.1, **case), weights, gradients)
    expected = ref.run(ref.sngm_step, weights, gradients, 0.1, **case)
    assert_histories_close(history, expected)


def test_zero_gradient_everywhere_lets_the_momentum_decay():
    weights, gradients = ref.random_problem(steps=5)
    gradients[2] = [np.zeros_like(g) for g in gradients[2]]
    gradients[3] = [np.zeros_like(g) for g in gradients[3]]
    for layerwise in (False, True):
        history, _ = ref.run_keras(SNGM(0.1, momentum=0.9, layerwise=layerwise), weights, gradients, compiled=True)
        expected = ref.run(ref.sngm_step, weights, gradients, 0.1, momentum=0.9, layerwise=layerwise)
        assert_histories_close(history, expected)
        assert all(np.all(np.isfinite(w)) for step in history for w in step)
        # During the zero-gradient steps the weights keep moving by lr * momentum * u.
        assert not np.allclose(history[2][2], history[1][2])


def test_weight_decay_exclusion_matches_variable_path():
    weights, gradients = ref.random_problem(steps=4)
    paths = ["dense/kernel", "dense/bias", "encoder/layer_normalization/gamma", "conv/kernel", "conv/bias",
             "encoder/layer_normalization/beta"]
    optimizer = SNGM(0.1, weight_decay=0.05, exclude_from_weight_decay=["bias", "layer_normalization"])
    history, _ = ref.run_keras(optimizer, weights, gradients, paths=paths)
    decay_mask = [True, False, False, True, False, False]
    expected = ref.run(ref.sngm_step, weights, gradients, 0.1, weight_decay=0.05, decay_mask=decay_mask)
    assert_histories_close(history, expected)
    assert optimizer.get_config()["exclude_from_weight_decay"] == ["bias", "layer_normalization"]
    everything_decayed = ref.run(ref.sngm_step, weights, gradients, 0.1, weight_decay=0.05)
    assert not np.allclose(history[-1][2], everything_decayed[-1][2], rtol=1e-4)


def test_blockwise_sngm_equals_per_variable_normalisation():
    """Eq. (13)-(14): block-wise SNGM is SNGM run on each variable on its own."""
    weights, gradients = ref.random_problem(steps=5)
    blockwise, _ = ref.run_keras(SNGM(0.1, layerwise=True), weights, gradients)
    for index in range(len(weights)):
        alone, _ = ref.run_keras(SNGM(0.1), [weights[index]], [[gs[index]] for gs in gradients])
        for step in range(len(gradients)):
            np.testing.assert_allclose(blockwise[step][index], alone[step][0], rtol=1e-6, atol=1e-7)
    global_, _ = ref.run_keras(SNGM(0.1), weights, gradients)
    assert not np.allclose(global_[-1][2], blockwise[-1][2], rtol=1e-3)


# ------------------------------------------------------------ Lemma 2
def _momentum_norms(optimizer, weights, gradient_steps):
    variables = ref.make_variables(weights)
    optimizer.build(variables)

    @tf.function
    def step(grads):
        optimizer.apply(grads, variables)
        return tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(m)) for m in optimizer.momentums]))

    return np.array([float(step([tf.constant(g, tf.float32) for g in gs])) for gs in gradient_steps])


def test_momentum_norm_never_exceeds_one_over_one_minus_beta():
    """Lemma 2: ||u_t|| <= 1/(1 - beta) whatever the gradients' scale (1e-30 ... 1e30)."""
    rng = np.random.default_rng(0)
    weights, _ = ref.random_problem(steps=1)
    steps = []
    for _ in range(300):
        scales = 10.0 ** rng.uniform(-30, 30, size=len(weights))
        steps.append([s * rng.normal(size=w.shape) for s, w in zip(scales, weights)])
    beta = 0.9
    norms = _momentum_norms(SNGM(0.01, momentum=beta), weights, steps)
    assert np.all(np.isfinite(norms))
    assert norms.max() <= (1.0 / (1.0 - beta)) * (1 + 1e-5)


def test_momentum_norm_bound_is_attained_for_a_constant_direction():
    """With one direction and wildly varying magnitudes, ||u_t|| = (1 - beta^t)/(1 - beta) exactly."""
    rng = np.random.default_rng(1)
    weights, _ = ref.random_problem(steps=1)
    direction = [rng.normal(size=w.shape) for w in weights]
    scales = 10.0 ** rng.uniform(-30, 30, size=100)
    steps = [[scale * d for d in direction] for scale in scales]
    beta = 0.95
    norms = _momentum_norms(SNGM(0.01, momentum=beta), weights, steps)
    t = np.arange(1, 101)
    np.testing.assert_allclose(norms, (1 - beta**t) / (1 - beta), rtol=1e-5)


@pytest.mark.parametrize("layerwise", [False, True])
@pytest.mark.parametrize("scale", [1e-30, 1e-15, 1e15, 1e30])
def test_steps_are_invariant_to_the_gradient_scale_from_1e_minus30_to_1e30(layerwise, scale):
    """SNGM sees only g / ||g||: gradients times any c > 0 give the same weights (norms kept scaled,
    since float32 squares of 1e30 overflow and of 1e-30 underflow)."""
    weights, gradients = ref.random_problem(steps=5)
    reference, _ = ref.run_keras(SNGM(0.1, layerwise=layerwise), weights, gradients)
    scaled, _ = ref.run_keras(SNGM(0.1, layerwise=layerwise), weights, [[scale * g for g in gs] for gs in gradients])
    assert_histories_close(scaled, reference, rtol=1e-5, atol=1e-7)
    expected = ref.run(ref.sngm_step, weights, gradients, 0.1, layerwise=layerwise)
    assert_histories_close(scaled, expected)


# ------------------------------------------------------------ eq. (10)
def test_sngm_with_momentum_reaches_the_minimum_of_eq_10():
    """F(x) = 0.5 (x + 1)^2 from x0 = 2: SNGM converges to x* = -1 (where LARS with phi(z) = z goes to 0)."""
    schedule = keras.optimizers.schedules.CosineDecay(0.05, decay_steps=400)
    optimizer = SNGM(schedule, momentum=0.9)
    history, _ = ref.run_keras(optimizer, [np.array([2.0])], lambda t, ws: [ws[0] + 1.0], num_steps=400,
                               compiled=True)
    assert abs(history[-1][0][0] + 1.0) < 0.02
    assert min(h[0][0] for h in history) < -0.5  # it went through 0, unlike LARS


# ------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "kwargs, argument, value",
    [
        (dict(learning_rate=-0.1), "learning_rate", "-0.1"),
        (dict(momentum=1.0), "momentum", "1.0"),
        (dict(momentum=-0.1), "momentum", "-0.1"),
        (dict(weight_decay=-1.0), "weight_decay", "-1.0"),
        (dict(exclude_from_weight_decay="bias"), "exclude_from_weight_decay", "bias"),
    ],
)
def test_bad_hyperparameters_raise_naming_argument_and_value(kwargs, argument, value):
    with pytest.raises(ValueError) as error:
        SNGM(**kwargs)
    assert argument in str(error.value) and value in str(error.value)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
@pytest.mark.parametrize("layerwise", [False, True])
@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_compiled_steps_from_1e_minus30_to_1e30_match_the_reference(layerwise, scale, jit_compile):
    """In a tf.function (and under XLA) the norm starts from the skip policy's sums of squares; at
    1e30 those overflow (the exact finiteness check and the scaled norm take over), at 1e-30 they
    underflow: the steps are the reference's, and no update is skipped."""
    import tensorflow as tf

    weights, gradients = ref.random_problem(steps=4)
    variables = ref.make_variables(weights)
    optimizer = SNGM(0.1, layerwise=layerwise)
    optimizer.build(variables)
    apply = tf.function(lambda grads: optimizer.apply(grads, variables), jit_compile=jit_compile)
    history = []
    for gs in gradients:
        apply([tf.constant(np.asarray(scale * g, np.float32)) for g in gs])
        history.append([np.asarray(v.numpy(), np.float64) for v in variables])
    assert_histories_close(history, ref.run(ref.sngm_step, weights, gradients, 0.1, layerwise=layerwise))
    assert optimizer.skipped_updates == 0
