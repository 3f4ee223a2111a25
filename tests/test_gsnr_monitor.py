"""GSNRMonitor: McCandlish's noise-scale estimators and the TensorBoard events it writes."""

import glob
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_largebatch as tlb
from tf_largebatch import callbacks
from tf_largebatch.callbacks import GSNRMonitor
from tf_largebatch.optimizers import VRSGD

# ------------------------------------------------------------------ synthetic
DIM, K, B = 20, 4, 64
TRUE_G = np.full(DIM, 0.5)  # |G|^2 = 5
EXAMPLE_VARIANCE = np.linspace(4.0, 28.0, DIM)  # per-example Sigma, diagonal; tr = 320
TRUE_B_SIMPLE = EXAMPLE_VARIANCE.sum() / np.sum(TRUE_G**2)  # 64


def synthetic_steps(rng, steps):
    """Per step, k sample gradients, each the mean of B/k per-example gradients."""
    examples = rng.normal(TRUE_G, np.sqrt(EXAMPLE_VARIANCE), size=(steps, K, B // K, DIM))
    samples = examples.mean(axis=2)  # (steps, k, dim)
    mean = samples.mean(axis=1)
    mean_square = np.sum(mean**2, axis=-1)  # VR's "mean_square"
    variance = np.sum(np.mean(samples**2, axis=1) - mean**2, axis=-1)  # VR's "variance"
    return samples, mean_square, variance


def np_mccandlish(samples):
    """Appendix A.1 written out: |G_small|^2 = mean_i |g_i|^2 (batch B/k), |G_big|^2 = |mean g|^2."""
    small = np.mean(np.sum(samples**2, axis=-1), axis=-1)
    big = np.sum(samples.mean(axis=1) ** 2, axis=-1)
    b_small, b_big = B / K, B
    g2 = (b_big * big - b_small * small) / (b_big - b_small)
    trace = (small - big) / (1 / b_small - 1 / b_big)
    return g2, trace


def test_estimates_from_statistics_equal_the_papers_two_batch_formula():
    samples, mean_square, variance = synthetic_steps(np.random.default_rng(0), 50)
    expected_g2, expected_trace = np_mccandlish(samples)
    for i in range(50):
        g2, trace = callbacks.noise_estimates_from_gradient_statistics(mean_square[i], variance[i], K, B)
        np.testing.assert_allclose([g2, trace], [expected_g2[i], expected_trace[i]], rtol=1e-9)


def test_estimates_are_unbiased_and_converge_to_the_truth():
    _, mean_square, variance = synthetic_steps(np.random.default_rng(1), 4000)
    g2, trace = callbacks.noise_estimates_from_gradient_statistics(mean_square, variance, K, B)
    for estimate, truth in [(g2, np.sum(TRUE_G**2)), (trace, EXAMPLE_VARIANCE.sum())]:
        standard_error = estimate.std() / np.sqrt(estimate.size)
        assert abs(estimate.mean() - truth) < 4 * standard_error
        assert standard_error < 0.05 * truth  # the check above is not vacuous
    # The naive plug-in estimate (|G_big|^2 for |G|^2) is biased by tr(Sigma)/B: the test can tell.
    assert abs(mean_square.mean() - np.sum(TRUE_G**2)) > 10 * g2.std() / np.sqrt(g2.size)


def test_smoothed_b_simple_converges_to_the_truth():
    _, mean_square, variance = synthetic_steps(np.random.default_rng(2), 3000)
    trace_average = callbacks.DebiasedMovingAverage(0.995)
    norm_average = callbacks.DebiasedMovingAverage(0.995)
    for m, v in zip(mean_square, variance):
        g2, trace = callbacks.noise_estimates_from_gradient_statistics(m, v, K, B)
        trace_average.update(trace)
        norm_average.update(g2)
    np.testing.assert_allclose(trace_average.value / norm_average.value, TRUE_B_SIMPLE, rtol=0.1)


def test_debiased_moving_average_matches_numpy():
    values = np.random.randn(12) + 3.0
    for decay in [0.0, 0.5, 0.9]:
        average = callbacks.DebiasedMovingAverage(decay)
        assert np.isnan(average.value)
        raw = 0.0
        for n, x in enumerate(values, start=1):
            raw = decay * raw + (1 - decay) * x
            np.testing.assert_allclose(average.update(x), raw / (1 - decay**n), rtol=1e-12)
        if decay == 0.0:
            assert average.value == values[-1]
    first = callbacks.DebiasedMovingAverage(0.9)
    assert first.update(7.0) == pytest.approx(7.0)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(global_batch_size=1), "global_batch_size"),
        (dict(global_batch_size=64.0), "global_batch_size"),
        (dict(update_freq=0), "update_freq"),
        (dict(smoothing=1.0), "smoothing"),
        (dict(smoothing=-0.1), "smoothing"),
        (dict(log_dir=""), "log_dir"),
        (dict(per_variable="yes"), "per_variable"),
    ],
)
def test_bad_arguments_raise(kwargs, argument, tmp_path):
    arguments = {"log_dir": str(tmp_path), "global_batch_size": 64, **kwargs}
    with pytest.raises(ValueError, match=argument):
        GSNRMonitor(**arguments)


