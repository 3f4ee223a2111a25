"""DiscardSmallLosses against a NumPy reference of the curvature paper's §3.1."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tf_largebatch.losses import DiscardSmallLosses, small_loss_mask


def np_discarded_mean(per_sample, fraction, weights=None):
    """Drop the round(fraction*B) smallest per-sample losses, average the rest."""
    b = len(per_sample)
    n = min(int(np.round(np.float32(fraction) * np.float32(b))), b - 1)  # float32, as computed in TF
    order = np.argsort(per_sample, kind="stable")
    keep = np.ones(b, bool)
    keep[order[:n]] = False
    w = np.ones(b) if weights is None else weights
    return float(np.sum((w * per_sample)[keep]) / keep.sum()), keep


def np_mse(y, p):
    return np.mean((y.astype(np.float64) - p) ** 2, axis=-1)


@pytest.mark.parametrize(
    "batch,fraction", [(10, 0.3), (16, 0.5), (7, 0.29), (100, 0.29), (5, 0.0), (3, 0.9), (33, 0.75)]
)
def test_matches_numpy_reference(batch, fraction):
    rng = np.random.default_rng(batch)
    y = rng.normal(size=(batch, 4)).astype("float32")
    p = rng.normal(size=(batch, 4)).astype("float32")
    loss = DiscardSmallLosses("mse", fraction)
    expected, _ = np_discarded_mean(np_mse(y, p), fraction)
    assert float(loss(y, p)) == pytest.approx(expected, rel=1e-5)


def test_sample_weights_and_wrapped_loss_instance():
    rng = np.random.default_rng(1)
    y = keras.utils.to_categorical(rng.integers(0, 5, size=12), 5)
    logits = rng.normal(size=(12, 5)).astype("float32")
    w = rng.uniform(0.1, 2.0, size=12).astype("float32")
    inner = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    per_sample = np.asarray(keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1,
                                                                 reduction=None)(y, logits), np.float64)
    expected, _ = np_discarded_mean(per_sample, 0.25, w)
    assert float(DiscardSmallLosses(inner, 0.25)(y, logits, sample_weight=w)) == pytest.approx(expected, rel=1e-5)


def test_fraction_zero_is_the_plain_loss():
    rng = np.random.default_rng(2)
    y, p = rng.normal(size=(9, 3)).astype("float32"), rng.normal(size=(9, 3)).astype("float32")
    assert float(DiscardSmallLosses("mse", 0.0)(y, p)) == pytest.approx(float(keras.losses.MeanSquaredError()(y, p)))


def test_ties_drop_exactly_the_count():
    mask = small_loss_mask(tf.constant([1.0, 1.0, 1.0, 1.0, 2.0, 0.5]), 0.5)
    # 3 dropped: the 0.5, then the first two 1.0s in position order
    np.testing.assert_array_equal(mask, [False, False, True, True, True, False])


def test_discarded_examples_get_zero_gradient():
    rng = np.random.default_rng(3)
    y = tf.constant(rng.normal(size=(8, 2)), tf.float32)
    p = tf.Variable(rng.normal(size=(8, 2)), dtype=tf.float32)
    with tf.GradientTape() as tape:
        value = DiscardSmallLosses("mse", 0.25)(y, p)
    grad = tape.gradient(value, p).numpy()
    _, keep = np_discarded_mean(np_mse(y.numpy(), p.numpy()), 0.25)
    np.testing.assert_array_equal(np.abs(grad).sum(axis=1) > 0, keep)
    # the kept examples' gradient is the plain per-example one divided by the kept count
    expected = 2 * (p.numpy() - y.numpy()) / 2 / keep.sum()
    np.testing.assert_allclose(grad[keep], expected[keep], rtol=1e-5)


def test_discard_steps_counts_optimizer_updates():
    rng = np.random.default_rng(4)
    y, p = rng.normal(size=(10, 3)).astype("float32"), rng.normal(size=(10, 3)).astype("float32")
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build([keras.Variable(np.zeros(1, "float32"))])
    loss = DiscardSmallLosses("mse", 0.4, discard_steps=3, optimizer=optimizer)
    discarded, _ = np_discarded_mean(np_mse(y, p), 0.4)
    plain = float(np.mean(np_mse(y, p)))
    for step, expected in [(0, discarded), (2, discarded), (3, plain), (50, plain)]:
        optimizer.iterations.assign(step)
        assert float(loss(y, p)) == pytest.approx(expected, rel=1e-5)


def fixed_model(optimizer, loss, jit_compile=False):
    """Identity model with a frozen kernel (lr 0): the per-sample losses stay fixed."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, use_bias=False, kernel_initializer="identity")])
    model.compile(optimizer=optimizer, loss=loss, jit_compile=jit_compile)
    return model


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_discards_only_during_first_steps(jit_compile):
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(16, 3)).astype("float32"), rng.normal(size=(16, 3)).astype("float32")
    optimizer = keras.optimizers.SGD(0.0)
    loss = DiscardSmallLosses("mse", 0.5, discard_steps=2, optimizer=optimizer)
    model = fixed_model(optimizer, loss, jit_compile)
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    per_sample = np_mse(y, x)
    epoch_1 = np.mean([np_discarded_mean(per_sample[i:i + 8], 0.5)[0] for i in (0, 8)])
    np.testing.assert_allclose(history.history["loss"], [epoch_1, per_sample.mean()], rtol=1e-5)
    assert int(optimizer.iterations) == 4


