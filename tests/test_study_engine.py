"""The study's compiled training engine against a NumPy reference.

Softmax regression trained by the engine (in-graph minibatches, a while loop of
steps, the warm-up + cosine schedule with its peak and length in variables) must
follow momentum SGD written out in NumPy on the same minibatches, with XLA and
without. VR's k gradient samples come from gradient accumulation on one device:
with ``gamma=1`` VR-SGD must equal SGD fed the whole batch at once. The noise
probe's squared gradient norms equal NumPy's on the same micro-batches.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_largebatch.study import engine

NUM_TRAIN, DIM, CLASSES = 96, 5, 3


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(NUM_TRAIN, DIM)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=NUM_TRAIN).astype(np.int32)
    return x, y


def softmax_regression():
    return keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(CLASSES, name="logits")])


def reference_schedule(step, peak, total_steps, warmup_fraction):
    """Linear warm-up from 0 to ``peak``, then cosine decay to 0 (written from the formula)."""
    warmup = int(round(warmup_fraction * total_steps))
    decay = max(total_steps - warmup, 1)
    if step < warmup:
        return peak * step / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(step - warmup, decay) / decay))


def minibatch_indices(batch_size, seed, step):
    # The engine's documented sampling: i.i.d. with replacement, stateless in (seed, step).
    return tf.random.stateless_uniform([batch_size], seed=[seed, step], maxval=NUM_TRAIN, dtype=tf.int32).numpy()


def reference_momentum_sgd(weights, x, y, batch_size, steps, seed, peak, total_steps, warmup_fraction, momentum):
    kernel, bias = (w.astype(np.float64) for w in weights)
    velocity = [np.zeros_like(kernel), np.zeros_like(bias)]
    losses = []
    for step in range(steps):
        idx = minibatch_indices(batch_size, seed, step)
        xb, yb = x[idx].astype(np.float64), y[idx]
        logits = xb @ kernel + bias
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        losses.append(-np.mean(np.log(p[np.arange(batch_size), yb])))
        delta = p.copy()
        delta[np.arange(batch_size), yb] -= 1.0
        grads = [xb.T @ delta / batch_size, delta.mean(axis=0)]
        lr = reference_schedule(step, peak, total_steps, warmup_fraction)
        for i, (param, grad) in enumerate(zip((kernel, bias), grads)):
            velocity[i] = momentum * velocity[i] - lr * grad
            param += velocity[i]
    return [kernel, bias], float(np.mean(losses))


@pytest.mark.parametrize("jit_compile", [True, False])
def test_engine_follows_numpy_momentum_sgd_with_its_schedule(jit_compile):
    x, y = data()
    total_steps, batch_size, seed, peak = 12, 16, 7, 0.3
    trainer = engine.CompiledTrainer(
        softmax_regression, lambda lr, accumulation: keras.optimizers.SGD(lr, momentum=0.9), (x, y),
        {"validation": (x[:40], y[:40]), "test": (x, y)}, batch_size=batch_size, warmup_fraction=0.25,
        jit_compile=jit_compile,
    )
    initial = [np.random.default_rng(1).normal(size=w.shape).astype(np.float32) * 0.3
               for w in trainer.model.get_weights()]
    trainer.reset(initial, peak, total_steps)
    first = trainer.train_steps(0, 5, seed)
    second = trainer.train_steps(5, 7, seed)
    expected, _ = reference_momentum_sgd(initial, x, y, batch_size, total_steps, seed, peak, total_steps, 0.25, 0.9)
    for got, want in zip(trainer.model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    _, first_losses = reference_momentum_sgd(initial, x, y, batch_size, 5, seed, peak, total_steps, 0.25, 0.9)
    assert first == pytest.approx(first_losses, rel=1e-5)
    assert math.isfinite(second)
    for step in (0, 2, 3, 7, 12):
        assert trainer.learning_rate(step) == pytest.approx(reference_schedule(step, peak, total_steps, 0.25),
                                                            rel=1e-6, abs=1e-9)
    # Test-set evaluation: mean cross-entropy and accuracy of the final weights, by hand.
    kernel, bias = expected
    logits = x @ kernel + bias
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    loss, accuracy = trainer.evaluate("test")
    assert loss == pytest.approx(-np.mean(log_p[np.arange(NUM_TRAIN), y]), rel=1e-5)
    assert accuracy == pytest.approx(np.mean(logits.argmax(axis=1) == y))
    loss, accuracy = trainer.evaluate("validation")
    assert loss == pytest.approx(-np.mean(log_p[np.arange(40), y[:40]]), rel=1e-5)
    assert accuracy == pytest.approx(np.mean(logits[:40].argmax(axis=1) == y[:40]))


def test_a_new_peak_a_new_length_and_a_reset_reuse_the_compiled_function():
    x, y = data()
    trainer = engine.CompiledTrainer(
        softmax_regression, lambda lr, accumulation: keras.optimizers.Adam(lr), (x, y), {"test": (x, y)},
        batch_size=8, jit_compile=False,
    )
    initial = trainer.model.get_weights()
    results = []
    for peak, length in ((0.01, 6), (0.1, 6), (0.01, 6), (0.01, 20)):
        trainer.reset(initial, peak, length)
        trainer.train_steps(0, 6, 0)
        results.append(trainer.model.get_weights())
        for step in (0, 1, 3, 6):
            assert trainer.learning_rate(step) == pytest.approx(reference_schedule(step, peak, length, 0.1),
                                                                abs=1e-7)
    assert trainer._train_chunk.experimental_get_tracing_count() == 1
    assert not np.allclose(results[0][0], results[3][0])  # another length, another schedule
    # The reset restores the optimizer's fresh state (Adam moments, iterations): the
    # third run repeats the first exactly, the second differs.
    for a, b in zip(results[0], results[2]):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(results[0][0], results[1][0])


def test_vr_samples_from_gradient_accumulation_equal_the_whole_batch_at_gamma_1():
    from tf_largebatch.optimizers import VRSGD

    x, y = data(3)
    common = dict(train=(x, y), splits={"test": (x, y)}, batch_size=24, warmup_fraction=0.0, jit_compile=False)
    vr = engine.CompiledTrainer(
        softmax_regression, lambda lr, accumulation: VRSGD(lr, gamma=1.0, gradient_accumulation_steps=accumulation),
        gradient_samples=4, **common,
    )
    plain = engine.CompiledTrainer(softmax_regression, lambda lr, accumulation: keras.optimizers.SGD(lr), **common)
    initial = vr.model.get_weights()
    for trainer in (vr, plain):
        trainer.reset(initial, 0.5, 5)
        trainer.train_steps(0, 5, 11)
    assert vr.optimizer.iterations.numpy() == 5 and vr.optimizer.num_gradient_samples == 4
    for a, b in zip(vr.model.get_weights(), plain.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert vr.evaluate("test") == pytest.approx(plain.evaluate("test"), rel=1e-5)


def test_batch_not_divisible_into_samples_is_a_clear_error():
    x, y = data()
    with pytest.raises(ValueError, match="not divisible into 4 gradient samples"):
        engine.CompiledTrainer(softmax_regression, lambda lr, a: keras.optimizers.SGD(lr), (x, y), {"test": (x, y)},
                               batch_size=10, gradient_samples=4)


def test_run_schedule_follows_the_formula_and_round_trips_through_its_config():
    schedule = engine.RunSchedule(peak=0.5, length=100, warmup_fraction=0.1)
    restored = engine.RunSchedule.from_config(schedule.get_config())
    for step in (0, 5, 10, 60, 100, 130):
        expected = reference_schedule(step, 0.5, 100, 0.1)
        assert float(schedule(step)) == pytest.approx(expected, abs=1e-7)
        assert float(restored(step)) == pytest.approx(expected, abs=1e-7)
    schedule.length.assign(7.0)
    assert float(schedule(3)) == pytest.approx(reference_schedule(3, 0.5, 7, 0.1), abs=1e-7)


def numpy_gradient(kernel, bias, xb, yb):
    logits = xb @ kernel + bias
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(yb)), yb] -= 1.0
    return np.concatenate([(xb.T @ p / len(yb)).ravel(), p.mean(axis=0)])


def test_gradient_noise_probes_equal_numpy_on_the_same_micro_batches():
    x, y = data(5)
    trainer = engine.CompiledTrainer(softmax_regression, lambda lr, a: keras.optimizers.SGD(lr), (x, y),
                                     {"test": (x, y)}, batch_size=8, jit_compile=False)
    weights = [w.astype(np.float64) for w in trainer.model.get_weights()]
    before = [w.copy() for w in trainer.model.get_weights()]
    seed, step, probes, samples, micro = 13, 7, 3, 4, 6
    big, small = trainer.gradient_noise(seed, step, probes, samples, micro)
    for p in range(probes):
        grads = []
        for j in range(samples):
            # The engine's documented draw: stateless in (seed, step * 1024 + p * 64 + j).
            idx = tf.random.stateless_uniform([micro], seed=[seed, step * 1024 + p * 64 + j], maxval=NUM_TRAIN,
                                              dtype=tf.int32).numpy()
            grads.append(numpy_gradient(*weights, x[idx].astype(np.float64), y[idx]))
        grads = np.array(grads)
        assert big[p] == pytest.approx(np.sum(grads.mean(axis=0) ** 2), rel=1e-4)
        assert small[p] == pytest.approx(np.mean(np.sum(grads ** 2, axis=1)), rel=1e-4)
    for a, b in zip(before, trainer.model.get_weights()):  # a probe makes no update
        np.testing.assert_array_equal(a, b)
