"""tf_largebatch.optimizers.AdaScale: Algorithm 1 around Keras SGD, replicas, resume, skipped updates, errors."""

import numpy as np
import pytest
import keras
import tensorflow as tf

import tf_largebatch as tlb
from reference_adascale import adascale_sgd
from tf_largebatch.optimizers import AdaScale, StopAtScaleInvariantSteps

DIM = 5


def poly_schedule():
    return keras.optimizers.schedules.PolynomialDecay(0.2, decay_steps=12, end_learning_rate=0.02)


def poly_numpy(tau):
    return (0.2 - 0.02) * (1.0 - min(tau, 12.0) / 12.0) + 0.02


def problem(k, seed=0, noise=1.0):
    """Sample i at update t: A_i w - b_i (a noisy quadratic), as float64 matrices."""
    rng = np.random.default_rng(seed)
    a = [np.eye(DIM) + 0.3 * rng.normal(size=(DIM, DIM)) for _ in range(k)]
    a = [m @ m.T / DIM + 0.5 * np.eye(DIM) for m in a]
    b = rng.normal(size=(40, k, DIM)) * noise + np.arange(1, DIM + 1)

    def samples(w, step):
        return [a[i] @ w - b[step, i] for i in range(k)]

    return samples


def run_adascale(optimizer, samples_fn, steps, w0):
    """Feeds k micro-steps per update through optimizer.apply; returns w, and per update
    (gain, tau before, lr the inner optimizer used)."""
    w = keras.Variable(np.asarray(w0, np.float32), name="w")
    optimizer.build([w])
    trace = []
    for step in range(steps):
        tau = optimizer.scale_invariant_steps
        for g in samples_fn(w.numpy().astype(np.float64), step):
            optimizer.apply([tf.constant(g, tf.float32)], [w])
        trace.append((optimizer.gain, tau, float(optimizer.inner_optimizer.learning_rate)))
    return w.numpy(), trace


@pytest.mark.parametrize("momentum,nesterov,smoothing,scale", [
    (0.0, False, 0.5, None), (0.9, False, None, None), (0.9, True, 0.8, 8.0),
])
def test_matches_algorithm_1_with_a_schedule_on_tau(momentum, nesterov, smoothing, scale):
    k, steps = 4, 8
    samples_fn = problem(k)
    w0 = np.zeros(DIM)
    optimizer = AdaScale(keras.optimizers.SGD(poly_schedule(), momentum=momentum, nesterov=nesterov),
                         gradient_accumulation_steps=k, smoothing=smoothing, scale=scale)
    w, trace = run_adascale(optimizer, samples_fn, steps, w0)
    if nesterov:  # the reference has heavy-ball momentum only: compare the statistics, not w
        _, reference = adascale_sgd(w0, samples_fn, 0, poly_numpy)
    else:
        expected_w, reference = adascale_sgd(w0, samples_fn, steps, poly_numpy, momentum=momentum, scale=scale,
                                             smoothing=smoothing)
        np.testing.assert_allclose(w, expected_w, rtol=2e-4, atol=2e-5)
        gains = [g for g, _, _ in trace]
        np.testing.assert_allclose(gains, reference.gains, rtol=1e-4)
        np.testing.assert_allclose([t for _, t, _ in trace], reference.taus_before, rtol=1e-4, atol=1e-5)
        # The learning rate the inner optimizer saw: r_t * eta(tau_t).
        np.testing.assert_allclose([lr for _, _, lr in trace],
                                   [g * poly_numpy(t) for g, t in zip(reference.gains, reference.taus_before)],
                                   rtol=1e-4)
        np.testing.assert_allclose(optimizer.scale_invariant_steps, reference.tau, rtol=1e-4)
    assert all(1.0 <= g <= (scale or k) for g, _, _ in trace)
    assert optimizer.inner_optimizer.iterations.numpy() == steps


def test_identical_samples_reduce_to_the_inner_optimizer():
    rng = np.random.default_rng(3)
    grads = [rng.normal(size=DIM).astype(np.float32) for _ in range(5)]
    w_ada = keras.Variable(np.ones(DIM, np.float32))
    w_sgd = keras.Variable(np.ones(DIM, np.float32))
    # Two micro-batches: (g + g) / 2 is exactly g in floating point.
    adascale = AdaScale(keras.optimizers.SGD(0.1, momentum=0.9), gradient_accumulation_steps=2)
    sgd = keras.optimizers.SGD(0.1, momentum=0.9)
    for g in grads:
        for _ in range(2):
            adascale.apply([tf.constant(g)], [w_ada])
        sgd.apply([tf.constant(g)], [w_sgd])
    np.testing.assert_array_equal(w_ada.numpy(), w_sgd.numpy())
    assert adascale.gain == 1.0
    assert adascale.scale_invariant_steps == 5.0


