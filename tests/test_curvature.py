"""MCLR and PercentDelta (curvature paper eq. 20-22, 24) against NumPy references."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_largebatch.optimizers import MCLR, PercentDelta
from tf_largebatch.optimizers import curvature

SHAPES = [(3, 4), (5,), (2, 3, 2), (1,)]


# ------------------------------------------------------------ NumPy references
def np_mclr_rate(w, g, gamma, beta):
    """eq. (20)-(22) with medians of magnitudes; rate 1 where undefined."""
    wm = np.median(np.abs(w).astype(np.float64))
    gm = np.median(np.abs(g).astype(np.float64))
    denominator = gm + beta * wm
    if wm == 0 or denominator == 0:
        return 1.0
    return gamma * wm / denominator


def np_percent_delta_rate(w, d, gamma, floor):
    """eq. (24): gamma * size / ||d / w||_1, |w| floored at floor * mean|w|, zeros left out."""
    w = np.abs(w).astype(np.float64).ravel()
    d = np.abs(d).astype(np.float64).ravel()
    w = np.maximum(w, floor * w.mean())
    keep = w > 0
    total = np.sum(d[keep] / w[keep])
    if keep.sum() == 0 or total == 0:
        return 1.0
    return gamma * keep.sum() / total


def np_run(rate_fn, weights, grad_steps, lrs, momentum, weight_decay, decays, adapts):
    """LARS-2017-style step with a layer-wise rate: v <- m v + lr rate (g + wd w); w <- w - v."""
    weights = [w.astype(np.float64).copy() for w in weights]
    velocities = [np.zeros_like(w) for w in weights]
    for grads, lr in zip(grad_steps, lrs):
        for i, (w, g) in enumerate(zip(weights, grads)):
            wd = weight_decay if decays[i] else 0.0
            d = g + wd * w
            rate = rate_fn(w, g, wd) if adapts[i] else 1.0
            velocities[i] = momentum * velocities[i] + lr * rate * d
            weights[i] = w - velocities[i]
    return weights


# ----------------------------------------------------------------- pure math
@pytest.mark.parametrize("shape", [(1,), (2,), (7,), (8,), (3, 4), (2, 3, 5), (5, 1, 3)])
def test_median_equals_numpy(shape):
    x = np.random.randn(*shape).astype(np.float32)
    np.testing.assert_allclose(curvature.median(x).numpy(), np.median(x), rtol=1e-6)


def test_median_compiles_under_xla_and_handles_ties():
    median = tf.function(curvature.median, jit_compile=True)
    for x in [np.random.randn(6, 5), np.array([2.0, 2.0, 1.0, 5.0]), np.zeros((3, 3))]:
        x = x.astype(np.float32)
        np.testing.assert_allclose(median(tf.constant(x)).numpy(), np.median(x), rtol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("beta", [0.0, 1e-2])
def test_median_curvature_rate_matches_numpy(shape, beta):
    w = np.random.randn(*shape).astype(np.float32) * 0.05
    g = np.random.randn(*shape).astype(np.float32) * 1e-3
    rate = curvature.median_curvature_rate(w, g, gamma=1e-3, weight_decay=beta)
    np.testing.assert_allclose(rate.numpy(), np_mclr_rate(w, g, 1e-3, beta), rtol=1e-5)


def test_median_curvature_rate_failure_cases_are_finite():
    w = np.random.randn(4, 4).astype(np.float32)
    g = np.random.randn(4, 4).astype(np.float32)
    zeros = np.zeros((4, 4), np.float32)
    # w -> 0 (eq. 18): zero weights, or more than half exactly zero -> rate 1.
    assert curvature.median_curvature_rate(zeros, g, gamma=0.1).numpy() == 1.0
    mostly_zero = w.copy()
    mostly_zero.ravel()[:9] = 0
    assert curvature.median_curvature_rate(mostly_zero, g, gamma=0.1).numpy() == 1.0
    # g -> 0 (eq. 19): rate 1 without weight decay, gamma / beta with it (eq. 22).
    assert curvature.median_curvature_rate(w, zeros, gamma=0.1).numpy() == 1.0
    np.testing.assert_allclose(
        curvature.median_curvature_rate(w, zeros, gamma=0.1, weight_decay=0.01).numpy(), 10.0, rtol=1e-6
    )
    # Tiny gradients are not a failure: the step rate * g is scale-free.
    for scale in [1e-30, 1e-6, 1e6]:
        step = curvature.median_curvature_rate(w, scale * g, gamma=0.1).numpy() * scale * g
        np.testing.assert_allclose(step, curvature.median_curvature_rate(w, g, gamma=0.1).numpy() * g, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("floor", [0.0, 1e-3, 0.5])
def test_percent_delta_rate_matches_numpy(shape, floor):
    w = np.random.randn(*shape).astype(np.float32)
    d = np.random.randn(*shape).astype(np.float32) * 1e-2
    rate = curvature.percent_delta_rate(w, d, gamma=1e-2, weight_floor=floor)
    np.testing.assert_allclose(rate.numpy(), np_percent_delta_rate(w, d, 1e-2, floor), rtol=1e-5)


def test_percent_delta_changes_weights_by_gamma_on_average():
    w = np.random.uniform(0.5, 2.0, size=(50,)).astype(np.float32) * np.sign(np.random.randn(50)).astype(np.float32)
    d = np.random.randn(50).astype(np.float32)
    rate = curvature.percent_delta_rate(w, d, gamma=0.03, weight_floor=0.0).numpy()
    np.testing.assert_allclose(np.mean(np.abs(rate * d / w)), 0.03, rtol=1e-5)


def test_percent_delta_rate_failure_cases_are_finite_and_scale_free():
    w = np.random.randn(6, 3).astype(np.float32)
    d = np.random.randn(6, 3).astype(np.float32)
    # Exactly-zero weights are left out of size(w) and of the sum (floor 0).
    with_zeros = w.copy()
    with_zeros[0] = 0
    rate = curvature.percent_delta_rate(with_zeros, d, gamma=0.1, weight_floor=0.0).numpy()
    np.testing.assert_allclose(rate, 0.1 * 15 / np.sum(np.abs(d[1:] / w[1:])), rtol=1e-5)
    # A single tiny weight cannot freeze the layer when floored.
    tiny = w.copy()
    tiny[0, 0] = 1e-30
    floored = curvature.percent_delta_rate(tiny, d, gamma=0.1, weight_floor=1e-3).numpy()
    assert floored > 0.1 * curvature.percent_delta_rate(w, d, gamma=0.1, weight_floor=1e-3).numpy()
    # All weights zero, or a zero direction: rate 1.
    zeros = np.zeros_like(w)
    assert curvature.percent_delta_rate(zeros, d, gamma=0.1).numpy() == 1.0
    assert curvature.percent_delta_rate(w, zeros, gamma=0.1).numpy() == 1.0
    # Scale: rate(c w, d) = c rate(w, d); rate(w, c d) = rate(w, d) / c.
    base = curvature.percent_delta_rate(w, d, gamma=0.1).numpy()
    for c in [1e-6, 1e6]:
        np.testing.assert_allclose(curvature.percent_delta_rate(c * w, d, gamma=0.1).numpy(), c * base, rtol=1e-5)
        np.testing.assert_allclose(curvature.percent_delta_rate(w, c * d, gamma=0.1).numpy(), base / c, rtol=1e-5)


# ---------------------------------------------------------------- optimizers
def _rate_fn(cls, gamma, floor):
    if cls is MCLR:
        return lambda w, g, wd: np_mclr_rate(w, g, gamma, wd)
    return lambda w, g, wd: np_percent_delta_rate(w, g + wd * w, gamma, floor)


@pytest.mark.parametrize("cls", [MCLR, PercentDelta])
def test_optimizer_steps_match_numpy(cls):
    shapes = [(3, 4), (4,), (2, 3, 2), (5,)]
    init = [np.random.randn(*s).astype(np.float32) * 0.1 for s in shapes]
    names = ["kernel", "bias", "conv", "gamma"]
    variables = [keras.Variable(w, name=n) for w, n in zip(init, names)]
    steps = 5
    grad_steps = [[np.random.randn(*s).astype(np.float32) * 1e-2 for s in shapes] for _ in range(steps)]
    schedule = keras.optimizers.schedules.ExponentialDecay(2.0, decay_steps=1, decay_rate=0.8)
    kwargs = dict(weight_floor=0.2) if cls is PercentDelta else {}
    optimizer = cls(
        learning_rate=schedule,
        gamma=0.01,
        momentum=0.9,
        weight_decay=1e-2,
        exclude_from_weight_decay=["bias"],
        exclude_from_layer_adaptation=["gamma"],
        **kwargs,
    )
    for grads in grad_steps:
        optimizer.apply_gradients(zip([tf.constant(g) for g in grads], variables))
    expected = np_run(
        _rate_fn(cls, 0.01, 0.2),
        init,
        grad_steps,
        lrs=[2.0 * 0.8**t for t in range(steps)],
        momentum=0.9,
        weight_decay=1e-2,
        decays=[True, False, True, True],
        adapts=[True, True, True, False],
    )
    for variable, reference in zip(variables, expected):
        np.testing.assert_allclose(variable.numpy(), reference, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("cls", [MCLR, PercentDelta])
def test_zero_weights_and_zero_gradients_stay_finite(cls):
    zero_weights = keras.Variable(np.zeros((3, 3), np.float32))
    zero_grads = keras.Variable(np.random.randn(4).astype(np.float32))
    start = zero_grads.numpy()
    optimizer = cls(learning_rate=0.5, gamma=0.01, momentum=0.0)
    gradient = np.random.randn(3, 3).astype(np.float32)
    optimizer.apply_gradients([(tf.constant(gradient), zero_weights), (tf.zeros(4), zero_grads)])
    # Rate 1 for an all-zero variable: a plain SGD step with the global rate.
    np.testing.assert_allclose(zero_weights.numpy(), -0.5 * gradient, rtol=1e-6)
    np.testing.assert_array_equal(zero_grads.numpy(), start)
    optimizer.apply_gradients([(tf.constant(gradient), zero_weights), (tf.zeros(4), zero_grads)])
    assert np.all(np.isfinite(zero_weights.numpy()))


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(gamma=0.0), "gamma"),
        (dict(gamma=-1.0), "gamma"),
        (dict(momentum=1.0), "momentum"),
        (dict(learning_rate=-0.1), "learning_rate"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(exclude_from_layer_adaptation="bias"), "exclude_from_layer_adaptation"),
        (dict(exclude_from_weight_decay=["("]), "exclude_from_weight_decay"),
    ],
)
@pytest.mark.parametrize("cls", [MCLR, PercentDelta])
def test_bad_arguments_raise(cls, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        cls(**kwargs)


def test_bad_weight_floor_raises():
    with pytest.raises(ValueError, match="weight_floor"):
        PercentDelta(weight_floor=-1e-3)


@pytest.mark.parametrize("cls", [MCLR, PercentDelta])
def test_config_round_trip(cls):
    schedule = keras.optimizers.schedules.PolynomialDecay(1.0, 100, end_learning_rate=0.01, power=2.0)
    optimizer = cls(
        learning_rate=schedule,
        gamma=0.02,
        momentum=0.8,
        weight_decay=5e-4,
        exclude_from_weight_decay=["bias"],
        exclude_from_layer_adaptation=["bias", "gamma"],
        global_clipnorm=1.0,
    )
    config = optimizer.get_config()
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is cls
    assert restored.get_config() == config
    for key in ["gamma", "momentum", "weight_decay", "exclude_from_layer_adaptation", "exclude_from_weight_decay"]:
        assert config[key] == restored.get_config()[key]
    if cls is PercentDelta:
        assert config["weight_floor"] == 1e-3


def _tiny_model():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])


def _regression_data(n=64):
    x = np.random.randn(n, 4).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5], [0.0]], np.float32) + 0.3).astype(np.float32)
    return x, y


@pytest.mark.parametrize("cls", [MCLR, PercentDelta])
def test_fit_under_xla_reduces_loss_and_saves(cls, tmp_path):
    x, y = _regression_data()
    model = _tiny_model()
    model.compile(
        optimizer=cls(learning_rate=0.1, gamma=0.2, momentum=0.9, exclude_from_layer_adaptation=["bias"]),
        loss="mse",
        jit_compile=True,
    )
    history = model.fit(x, y, batch_size=16, epochs=6, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.3 * losses[0]
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is cls
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _halving_problem(seed):
    """The tanh MLP regression of the issue: 8 inputs, 16 hidden units, 64 examples."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = (x @ rng.normal(size=(8, 1)) + 0.1 * rng.normal(size=(64, 1))).astype(np.float32)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)])
    return model, x, y


