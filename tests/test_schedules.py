"""Warm-up schedules against NumPy formulas written from their definitions."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_largebatch import schedules
from tf_largebatch.optimizers import SNGM


def np_warmup_poly(t, peak, warmup, decay, end, power, initial):
    if t < warmup:
        return initial + (peak - initial) * t / warmup
    s = min(t - warmup, decay)
    return (peak - end) * (1.0 - s / decay) ** power + end


def np_warmup_cosine(t, peak, warmup, decay, alpha, initial):
    if t < warmup:
        return initial + (peak - initial) * t / warmup
    s = min(t - warmup, decay)
    return peak * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * s / decay)) + alpha)


def np_warmup_step(t, peak, warmup, boundaries, rate, initial):
    if t < warmup:
        return initial + (peak - initial) * t / warmup
    return peak * rate ** sum(t >= b for b in boundaries)


def values(schedule, steps):
    return np.array([float(schedule(tf.constant(s, tf.int64))) for s in steps])


WARMUP, DECAY = 10, 40
STEPS = [0, 1, 5, 9, 10, 11, 20, 33, 49, 50, 51, 100, 10_000]


@pytest.mark.parametrize("power,end,initial", [(1.0, 0.0, 0.0), (2.0, 1e-3, 0.0), (0.5, 0.01, 0.02)])
def test_warmup_polynomial_decay_matches_formula(power, end, initial):
    schedule = schedules.WarmupPolynomialDecay(0.8, WARMUP, DECAY, end, power, initial)
    expected = [np_warmup_poly(t, 0.8, WARMUP, DECAY, end, power, initial) for t in STEPS]
    np.testing.assert_allclose(values(schedule, STEPS), expected, rtol=1e-6, atol=1e-7)
    assert float(schedule(0)) == pytest.approx(initial)
    assert float(schedule(WARMUP)) == pytest.approx(0.8)
    assert float(schedule(WARMUP + DECAY)) == pytest.approx(end)
    assert float(schedule(WARMUP + DECAY + 7)) == pytest.approx(end)


@pytest.mark.parametrize("alpha,initial", [(0.0, 0.0), (0.1, 0.05)])
def test_warmup_cosine_decay_matches_formula(alpha, initial):
    schedule = schedules.WarmupCosineDecay(0.8, WARMUP, DECAY, alpha=alpha, initial_learning_rate=initial)
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    expected = [np_warmup_cosine(t, 0.8, WARMUP, DECAY, alpha, initial) for t in STEPS]
    np.testing.assert_allclose(values(schedule, STEPS), expected, rtol=1e-5, atol=1e-7)
    assert float(schedule(WARMUP + DECAY + 3)) == pytest.approx(0.8 * alpha, abs=1e-7)


def test_warmup_step_decay_matches_formula():
    boundaries = [20, 35, 45]
    schedule = schedules.WarmupStepDecay(0.8, WARMUP, boundaries, decay_rate=0.1, initial_learning_rate=0.0)
    steps = STEPS + [19, 34, 35, 44, 45]
    expected = [np_warmup_step(t, 0.8, WARMUP, boundaries, 0.1, 0.0) for t in steps]
    np.testing.assert_allclose(values(schedule, steps), expected, rtol=1e-6, atol=1e-9)
    assert float(schedule(19)) == pytest.approx(0.8)
    assert float(schedule(20)) == pytest.approx(0.08)


@pytest.mark.parametrize("make", [
    lambda: schedules.WarmupPolynomialDecay(1.0, 0, 10, end_learning_rate=0.1, power=2.0),
    lambda: schedules.WarmupCosineDecay(1.0, 0, 10),
    lambda: schedules.WarmupStepDecay(1.0, 0, [5]),
])
def test_zero_warmup_starts_at_peak(make):
    assert float(make()(0)) == pytest.approx(1.0)


ALL = [
    schedules.WarmupPolynomialDecay(0.5, 3, 7, end_learning_rate=0.01, power=2.0, initial_learning_rate=0.1),
    schedules.WarmupCosineDecay(0.5, 3, 7, alpha=0.2, initial_learning_rate=0.1),
    schedules.WarmupStepDecay(0.5, 3, [5, 8], decay_rate=0.5, initial_learning_rate=0.1),
]


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: type(s).__name__)
def test_config_round_trip(schedule):
    config = keras.optimizers.schedules.serialize(schedule)
    restored = keras.optimizers.schedules.deserialize(config)
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    steps = list(range(14))
    np.testing.assert_allclose(values(restored, steps), values(schedule, steps))
    # and inside an optimizer's config
    optimizer = keras.optimizers.deserialize(keras.optimizers.serialize(SNGM(learning_rate=schedule)))
    assert optimizer._learning_rate.get_config() == schedule.get_config()


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: type(s).__name__)
def test_xla_compiled_matches_eager(schedule):
    compiled = tf.function(lambda step: schedule(step), jit_compile=True)
    steps = list(range(14))
    eager = values(schedule, steps)
    xla = [float(compiled(tf.constant(s, tf.int64))) for s in steps]
    np.testing.assert_allclose(xla, eager, rtol=1e-6)


def test_schedule_counts_real_updates_under_gradient_accumulation():
    """SNGM with A=2 evaluates the schedule at the number of real updates."""
    schedule = schedules.WarmupPolynomialDecay(1.0, 3, 5, power=1.0)
    optimizer = SNGM(learning_rate=schedule, momentum=0.0, gradient_accumulation_steps=2)
    variable = keras.Variable(np.ones(3, np.float32))
    optimizer.build([variable])
    for micro_step in range(12):
        assert float(optimizer.learning_rate) == pytest.approx(float(schedule(micro_step // 2)))
        before = variable.numpy().copy()
        optimizer.apply([tf.ones(3)], [variable])
        if micro_step % 2 == 1:
            # the real update uses lr = schedule(update index); g/||g|| = 1/sqrt(3)
            step = float(schedule(micro_step // 2))
            np.testing.assert_allclose(before - variable.numpy(), step / np.sqrt(3.0), rtol=1e-5, atol=1e-7)
        else:
            np.testing.assert_array_equal(before, variable.numpy())
    assert int(optimizer.iterations) == 6


def test_plain_keras_optimizer_evaluates_schedules_at_micro_steps():
    """Pins Keras's own behaviour the module docstring warns about."""
    schedule = schedules.WarmupPolynomialDecay(1.0, 3, 5)
    optimizer = keras.optimizers.SGD(learning_rate=schedule, gradient_accumulation_steps=2)
    variable = keras.Variable(np.ones(3, np.float32))
    optimizer.build([variable])
    for micro_step in range(6):
        assert float(optimizer.learning_rate) == pytest.approx(float(schedule(micro_step)))
        optimizer.apply([tf.ones(3)], [variable])


