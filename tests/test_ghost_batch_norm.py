"""GhostBatchNormalization against a NumPy per-virtual-batch reference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_largebatch.layers import GhostBatchNormalization

EPS = 1e-3
MOMENTUM = 0.9


def np_ghost_bn(x, virtual_batch_size, gamma, beta, eps=EPS):
    """Reference from Hoffer et al., Algorithm 1; channels last."""
    groups = x.reshape((-1, virtual_batch_size) + x.shape[1:]).astype(np.float64)
    axes = tuple(range(1, groups.ndim - 1))
    mu = groups.mean(axis=axes, keepdims=True)
    var = groups.var(axis=axes, keepdims=True)
    y = gamma * (groups - mu) / np.sqrt(var + eps) + beta
    flat = lambda a: a.reshape(a.shape[0], -1)
    return y.reshape(x.shape), flat(mu).mean(axis=0), flat(var).mean(axis=0)


def randomize(layer, channels, rng):
    gamma = rng.uniform(0.5, 2.0, channels).astype("float32")
    beta = rng.normal(size=channels).astype("float32")
    mm = rng.normal(size=channels).astype("float32")
    mv = rng.uniform(0.5, 2.0, channels).astype("float32")
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    layer.moving_mean.assign(mm)
    layer.moving_variance.assign(mv)
    return gamma, beta, mm, mv


@pytest.mark.parametrize("shape,virtual", [
    ((12, 5), 4), ((12, 5), 3), ((12, 5), 12), ((8, 3, 4, 6), 2), ((8, 3, 4, 6), 4), ((6, 2, 2, 3), 1),
])
def test_training_matches_numpy_reference(shape, virtual):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=shape) * 3 + 1).astype("float32")
    channels = shape[-1]
    layer = GhostBatchNormalization(virtual, momentum=MOMENTUM, epsilon=EPS)
    layer.build(shape)
    gamma, beta, mm, mv = randomize(layer, channels, rng)

    expected, mean, var = np_ghost_bn(x, virtual, gamma, beta)
    out = layer(x, training=True)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.moving_mean, MOMENTUM * mm + (1 - MOMENTUM) * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance, MOMENTUM * mv + (1 - MOMENTUM) * var, rtol=1e-5, atol=1e-6)

    # inference: moving statistics, no update
    moving_mean, moving_var = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    inference = layer(x, training=False)
    np.testing.assert_allclose(inference, gamma * (x - moving_mean) / np.sqrt(moving_var + EPS) + beta,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(layer.moving_mean, moving_mean)


def test_ghost_batches_differ_from_full_batch():
    """A test that could fail: with V < B the output is not BatchNormalization's."""
    x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    x[:4] += 5.0
    ghost = GhostBatchNormalization(4)(x, training=True)
    full = keras.layers.BatchNormalization()(x, training=True)
    assert np.abs(np.asarray(ghost) - np.asarray(full)).max() > 0.5


@pytest.mark.parametrize("shape", [(16, 7), (4, 5, 5, 3)])
def test_equals_batch_normalization_when_virtual_batch_is_whole_batch(shape):
    rng = np.random.default_rng(2)
    ghost = GhostBatchNormalization(shape[0], momentum=0.8, epsilon=1e-4)
    plain = keras.layers.BatchNormalization(momentum=0.8, epsilon=1e-4)
    ghost.build(shape)
    plain.build(shape)
    gamma, beta, mm, mv = randomize(ghost, shape[-1], rng)
    for var, value in zip([plain.gamma, plain.beta, plain.moving_mean, plain.moving_variance], [gamma, beta, mm, mv]):
        var.assign(value)
    for _ in range(3):
        x = rng.normal(size=shape).astype("float32") * 2 + 0.5
        np.testing.assert_allclose(ghost(x, training=True), plain(x, training=True), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ghost.moving_mean, plain.moving_mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ghost.moving_variance, plain.moving_variance, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ghost(x, training=False), plain(x, training=False), rtol=1e-5, atol=1e-5)


def test_channels_first_axis():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 3, 2, 2)).astype("float32")
    layer = GhostBatchNormalization(2, axis=1, epsilon=EPS)
    out = np.asarray(layer(x, training=True))
    expected, _, _ = np_ghost_bn(np.moveaxis(x, 1, -1), 2, np.ones(3), np.zeros(3))
    np.testing.assert_allclose(out, np.moveaxis(expected, -1, 1), rtol=1e-4, atol=1e-4)


def test_gradients_flow_through_statistics():
    x = tf.constant(np.random.default_rng(4).normal(size=(8, 3)), tf.float32)
    layer = GhostBatchNormalization(4, center=False, scale=False)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(y ** 3)
    grad = tape.gradient(loss, x)
    # d/dx of a normalized output sums to 0 over each virtual batch (mean is subtracted)
    np.testing.assert_allclose(tf.reduce_sum(tf.reshape(grad, (2, 4, 3)), axis=1), 0.0, atol=1e-3)