# Defaults, and the example of docs/optimizers.md.
TRAINING_CASES = [
    (MCLR, dict()),
    (PercentDelta, dict()),
    (MCLR, dict(learning_rate=0.1, gamma=0.2, momentum=0.9, weight_decay=1e-4, exclude_from_layer_adaptation=["bias"])),
    (PercentDelta, dict(learning_rate=0.1, gamma=0.2, weight_floor=1e-3)),
]


@pytest.mark.parametrize("cls, kwargs", TRAINING_CASES,
                         ids=lambda v: getattr(v, "__name__", None) or "-".join(map(str, v)) or "defaults")
@pytest.mark.parametrize("seed", [0, 1])
def test_defaults_and_the_documented_example_at_least_halve_the_training_loss(cls, kwargs, seed):
    """80 updates (batch 16, 20 epochs). With the old defaults (learning_rate=1, gamma=1e-3) the loss
    went up: zero-initialised biases fall back to rate 1, i.e. SGD at an effective rate of 10."""
    model, x, y = _halving_problem(seed)
    model.compile(optimizer=cls(**kwargs), loss="mse")
    before = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, batch_size=16, epochs=20, shuffle=False, verbose=0)
    assert model.optimizer.iterations.numpy() == 80
    after = model.evaluate(x, y, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert after <= 0.5 * before, (before, after)


def test_mirrored_fit_equals_single_device(mirrored):
    """Two replicas see the all-reduced gradient: same weights as one device."""
    x, y = _regression_data(32)
    results = []
    for strategy in [None, mirrored(2)]:
        keras.utils.set_random_seed(7)
        scope = strategy.scope() if strategy else contextlib.nullcontext()
        with scope:
            model = _tiny_model()
            model.compile(optimizer=MCLR(learning_rate=1.0, gamma=0.05, weight_decay=1e-3), loss="mse")
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        results.append([w.numpy() for w in model.weights])
    for single, replicated in zip(*results):
        np.testing.assert_allclose(replicated, single, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 1000, 1001])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_median_equals_numpy_for_even_and_odd_sizes_and_every_float_dtype(size, dtype):
    """``curvature.median`` is ``keras.ops.median`` in float32: the value NumPy gives for the
    float32 values, with the mean of the two middle ones for an even size (also under XLA)."""
    x = tf.cast(tf.constant(np.random.randn(size) * 3.0), dtype)
    expected = np.median(tf.cast(x, tf.float32).numpy())
    assert curvature.median(x).dtype == tf.float32
    np.testing.assert_allclose(curvature.median(x).numpy(), expected, rtol=1e-7)
    compiled = tf.function(curvature.median, jit_compile=True)
    np.testing.assert_allclose(compiled(x).numpy(), expected, rtol=1e-7)