def regression_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.7 * rng.normal(size=(n, 1))).astype("float32")
    return x, y


def regression_model(optimizer):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, kernel_initializer="zeros")])
    model.compile(optimizer=optimizer, loss="mse")
    return model


def test_replicas_equal_micro_batches_on_one_device(mirrored):
    x, y = regression_data()
    with mirrored(4).scope():
        replicated = regression_model(AdaScale(keras.optimizers.SGD(poly_schedule(), momentum=0.9)))
    replicated.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    single = regression_model(AdaScale(keras.optimizers.SGD(poly_schedule(), momentum=0.9),
                                       gradient_accumulation_steps=4))
    single.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(replicated.get_weights(), single.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(replicated.optimizer.scale_invariant_steps, single.optimizer.scale_invariant_steps,
                               rtol=1e-5)
    np.testing.assert_allclose(replicated.optimizer.gain, single.optimizer.gain, rtol=1e-5)
    assert replicated.optimizer.scale_invariant_steps > 4.0  # 4 updates worth more than 4 base updates


def test_nan_micro_batch_leaves_no_trace():
    samples_fn = problem(4, seed=5)
    clean = AdaScale(keras.optimizers.SGD(0.05, momentum=0.9), gradient_accumulation_steps=4, smoothing=0.5)
    w_clean, _ = run_adascale(clean, samples_fn, 4, np.zeros(DIM))

    def with_nan(w, step):
        if step == 2:
            bad = samples_fn(w, 0)
            bad[1] = bad[1] * np.nan
            return bad
        return samples_fn(w, step - (step > 2))

    skipping = AdaScale(keras.optimizers.SGD(0.05, momentum=0.9), gradient_accumulation_steps=4, smoothing=0.5)
    w_skip, _ = run_adascale(skipping, with_nan, 5, np.zeros(DIM))
    np.testing.assert_array_equal(w_skip, w_clean)
    assert skipping.skipped_updates == 1
    assert skipping.scale_invariant_steps == clean.scale_invariant_steps
    assert skipping.gain == clean.gain
    for a, b in zip(skipping.variables, clean.variables):
        if "iteration" not in a.path and "skipped" not in a.path:
            np.testing.assert_array_equal(np.asarray(a.numpy()), np.asarray(b.numpy()), err_msg=a.path)


def test_resume_from_a_keras_file_is_exact(tmp_path):
    x, y = regression_data(seed=2)

    def fresh():
        return regression_model(AdaScale(keras.optimizers.SGD(poly_schedule(), momentum=0.9),
                                         gradient_accumulation_steps=2))

    straight = fresh()
    straight.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    interrupted = fresh()
    interrupted.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    interrupted.save(tmp_path / "m.keras")
    resumed = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(resumed.optimizer, AdaScale)
    assert resumed.optimizer.scale_invariant_steps == interrupted.optimizer.scale_invariant_steps
    resumed.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert resumed.optimizer.scale_invariant_steps == straight.optimizer.scale_invariant_steps


def test_config_round_trip_keeps_the_base_recipe():
    optimizer = AdaScale(keras.optimizers.SGD(poly_schedule(), momentum=0.8, nesterov=True), scale=16.0,
                         smoothing=0.9, gradient_accumulation_steps=4, nonfinite_gradients="raise")
    config = optimizer.get_config()
    again = AdaScale.from_config(config)
    assert again.get_config() == config
    assert isinstance(again.inner_optimizer, keras.optimizers.SGD)
    assert again.inner_optimizer.momentum == 0.8
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert restored.get_config() == config
    assert tlb.AdaScale is AdaScale


def test_stop_callback_ends_fit_at_the_base_step_budget():
    x, y = regression_data()
    model = regression_model(AdaScale(keras.optimizers.SGD(0.05), gradient_accumulation_steps=4))
    model.fit(x, y, batch_size=4, epochs=50, shuffle=False, verbose=0,
              callbacks=[StopAtScaleInvariantSteps(20)])
    tau = model.optimizer.scale_invariant_steps
    assert 20.0 <= tau < 20.0 + 4.0  # stopped after the update that crossed the budget
    assert model.optimizer.iterations.numpy() < 20


def test_monitoring_statistics_on_request():
    w = keras.Variable(np.zeros(DIM, np.float32))
    optimizer = AdaScale(keras.optimizers.SGD(0.05), gradient_accumulation_steps=2)
    optimizer.build([w])
    optimizer.request_gradient_statistics()
    for g in ([1.0, 2, 3, 4, 5], [3.0, 2, 1, 4, 5]):
        optimizer.apply([tf.constant(g)], [w])
    row = optimizer.gradient_statistics()[w.path]
    assert row["mean_square"] == pytest.approx(4 + 4 + 4 + 16 + 25)
    assert row["variance"] == pytest.approx(2.0)  # elements 0 and 2: (1/2) sum (g - gbar)^2 = 1 each
    # gbar**2 / s2 = [4, inf, 4, inf, inf]: the mean over the finite elements.
    assert row["gsnr_mean"] == pytest.approx(4.0)
    # Without a request the sums (which the gain reads) are still recorded; the GSNR column is not
    # computed and keeps the requested update's value (the state stays finite).
    for g in ([1.0, 1, 1, 1, 1], [3.0, 1, 1, 1, 1]):
        optimizer.apply([tf.constant(g)], [w])
    row = optimizer.gradient_statistics()[w.path]
    assert optimizer.gradient_statistics_step == 2
    assert row["variance"] == pytest.approx(1.0) and row["gsnr_mean"] == pytest.approx(4.0)


@pytest.mark.parametrize("arguments,message", [
    (dict(smoothing=1.0), "smoothing"),
    (dict(smoothing=-0.1), "smoothing"),
    (dict(scale=0.5), "scale"),
    (dict(learning_rate=0.1), "learning_rate"),
    (dict(weight_decay=0.1), "weight_decay"),
])
def test_bad_arguments_are_clear_errors_at_construction(arguments, message):
    with pytest.raises(ValueError, match=message):
        AdaScale(keras.optimizers.SGD(0.1), **arguments)


def test_bad_inner_optimizers_are_clear_errors():
    with pytest.raises(ValueError, match="keras.optimizers.Optimizer"):
        AdaScale("sgd")
    built = keras.optimizers.SGD(0.1)
    built.build([keras.Variable(np.zeros(2, np.float32))])
    with pytest.raises(ValueError, match="already built"):
        AdaScale(built)
    with pytest.raises(ValueError, match="does not wrap"):
        AdaScale(tlb.optimizers.VRSGD(0.1))
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        AdaScale(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2))