def test_not_divisible_raises_clear_error():
    layer = GhostBatchNormalization(4)
    with pytest.raises(ValueError, match="multiple of virtual_batch_size=4"):
        layer(np.zeros((6, 3), "float32"), training=True)
    # dynamic batch dimension: checked at run time
    fn = tf.function(lambda x: layer(x, training=True),
                     input_signature=[tf.TensorSpec((None, 3), tf.float32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiple of virtual_batch_size=4"):
        fn(tf.zeros((6, 3)))
    np.testing.assert_allclose(fn(tf.ones((8, 3))), 0.0)
    # inference does not need divisibility
    assert layer(np.zeros((6, 3), "float32"), training=False).shape == (6, 3)


@pytest.mark.parametrize("kwargs,name", [
    (dict(virtual_batch_size=0), "virtual_batch_size"),
    (dict(virtual_batch_size=2.5), "virtual_batch_size"),
    (dict(virtual_batch_size=2, renorm=True), "renorm"),
    (dict(virtual_batch_size=2, synchronized=True), "synchronized"),
])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GhostBatchNormalization(**kwargs)


def conv_model(virtual):
    return keras.Sequential([
        keras.Input((4, 4, 2)),
        keras.layers.Conv2D(3, 3, padding="same"),
        GhostBatchNormalization(virtual, momentum=MOMENTUM, name="gbn"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1),
    ])


def test_save_and_load_round_trip(tmp_path):
    model = conv_model(4)
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(16, 4, 4, 2)).astype("float32"), rng.normal(size=(16, 1)).astype("float32")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "gbn.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    layer = restored.get_layer("gbn")
    assert isinstance(layer, GhostBatchNormalization)
    assert layer.get_config() == model.get_layer("gbn").get_config()
    assert layer.virtual_batch_size == 4
    np.testing.assert_allclose(layer.moving_mean, model.get_layer("gbn").moving_mean)
    np.testing.assert_allclose(restored(x, training=False), model(x, training=False), rtol=1e-6)
    np.testing.assert_allclose(restored(x, training=True), model(x, training=True), rtol=1e-5, atol=1e-6)


def test_fit_with_xla():
    model = keras.Sequential([keras.Input((5,)), GhostBatchNormalization(4, name="gbn"), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(32, 5)).astype("float32") + 3.0, rng.normal(size=(32, 1)).astype("float32")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.abs(model.get_layer("gbn").moving_mean.numpy()) > 0.1)


def test_per_replica_statistics_under_mirrored_strategy(mirrored):
    """Two replicas, 8 examples each, virtual batches of 4: matches the NumPy reference."""
    strategy = mirrored(2)
    rng = np.random.default_rng(7)
    x = (rng.normal(size=(16, 5)) * 2).astype("float32")
    x[8:] += 4.0  # replica 1's half has a different mean
    y = rng.normal(size=(16, 1)).astype("float32")
    with strategy.scope():
        model = keras.Sequential([keras.Input((5,)), GhostBatchNormalization(4, momentum=MOMENTUM, name="gbn"),
                                  keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    _, mean, var = np_ghost_bn(x, 4, 1.0, 0.0)
    layer = model.get_layer("gbn")
    np.testing.assert_allclose(layer.moving_mean, (1 - MOMENTUM) * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance, MOMENTUM + (1 - MOMENTUM) * var, rtol=1e-5, atol=1e-6)
    # every replica's copy holds the same statistics
    copies = strategy.experimental_local_results(layer.moving_mean.value)
    assert len(copies) == 2
    np.testing.assert_allclose(copies[1], copies[0], rtol=1e-6)
    # the normalization itself used each replica's own virtual batches: with
    # gamma=1, beta=0 the Dense layer sees the reference ghost-normalized input
    expected_out, _, _ = np_ghost_bn(x, 4, 1.0, 0.0)
    dense = model.layers[-1]
    expected_loss = np.mean((expected_out @ dense.kernel.numpy() + dense.bias.numpy() - y) ** 2)
    np.testing.assert_allclose(history.history["loss"][0], expected_loss, rtol=1e-4)

    # 12 examples over 2 replicas is 6 per replica: not a multiple of 4, although 12 is
    dataset = tf.data.Dataset.from_tensor_slices((x[:12], y[:12])).batch(12)
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiple of virtual_batch_size=4"):
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)


def test_mixed_precision_computes_statistics_in_float32():
    rng = np.random.default_rng(8)
    x = (rng.normal(size=(8, 2, 2, 3)) * 5 + 100).astype("float32")  # large mean: float16 moments would lose it
    layer = GhostBatchNormalization(4, dtype="mixed_float16")
    out = layer(x.astype("float16"), training=True)
    assert out.dtype == "float16"
    assert layer.moving_mean.dtype == "float32"
    expected, mean, _ = np_ghost_bn(x.astype("float16").astype("float32"), 4, np.ones(3), np.zeros(3))
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=2e-2)
    np.testing.assert_allclose(layer.moving_mean, 0.01 * mean, rtol=1e-4)