def test_missing_tensorboard_is_a_clear_error_at_construction(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["tensorboard"] = None          # as if the package were not installed
        from tf_largebatch.callbacks import GSNRMonitor
        try:
            GSNRMonitor({str(tmp_path)!r}, global_batch_size=64)
        except ImportError as error:
            print(error)
    """)
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]), TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pip install tensorboard" in result.stdout and "tf_largebatch[tensorboard]" in result.stdout


def test_bad_estimator_arguments_raise():
    with pytest.raises(ValueError, match="small_batch"):
        callbacks.unbiased_noise_estimates(1.0, 1.0, small_batch=8, big_batch=8)
    with pytest.raises(ValueError, match="num_samples"):
        callbacks.noise_estimates_from_gradient_statistics(1.0, 1.0, num_samples=1, global_batch_size=8)


# ----------------------------------------------------------------- end to end
def _data(n=64):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x @ np.array([[1.0], [-1.0], [0.5], [2.0]]) + rng.normal(scale=0.5, size=(n, 1))).astype(np.float32)
    return x, y


def _model():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])


class StatisticsRecorder(keras.callbacks.Callback):
    """Reads the VR optimizer's statistics at every batch end (independently of the monitor)."""

    def __init__(self, optimizer):
        super().__init__()
        self.optimizer = optimizer
        self.records = {}

    def on_train_batch_end(self, batch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.optimizer.iterations))
        if step > 0:
            self.records[step] = self.optimizer.gradient_statistics()


def read_events(log_dir):
    """{tag: {step: value}} and {tag: plugin name} from every event file in ``log_dir``."""
    values, plugins = {}, {}
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                steps = values.setdefault(value.tag, {})
                assert event.step not in steps, f"{value.tag} written twice at step {event.step}"
                steps[event.step] = float(tf.make_ndarray(value.tensor))
                if value.metadata.plugin_data.plugin_name:
                    plugins[value.tag] = value.metadata.plugin_data.plugin_name
    return values, plugins


def expected_scalars(records, k, batch_size, smoothing):
    """NumPy reference for the monitor's noise-scale scalars, step by step."""
    trace_avg = norm_avg = 0.0
    expected = {}
    for n, step in enumerate(sorted(records), start=1):
        stats = records[step]
        m = sum(s["mean_square"] for s in stats.values())
        v = sum(s["variance"] for s in stats.values())
        g2, trace = m - v / (k - 1), batch_size * v / (k - 1)
        trace_avg = smoothing * trace_avg + (1 - smoothing) * trace
        norm_avg = smoothing * norm_avg + (1 - smoothing) * g2
        correction = 1 - smoothing**n
        expected[step] = {
            "noise_scale/trace_covariance": trace_avg / correction,
            "noise_scale/gradient_square_norm": norm_avg / correction,
        }
        if norm_avg > 0:
            expected[step]["noise_scale/b_simple"] = trace_avg / norm_avg
    return expected