def test_fit_under_mirrored_strategy_discards_per_replica(mirrored):
    strategy = mirrored(2)
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(16, 3)).astype("float32"), rng.normal(size=(16, 3)).astype("float32")
    with strategy.scope():
        model = fixed_model(keras.optimizers.SGD(0.0), DiscardSmallLosses("mse", 0.25))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    per_sample = np_mse(y, x)
    expected = np.mean([np_discarded_mean(per_sample[i:i + 8], 0.25)[0] for i in (0, 8)])
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)


def test_serialization_round_trip(tmp_path):
    inner = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    loss = DiscardSmallLosses(inner, 0.3, discard_steps=100)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, DiscardSmallLosses)
    assert restored.get_config() == loss.get_config()
    assert restored.loss.get_config()["label_smoothing"] == 0.1

    optimizer = keras.optimizers.SGD(0.0)
    model = fixed_model(optimizer, DiscardSmallLosses("mse", 0.5, discard_steps=100, optimizer=optimizer))
    x = np.random.default_rng(7).normal(size=(8, 3)).astype("float32")
    y = np.zeros((8, 3), "float32")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    model.save(tmp_path / "m.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Skipping variable loading for optimizer"
        loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert int(loaded.optimizer.iterations) == 2  # the loss's optimizer reference did not hide its state
    assert isinstance(loaded.loss, DiscardSmallLosses)
    assert loaded.loss.discard_steps == 100 and loaded.loss.fraction == 0.5
    loaded.loss.bind(loaded.optimizer)
    history = loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)
    expected, _ = np_discarded_mean(np_mse(y, x), 0.5)
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)


def test_unbound_discard_steps_raises():
    loss = DiscardSmallLosses("mse", 0.5, discard_steps=10)
    with pytest.raises(ValueError, match="bind"):
        loss(np.zeros((4, 2), "float32"), np.ones((4, 2), "float32"))


@pytest.mark.parametrize("kwargs,name", [
    (dict(loss="mse", fraction=1.0), "fraction"),
    (dict(loss="mse", fraction=-0.1), "fraction"),
    (dict(loss="mse", fraction=0.3, discard_steps=-1), "discard_steps"),
    (dict(loss="mse", fraction=0.3, discard_steps=2.5), "discard_steps"),
    (dict(loss=None, fraction=0.3), "loss"),
])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DiscardSmallLosses(**kwargs)


@settings(max_examples=40, deadline=None)
@given(
    losses=st.lists(st.floats(0.0, 10.0, width=32), min_size=1, max_size=40),
    fraction=st.floats(0.0, 0.99),
)
def test_mask_matches_numpy_for_any_batch(losses, fraction):
    values = np.array(losses, np.float32)
    _, keep = np_discarded_mean(values.astype(np.float64), fraction)
    np.testing.assert_array_equal(small_loss_mask(tf.constant(values), fraction), keep)