def test_a_single_gradient_sample_is_a_clear_error_at_build():
    optimizer = AdaScale(keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="k >= 2"):
        optimizer.build([keras.Variable(np.zeros(2, np.float32))])


def test_xla_step_equals_the_uncompiled_step():
    x, y = regression_data(seed=6)
    results = []
    for jit_compile in (True, False):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, kernel_initializer="zeros")])
        model.compile(optimizer=AdaScale(keras.optimizers.SGD(poly_schedule(), momentum=0.9),
                                         gradient_accumulation_steps=4), loss="mse", jit_compile=jit_compile)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        results.append((model.get_weights(), model.optimizer.scale_invariant_steps))
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)


def test_many_samples_with_shifted_moments_match_algorithm_1():
    """k = 64 takes the recorder's shifted-moments path (moments about the previous mean)."""
    k, steps = 64, 3
    rng = np.random.default_rng(8)
    noise = rng.normal(size=(steps, k, DIM)) * 0.5 + 3.0  # large mean against the noise

    def samples_fn(w, step):
        return [w - noise[step, i] for i in range(k)]

    optimizer = AdaScale(keras.optimizers.SGD(0.1, momentum=0.9), gradient_accumulation_steps=k, smoothing=0.5)
    w, trace = run_adascale(optimizer, samples_fn, steps, np.zeros(DIM))
    expected_w, reference = adascale_sgd(np.zeros(DIM), samples_fn, steps, lambda tau: 0.1, momentum=0.9,
                                         smoothing=0.5)
    np.testing.assert_allclose([g for g, _, _ in trace], reference.gains, rtol=1e-3)
    np.testing.assert_allclose(w, expected_w, rtol=1e-4, atol=1e-5)


def test_gsnr_monitor_reads_adascale_statistics(tmp_path):
    x, y = regression_data(seed=9)
    model = regression_model(AdaScale(keras.optimizers.SGD(0.05), gradient_accumulation_steps=4))
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
              callbacks=[tlb.callbacks.GSNRMonitor(str(tmp_path), global_batch_size=32, update_freq=2)])
    tags = set()
    for path in tmp_path.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    assert "noise_scale/b_simple" in tags


def test_scale_defaults_to_the_number_of_samples_until_set():
    optimizer = AdaScale(keras.optimizers.SGD(0.1), gradient_accumulation_steps=4)
    assert optimizer.current_scale == 4.0
    optimizer.build([keras.Variable(np.zeros(2, np.float32))])
    assert optimizer.current_scale == 4.0
    optimizer.set_scale(6.0)
    assert optimizer.current_scale == 6.0
    with pytest.raises(ValueError, match="scale"):
        optimizer.set_scale(0.5)