def test_fit_with_replicas_and_accumulation_writes_the_noise_scale(mirrored, tmp_path):
    x, y = _data()
    with mirrored(2).scope():
        model = _model()
        optimizer = VRSGD(learning_rate=0.05, gradient_accumulation_steps=2)
        model.compile(optimizer=optimizer, loss="mse")
    log_dir = str(tmp_path / "gsnr")
    monitor = GSNRMonitor(log_dir, global_batch_size=32, update_freq=1, smoothing=0.5, per_variable=True)
    recorder = StatisticsRecorder(optimizer)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[monitor, recorder])
    assert optimizer.num_gradient_samples == 4

    values, plugins = read_events(log_dir)
    updates = sorted(recorder.records)
    assert updates == list(range(1, 5))  # 8 batches of 16 = 4 updates of 32 examples
    paths = [v.path for v in model.trainable_variables]
    expected_tags = {"noise_scale/trace_covariance", "noise_scale/gradient_square_norm", "gsnr/fraction_at_lower",
                     "gsnr/fraction_at_upper"}
    for path in paths:
        expected_tags |= {f"gsnr_mean/{path}", f"gsnr_fraction_at_lower/{path}", f"gsnr_fraction_at_upper/{path}"}
    assert expected_tags <= set(values)
    assert all(plugins[tag] == "scalars" for tag in values)
    for tag in expected_tags:
        assert sorted(values[tag]) == updates, tag  # once per update, at the update's step

    for step, scalars in expected_scalars(recorder.records, 4, 32, 0.5).items():
        for tag, value in scalars.items():
            np.testing.assert_allclose(values[tag][step], value, rtol=1e-5, err_msg=f"{tag} at {step}")
        if "noise_scale/b_simple" not in scalars:
            assert step not in values.get("noise_scale/b_simple", {})
        stats = recorder.records[step]
        for path in paths:
            np.testing.assert_allclose(values[f"gsnr_mean/{path}"][step], stats[path]["gsnr_mean"], rtol=1e-6)
        sizes = {v.path: np.prod(v.shape) for v in model.trainable_variables}
        lower = sum(stats[p]["fraction_at_lower"] * sizes[p] for p in paths) / sum(sizes.values())
        np.testing.assert_allclose(values["gsnr/fraction_at_lower"][step], lower, rtol=1e-6)
    assert values["noise_scale/trace_covariance"][4] > 0
    assert values.get("noise_scale/b_simple"), "B_simple never written"


def test_loss_scale_optimizer_is_unwrapped_and_update_freq_respected(tmp_path):
    x, y = _data(48)
    model = _model()
    optimizer = VRSGD(learning_rate=0.05, gradient_accumulation_steps=3)
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(optimizer), loss="mse")
    monitor = GSNRMonitor(str(tmp_path), global_batch_size=24, update_freq=2, smoothing=0.0)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[monitor])
    values, _ = read_events(str(tmp_path))
    # 12 batches, 4 updates (steps 1-4); reads after batches 2, 4, ..., 12 -> new updates 1, 2, 3, 4 are
    # seen after batches 4 (step 1), 6 (2), 10 (3), 12 (4); batch 8 is mid-accumulation (still step 2).
    assert sorted(values["noise_scale/trace_covariance"]) == [1, 2, 3, 4]
    assert not any(tag.startswith("gsnr_mean/") for tag in values)  # per_variable off


class RecordedStepLog(keras.callbacks.Callback):
    """After every batch: which update's statistics the optimizer holds."""

    def __init__(self, optimizer):
        super().__init__()
        self.optimizer = optimizer
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(self.optimizer.gradient_statistics_step)


