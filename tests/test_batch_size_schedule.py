"""Batch-size schedules: one compiled model, optimizer state kept across phases."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from tf_largebatch import schedules
from tf_largebatch.batch_size_schedule import (
    Phase,
    fit_with_batch_size_schedule,
    increase_batch_size_instead_of_decay,
)


class SeenBatchSize(keras.metrics.Metric):
    """Largest batch the model saw during the epoch (the metric resets every epoch)."""

    def __init__(self, name="seen_batch_size", **kwargs):
        super().__init__(name=name, **kwargs)
        self.size = self.add_variable(shape=(), initializer="zeros", name="size")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.size.assign(ops.maximum(self.size, ops.cast(ops.shape(y_true)[0], "float32")))

    def result(self):
        return ops.add(self.size, 0.0)  # a value, not the variable (read after validation)

    def reset_state(self):
        self.size.assign(0.0)


def linear_model(optimizer, metrics=()):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])
    model.compile(optimizer=optimizer, loss="mse", metrics=list(metrics))
    return model


def np_momentum_sgd(x, y, phases, momentum, lr0):
    """Keras SGD (m <- momentum*m - lr*g; w <- w + m) on mse, one state through all phases."""
    w = np.zeros((3, 1))
    m = np.zeros_like(w)
    lr = lr0
    steps = 0
    for epochs, batch_size, phase_lr in phases:
        lr = phase_lr if phase_lr is not None else lr
        for _ in range(epochs):
            for start in range(0, len(x), batch_size):
                xb, yb = x[start:start + batch_size], y[start:start + batch_size]
                grad = 2.0 / len(xb) * xb.T @ (xb @ w - yb)
                m = momentum * m - lr * grad
                w = w + m
                steps += 1
    return w, steps


PHASES = [(1, 4, 0.05), (2, 8, 0.1), (1, 20, None)]


def data(n=20):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.1 * rng.normal(size=(n, 1))).astype("float32")
    return x, y


def test_phases_continue_optimizer_state_and_apply_learning_rates():
    x, y = data()
    optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    model = linear_model(optimizer, [SeenBatchSize()])
    model.fit(x[:4], y[:4], batch_size=4, epochs=1, verbose=0)  # build optimizer state first
    model.get_layer(index=0).kernel.assign(np.zeros((3, 1), "float32"))
    optimizer.momentums[0].assign(np.zeros((3, 1), "float32"))
    optimizer.iterations.assign(0)
    slots = [id(v) for v in optimizer.variables]

    history = fit_with_batch_size_schedule(model, (x, y), [Phase(*p) for p in PHASES], verbose=0)

    expected_w, expected_steps = np_momentum_sgd(x.astype(np.float64), y.astype(np.float64), PHASES, 0.9, 0.01)
    # one trajectory: resetting the momentum or ignoring a phase's lr would change it
    np.testing.assert_allclose(model.get_layer(index=0).kernel.numpy(), expected_w, rtol=1e-4, atol=1e-5)
    assert int(optimizer.iterations) == expected_steps == 5 + 2 * 3 + 1
    assert [id(v) for v in optimizer.variables] == slots
    assert history.epoch == [0, 1, 2, 3]
    assert history.history["seen_batch_size"] == [4, 8, 8, 20]
    assert history.history["batch_size"] == [4, 8, 8, 20]
    np.testing.assert_allclose(history.history["learning_rate"], [0.05, 0.1, 0.1, 0.1])
    assert len(history.history["loss"]) == 4
    assert model.history is history


def test_reset_momentum_would_differ():
    """The reference distinguishes carried-over from fresh optimizer state."""
    x, y = data()
    x, y = x.astype(np.float64), y.astype(np.float64)
    carried, _ = np_momentum_sgd(x, y, PHASES, 0.9, 0.01)
    w = np.zeros((3, 1))
    for phase in PHASES:  # fresh momentum per phase, starting from the previous weights
        step, _ = np_momentum_sgd(x, y - x @ w, [phase], 0.9, 0.01)
        w = w + step
    assert np.abs(carried - w).max() > 1e-3


def test_schedule_keeps_counting_updates_and_phases_from_dicts():
    x, y = data(24)
    schedule = schedules.WarmupPolynomialDecay(0.1, 4, 20)
    model = linear_model(keras.optimizers.SGD(learning_rate=schedule))
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    history = fit_with_batch_size_schedule(
        model, dataset, [dict(epochs=1, batch_size=6), (2, 12)], initial_epoch=3, verbose=0,
    )
    assert int(model.optimizer.iterations) == 4 + 2 * 2
    assert history.epoch == [3, 4, 5]
    assert float(model.optimizer.learning_rate) == pytest.approx(float(schedule(8)))
    with pytest.raises(ValueError, match="schedule"):
        fit_with_batch_size_schedule(model, dataset, [(1, 6, 0.5)], verbose=0)


def test_drop_remainder_shuffle_and_validation():
    x, y = data(20)
    model = linear_model(keras.optimizers.SGD(0.01), [SeenBatchSize()])
    val = tf.data.Dataset.from_tensor_slices((x[:5], y[:5]))
    history = fit_with_batch_size_schedule(
        model, (x, y), [(1, 8), (1, 16)], drop_remainder=True, shuffle_buffer_size=20,
        validation_data=val, verbose=0,
    )
    assert int(model.optimizer.iterations) == 2 + 1
    assert history.history["seen_batch_size"] == [8, 16]
    assert len(history.history["val_loss"]) == 2


@pytest.mark.parametrize("phases,name", [
    ([], "phases"),
    ([(0, 8)], "epochs"),
    ([(1, 0)], "batch_size"),
    ([(1, 8, -0.1)], "learning_rate"),
    (["bad"], "phase"),
])
def test_bad_phases(phases, name):
    x, y = data(8)
    model = linear_model(keras.optimizers.SGD(0.01))
    with pytest.raises(ValueError, match=name):
        fit_with_batch_size_schedule(model, (x, y), phases, verbose=0)


def test_bad_model_data_and_reserved_arguments():
    x, y = data(8)
    uncompiled = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="compiled"):
        fit_with_batch_size_schedule(uncompiled, (x, y), [(1, 4)])
    model = linear_model(keras.optimizers.SGD(0.01))
    with pytest.raises(ValueError, match="data"):
        fit_with_batch_size_schedule(model, x, [(1, 4)])
    with pytest.raises(ValueError, match="batch_size"):
        fit_with_batch_size_schedule(model, (x, y), [(1, 4)], batch_size=3)


def test_phases_under_mirrored_strategy_match_single_device_reference(mirrored):
    """Global batch sizes split over 2 replicas; the mean gradient, lr and momentum are unchanged."""
    x, y = data()
    phases = [(1, 4, 0.05), (1, 10, 0.1)]
    with mirrored(2).scope():
        optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
        model = linear_model(optimizer)
    history = fit_with_batch_size_schedule(model, (x, y), phases, verbose=0)
    expected_w, expected_steps = np_momentum_sgd(x.astype(np.float64), y.astype(np.float64), phases, 0.9, 0.01)
    np.testing.assert_allclose(model.get_layer(index=0).kernel.numpy(), expected_w, rtol=1e-4, atol=1e-5)
    assert int(optimizer.iterations.numpy()) == expected_steps == 5 + 2
    assert history.history["batch_size"] == [4, 10]


def test_increase_batch_size_instead_of_decay_keeps_noise_scale():
    phases = increase_batch_size_instead_of_decay(
        total_epochs=90, boundaries=[30, 60, 80], batch_size=256, learning_rate=0.1, factor=5, max_batch_size=8192,
    )
    assert [p.epochs for p in phases] == [30, 30, 20, 10]
    assert [p.batch_size for p in phases] == [256, 1280, 6400, 8192]
    np.testing.assert_allclose([p.learning_rate for p in phases], [0.1, 0.1, 0.1, 0.1 / 125 * 32])
    # noise scale lr/B equals the step schedule's (0.1 / 5**i) / 256 in every phase
    for i, p in enumerate(phases):
        assert p.learning_rate / p.batch_size == pytest.approx(0.1 / 5**i / 256)
    uncapped = increase_batch_size_instead_of_decay(10, [5], 32, 0.4, factor=2)
    assert [(p.batch_size, p.learning_rate) for p in uncapped] == [(32, 0.4), (64, 0.4)]
    for bad in ([0, 5], [5, 5], [12], [6, 3]):
        with pytest.raises(ValueError, match="boundaries"):
            increase_batch_size_instead_of_decay(10, bad, 32, 0.1)
    with pytest.raises(ValueError, match="max_batch_size"):
        increase_batch_size_instead_of_decay(10, [5], 32, 0.1, max_batch_size=16)
    with pytest.raises(ValueError, match="factor"):
        increase_batch_size_instead_of_decay(10, [5], 32, 0.1, factor=1)


# ----------------------------------------------------------- adaptive batch size
def adascale_regression(accumulation=2, lr=0.05):
    from tf_largebatch.optimizers import AdaScale

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    model.compile(optimizer=AdaScale(keras.optimizers.SGD(lr, momentum=0.9), gradient_accumulation_steps=accumulation,
                                     smoothing=0.9), loss="mse")
    return model


def noisy_data(n=96, noise=2.0):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + noise * rng.normal(size=(n, 1))).astype("float32")
    return x, y


def test_adaptive_batch_size_follows_the_goodput_model(tmp_path):
    from tf_largebatch import goodput
    from tf_largebatch.batch_size_schedule import fit_with_adaptive_batch_size

    alpha, beta = 0.05, 0.002  # a known cost model: decisions depend only on the measured noise scale
    model = adascale_regression()
    history = fit_with_adaptive_batch_size(
        model, noisy_data(), base_batch_size=4, scale_invariant_steps=60, min_batch_size=4, max_batch_size=40,
        updates_per_decision=5, step_time=lambda m: alpha + beta * m, log_dir=str(tmp_path), verbose=0,
    )
    decisions = history.decisions
    assert len(decisions) >= 3
    assert decisions[0].probe and decisions[0].batch_size == 4 and decisions[0].next_batch_size == 8
    candidates = goodput.candidate_batch_sizes(4, 40, 2)
    for previous, decision in zip(decisions, decisions[1:]):
        assert decision.batch_size == previous.next_batch_size
    for decision in decisions[1:]:
        assert not decision.probe
        assert decision.next_batch_size == goodput.best_batch_size(candidates, decision.noise_scale, 4, alpha, beta)
        assert decision.predicted_efficiency == pytest.approx(
            goodput.statistical_efficiency(decision.next_batch_size, decision.noise_scale, 4))
    assert all(d.batch_size in candidates for d in decisions)
    optimizer = model.optimizer
    assert optimizer.scale_invariant_steps >= 60
    assert decisions[-1].scale_invariant_steps == optimizer.scale_invariant_steps
    assert optimizer.current_scale == decisions[-1].batch_size / 4
    for key in ("loss", "batch_size", "noise_scale", "gain", "predicted_efficiency", "next_batch_size"):
        assert len(history.history[key]) == len(decisions), key
    tags = set()
    for path in (tmp_path / "adaptive_batch_size").iterdir():
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    assert {"adaptive_batch_size/batch_size", "adaptive_batch_size/noise_scale", "adaptive_batch_size/gain",
            "adaptive_batch_size/predicted_efficiency"} <= tags


def test_adaptive_batch_size_with_measured_step_times():
    from tf_largebatch.batch_size_schedule import fit_with_adaptive_batch_size

    model = adascale_regression(accumulation=2)
    history = fit_with_adaptive_batch_size(model, noisy_data(), base_batch_size=2, scale_invariant_steps=24,
                                           min_batch_size=2, max_batch_size=16, updates_per_decision=4)
    assert all(d.step_time > 0 and d.batch_size % 2 == 0 and 2 <= d.next_batch_size <= 16
               for d in history.decisions)
    assert model.optimizer.scale_invariant_steps >= 24


def test_adaptive_batch_size_argument_errors():
    from tf_largebatch.batch_size_schedule import fit_with_adaptive_batch_size

    x, y = data(8)
    arguments = dict(base_batch_size=4, scale_invariant_steps=4, min_batch_size=4, max_batch_size=8)
    with pytest.raises(ValueError, match="AdaScale"):
        fit_with_adaptive_batch_size(linear_model(keras.optimizers.SGD(0.1)), (x, y), **arguments)
    model = adascale_regression()
    with pytest.raises(ValueError, match="min_batch_size"):
        fit_with_adaptive_batch_size(model, (x, y), **{**arguments, "min_batch_size": 2})
    with pytest.raises(ValueError, match="initial_batch_size"):
        fit_with_adaptive_batch_size(model, (x, y), initial_batch_size=5, **arguments)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        fit_with_adaptive_batch_size(model, (x, y), steps_per_epoch=3, **arguments)


def test_phases_set_the_base_learning_rate_of_adascale():
    x, y = noisy_data(32)
    model = adascale_regression(accumulation=2)
    fit_with_batch_size_schedule(model, (x, y), [(1, 8, 0.02), (1, 16, 0.01)], verbose=0)
    optimizer = model.optimizer
    assert float(optimizer.learning_rate) == pytest.approx(0.01)  # eta(tau), a constant here
    assert optimizer.scaled_learning_rate == pytest.approx(0.01 * optimizer.gain)


def test_adaptive_batch_size_under_mirrored_strategy_uses_multiples_of_the_samples(mirrored):
    from tf_largebatch.batch_size_schedule import fit_with_adaptive_batch_size
    from tf_largebatch.optimizers import AdaScale

    with mirrored(2).scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, kernel_initializer="zeros")])
        model.compile(optimizer=AdaScale(keras.optimizers.SGD(0.05), gradient_accumulation_steps=2, smoothing=0.9),
                      loss="mse")
    history = fit_with_adaptive_batch_size(model, noisy_data(), base_batch_size=4, scale_invariant_steps=12,
                                           min_batch_size=6, max_batch_size=24, updates_per_decision=3,
                                           step_time=lambda m: 0.1 + 0.001 * m)
    sizes = [d.batch_size for d in history.decisions] + [history.decisions[-1].next_batch_size]
    assert all(size % 4 == 0 and 8 <= size <= 24 for size in sizes), sizes  # k = 2 replicas x 2 micro-batches
    assert model.optimizer.current_scale == history.decisions[-1].batch_size / 4
    assert model.optimizer.scale_invariant_steps >= 12