def test_used_by_model_fit():
    schedule = schedules.WarmupCosineDecay(0.1, 2, 4)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=schedule), loss="mse")
    x = np.random.normal(size=(20, 3)).astype("float32")
    model.fit(x, x[:, :1], batch_size=4, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 5
    assert float(model.optimizer.learning_rate) == pytest.approx(float(schedule(5)))


@pytest.mark.parametrize("kwargs,name", [
    (dict(peak_learning_rate=0.0, warmup_steps=1, decay_steps=1), "peak_learning_rate"),
    (dict(peak_learning_rate=1.0, warmup_steps=-1, decay_steps=1), "warmup_steps"),
    (dict(peak_learning_rate=1.0, warmup_steps=1, decay_steps=0), "decay_steps"),
    (dict(peak_learning_rate=1.0, warmup_steps=1, decay_steps=2, power=0.0), "power"),
    (dict(peak_learning_rate=1.0, warmup_steps=1, decay_steps=2, end_learning_rate=-1.0), "end_learning_rate"),
])
def test_polynomial_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        schedules.WarmupPolynomialDecay(**kwargs)


def test_cosine_and_step_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        schedules.WarmupCosineDecay(1.0, 2, 5, alpha=1.5)
    with pytest.raises(ValueError, match="decay_steps"):
        schedules.WarmupCosineDecay(1.0, 2, 0)
    for bad in ([], [5, 5], [8, 6], [1], "abc", None):
        with pytest.raises(ValueError, match="boundaries"):
            schedules.WarmupStepDecay(1.0, 2, bad)
    with pytest.raises(ValueError, match="decay_rate"):
        schedules.WarmupStepDecay(1.0, 2, [4], decay_rate=0.0)