@pytest.mark.parametrize("every_update", [False, True], ids=["default", "record_every_update"])
def test_vr_records_statistics_only_for_the_monitor_readings(every_update, mirrored, tmp_path):
    """By default a VR optimizer records the statistics only on the updates the monitor
    asks for (one per update_freq batches); with record_gradient_statistics=True on all."""
    x, y = _data(96)
    with mirrored(2).scope():
        model = _model()
        optimizer = VRSGD(learning_rate=0.05, record_gradient_statistics=every_update)
        model.compile(optimizer=optimizer, loss="mse")
    log = RecordedStepLog(optimizer)
    monitor = GSNRMonitor(str(tmp_path), global_batch_size=16, update_freq=3, smoothing=0.0)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[monitor, log])
    assert log.steps == ([1, 2, 3, 4, 5, 6] if every_update else [0, 0, 3, 3, 3, 6])
    values, _ = read_events(str(tmp_path))
    assert sorted(values["noise_scale/trace_covariance"]) == [3, 6]


@pytest.mark.parametrize("make_optimizer", [keras.optimizers.SGD, lambda: tlb.SNGM(0.1)], ids=["keras", "SNGM"])
def test_clear_error_when_the_optimizer_records_no_statistics(make_optimizer, tmp_path):
    x, y = _data(16)
    model = _model()
    model.compile(optimizer=make_optimizer(), loss="mse")
    with pytest.raises(ValueError, match="records none.*record_gradient_statistics=True"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[GSNRMonitor(str(tmp_path), 8)])


@pytest.mark.parametrize("name", ["SNGM", "LAMB", "LARS"])
def test_any_package_optimizer_records_statistics_when_asked(name):
    """record_gradient_statistics=True: the same statistics as VR computes, the same update as without."""
    rng = np.random.default_rng(3)
    shapes = [(5,), (3, 4)]
    samples = [[rng.normal(size=(4,) + s) + rng.normal(size=s) for s in shapes] for _ in range(3)]
    start = [rng.normal(size=s).astype("float32") for s in shapes]
    make = {"SNGM": lambda **kw: tlb.SNGM(0.1, **kw), "LAMB": lambda **kw: tlb.LAMB(0.01, **kw),
            "LARS": lambda **kw: tlb.LARS(1.0, **kw)}[name]
    weights = {}
    for record in (False, True):
        variables = [keras.Variable(w) for w in start]
        optimizer = make(gradient_accumulation_steps=4, record_gradient_statistics=record)
        for step in samples:
            for i in range(4):
                optimizer.apply([tf.constant(s[i], tf.float32) for s in step], variables)
        weights[record] = [v.numpy() for v in variables]
    np.testing.assert_array_equal(weights[False][0], weights[True][0])
    np.testing.assert_array_equal(weights[False][1], weights[True][1])
    stats = optimizer.gradient_statistics()
    assert optimizer.num_gradient_samples == 4
    for variable, s in zip(variables, samples[-1]):
        mean = s.mean(axis=0)
        variance = (s**2).mean(axis=0) - mean**2
        got = stats[variable.path]
        assert set(got) == {"mean_square", "variance", "gsnr_mean"}
        np.testing.assert_allclose(got["mean_square"], np.sum(mean**2), rtol=1e-5)
        np.testing.assert_allclose(got["variance"], np.sum(variance), rtol=1e-5)
        np.testing.assert_allclose(got["gsnr_mean"], np.mean(mean**2 / variance), rtol=1e-4)


def test_monitor_with_a_non_vr_optimizer_writes_the_noise_scale_but_no_clip_fractions(mirrored, tmp_path):
    x, y = _data()
    with mirrored(2).scope():
        model = _model()
        optimizer = tlb.LAMB(0.01, record_gradient_statistics=True)
        model.compile(optimizer=optimizer, loss="mse")
    log_dir = str(tmp_path / "gsnr")
    recorder = StatisticsRecorder(optimizer)
    monitor = GSNRMonitor(log_dir, global_batch_size=16, update_freq=1, smoothing=0.5, per_variable=True)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[monitor, recorder])
    values, _ = read_events(log_dir)
    assert "noise_scale/trace_covariance" in values and f"gsnr_mean/{model.trainable_variables[0].path}" in values
    assert not any("fraction" in tag for tag in values)
    for step, scalars in expected_scalars(recorder.records, 2, 16, 0.5).items():
        for tag, value in scalars.items():
            np.testing.assert_allclose(values[tag][step], value, rtol=1e-5, err_msg=f"{tag} at {step}")


def test_monitor_with_adascale_reads_the_mean_gsnr_it_asked_for(mirrored, tmp_path):
    """AdaScale records the sums on every update (its gain reads them) and the mean GSNR on the
    updates the monitor asks for, written at the readings; in between the table keeps the last
    computed value (0 before any)."""
    x, y = _data()
    with mirrored(2).scope():
        model = _model()
        optimizer = tlb.AdaScale(keras.optimizers.SGD(0.05, momentum=0.9))
        model.compile(optimizer=optimizer, loss="mse")
    log_dir = str(tmp_path / "gsnr")
    recorder = StatisticsRecorder(optimizer)
    monitor = GSNRMonitor(log_dir, global_batch_size=16, update_freq=2, smoothing=0.5, per_variable=True)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[monitor, recorder])
    values, _ = read_events(log_dir)
    path = model.trainable_variables[0].path
    assert sorted(values[f"gsnr_mean/{path}"]) == [2, 4]
    last_computed = 0.0
    for step, stats in sorted(recorder.records.items()):
        assert all(s["variance"] > 0 for s in stats.values())
        if step in (2, 4):
            assert np.isfinite(stats[path]["gsnr_mean"]) and stats[path]["gsnr_mean"] > 0
            np.testing.assert_allclose(values[f"gsnr_mean/{path}"][step], stats[path]["gsnr_mean"], rtol=1e-6)
            last_computed = stats[path]["gsnr_mean"]
        else:
            assert stats[path]["gsnr_mean"] == last_computed, step
    read = {step: recorder.records[step] for step in (2, 4)}
    for step, scalars in expected_scalars(read, 2, 16, 0.5).items():
        for tag, value in scalars.items():
            np.testing.assert_allclose(values[tag][step], value, rtol=1e-5, err_msg=f"{tag} at {step}")


def test_recording_needs_two_samples():
    with pytest.raises(ValueError, match="k >= 2"):
        tlb.SNGM(0.1, record_gradient_statistics=True).apply([tf.ones(3)], [keras.Variable(np.ones(3, "float32"))])


def test_b_simple_of_a_frozen_linear_model_matches_the_population_value(mirrored, tmp_path):
    """With learning rate 0 every step samples the same gradient distribution, whose
    true G and Sigma follow from the per-example gradients of the whole data set."""
    rng = np.random.default_rng(4)
    n = 8192
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.array([[0.3], [-0.2], [0.1]]) + 0.4 + rng.normal(scale=1.0, size=(n, 1))).astype(np.float32)
    # Per-example gradients of (w.x + b - y)^2 at w = 0, b = 0: 2 r [x, 1] with r = -y.
    per_example = 2.0 * (-y) * np.concatenate([x, np.ones((n, 1), np.float32)], axis=1).astype(np.float64)
    true_g2 = np.sum(per_example.mean(axis=0) ** 2)
    true_trace = np.sum(per_example.var(axis=0))
    with mirrored(2).scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, kernel_initializer="zeros")])
        optimizer = VRSGD(learning_rate=0.0, gradient_accumulation_steps=2)
        model.compile(optimizer=optimizer, loss="mse")
    monitor = GSNRMonitor(str(tmp_path), global_batch_size=64, update_freq=2, smoothing=0.99)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[monitor])
    assert int(optimizer.iterations) == n // 64
    np.testing.assert_allclose(monitor.trace_covariance.value, true_trace, rtol=0.08)
    # The plug-in |G_big|^2 would be tr(Sigma)/B = 28% too high here; the unbiased estimate is not.
    np.testing.assert_allclose(monitor.gradient_square_norm.value, true_g2, rtol=0.1)
    values, _ = read_events(str(tmp_path))
    b_simple = values["noise_scale/b_simple"][n // 64]
    np.testing.assert_allclose(b_simple, true_trace / true_g2, rtol=0.12)
