"""Replicas change nothing: MirroredStrategy runs equal single-device runs on the same samples.

Every optimizer of the zoo is trained with ``model.fit`` on the same 48 examples
in four layouts that see the same gradient samples (12 samples of 4 examples,
3 optimizer updates):

* one device, ``gradient_accumulation_steps=4``, batch 4  (the reference);
* 4 replicas, batch 16 (4 per replica);
* 2 replicas, ``gradient_accumulation_steps=2``, batch 8 (4 per replica);
* one device, batch 16 (not for VR, which needs >= 2 samples per update).

The learning rate is a decaying schedule, so a schedule that counted micro-steps
instead of updates would separate the layouts (4 vs 2 vs 1 micro-steps per
update); clipping thresholds are small enough to be active, so clipping a
replica's partial gradient instead of the global mean would separate them too.
Keras's own ``gradient_accumulation_steps`` cannot run under MirroredStrategy
(its accumulators are mirrored variables written with per-replica values inside
a ``cond``); the 2x2 layout shows that ours does.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from optimizer_zoo import (
    ENTRIES,
    ZOO,
    assert_weights_close,
    initial_weights,
    mirrored_strategy,
    regression_data,
    tiny_model,
    weights_changed,
)
from tf_largebatch.optimizers.base import LargeBatchOptimizer

CLIP = 0.05  # well below the gradient norms of the problem: clipping is active


def _schedule(entry):
    base = entry.kwargs.get("learning_rate", (entry.inner or (None, {}))[1].get("learning_rate", 0.05))
    return keras.optimizers.schedules.ExponentialDecay(base, decay_steps=1, decay_rate=0.7)


def _fit(entry, strategy, *, batch_size, accumulation, clip, run_eagerly=False, **extra):
    x, y = regression_data()
    init = initial_weights()
    with strategy.scope():
        model = tiny_model()
        model.set_weights(init)
        optimizer = entry.make(
            learning_rate=_schedule(entry), gradient_accumulation_steps=accumulation, **clip, **extra
        )
        model.compile(optimizer=optimizer, loss="mse", run_eagerly=run_eagerly)
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    assert int(optimizer.iterations.numpy()) == 3, "three optimizer updates in every layout"
    weights = model.get_weights()
    assert weights_changed(init, weights)
    assert all(np.all(np.isfinite(w)) for w in weights)
    return weights


@pytest.mark.slow
@pytest.mark.parametrize("entry", ZOO)
def test_replicas_and_accumulation_match_single_device(entry):
    one_device = tf.distribute.get_strategy()
    global_clip = {"global_clipnorm": CLIP}
    per_variable_clip = {"clipnorm": CLIP}

    reference = _fit(entry, one_device, batch_size=4, accumulation=4, clip=global_clip, run_eagerly=True)
    four_replicas = _fit(entry, mirrored_strategy(4), batch_size=16, accumulation=None, clip=global_clip)
    assert_weights_close(four_replicas, reference, what="4 replicas vs 1 device x 4 micro-batches")
    if entry.min_samples == 1:
        same_batch = _fit(entry, one_device, batch_size=16, accumulation=None, clip=global_clip, run_eagerly=True)
        assert_weights_close(four_replicas, same_batch, what="4 replicas vs 1 device, same global batch")

    reference = _fit(entry, one_device, batch_size=4, accumulation=4, clip=per_variable_clip, run_eagerly=True)
    two_by_two = _fit(entry, mirrored_strategy(2), batch_size=8, accumulation=2, clip=per_variable_clip)
    assert_weights_close(two_by_two, reference, what="2 replicas x 2 micro-batches vs 1 device x 4")


# ------------------------------------------------------- clipping, in detail
class _PlainSGD(LargeBatchOptimizer):
    """``w <- w - lr * g`` on the base class: isolates the base's clipping plumbing."""

    def update_step(self, gradient, variable, learning_rate):
        self.assign_sub(variable, tf.cast(learning_rate, variable.dtype) * gradient)


def _linear_gradients(x, y, kernel, bias):
    """Mean-squared-error gradients of ``x @ kernel + bias`` (NumPy, float64)."""
    error = x @ kernel + bias - y
    dprediction = 2.0 * error / error.size
    return [x.T @ dprediction, dprediction.sum(axis=0)]


def _clip_global(grads, clip):
    norm = np.sqrt(sum(np.sum(g**2) for g in grads))
    return [g * min(1.0, clip / norm) for g in grads]


def _clip_each(grads, clip):
    return [g * min(1.0, clip / np.sqrt(np.sum(g**2))) for g in grads]


@pytest.mark.parametrize("clip_argument", ["global_clipnorm", "clipnorm"])
def test_clipping_acts_on_global_mean_gradient_not_replica_partials(clip_argument):
    """2 replicas whose gradients differ 10x in scale: clip(mean) != sum of clipped partials."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 3))
    x[4:] *= 10.0  # replica 1's examples: a much larger gradient
    y = rng.normal(size=(8, 2))
    kernel = rng.normal(size=(3, 2))
    bias = rng.normal(size=(2,))
    learning_rate, clip = 0.1, 0.5
    clipper = _clip_global if clip_argument == "global_clipnorm" else _clip_each

    shards = [_linear_gradients(x[i * 4:(i + 1) * 4], y[i * 4:(i + 1) * 4], kernel, bias) for i in range(2)]
    global_mean = [(a + b) / 2 for a, b in zip(*shards)]
    expected = [w - learning_rate * g for w, g in zip([kernel, bias], clipper(global_mean, clip))]
    # What Keras's order (clip each replica's partial h_d = g_d / 2, then sum) would give:
    partial = [sum(parts) for parts in zip(*(clipper([g / 2 for g in shard], clip) for shard in shards))]
    keras_order = [w - learning_rate * g for w, g in zip([kernel, bias], partial)]
    assert max(np.max(np.abs(a - b)) for a, b in zip(expected, keras_order)) > 1e-2

    strategy = mirrored_strategy(2)
    with strategy.scope():
        layer = keras.layers.Dense(2)
        layer.build((None, 3))
        layer.set_weights([kernel.astype("float32"), bias.astype("float32")])
        optimizer = _PlainSGD(learning_rate=learning_rate, name="plain_sgd", **{clip_argument: clip})
        optimizer.build(layer.trainable_variables)

    def replica_values(context):
        i = context.replica_id_in_sync_group
        return (tf.constant(x[i * 4:(i + 1) * 4], tf.float32), tf.constant(y[i * 4:(i + 1) * 4], tf.float32))

    inputs = strategy.experimental_distribute_values_from_function(replica_values)

    @tf.function
    def train_step(inputs):
        def step(xs, ys):
            with tf.GradientTape() as tape:
                per_example = tf.reduce_mean(tf.square(layer(xs) - ys), axis=-1)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=8)
            optimizer.apply(tape.gradient(loss, layer.trainable_variables), layer.trainable_variables)

        strategy.run(step, args=inputs)

    train_step(inputs)
    assert_weights_close(layer.get_weights(), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------ checkpoint mid-accumulation, 2 replicas
@pytest.mark.parametrize("entry_id", ["SNGM", "VRAdam"])
def test_checkpoint_mid_accumulation_under_mirrored_strategy(entry_id, tmp_path):
    """Interrupted after 3 micro-steps (accumulation 2) on 2 replicas: the replica-local
    partial sums survive ``tf.train.Checkpoint`` and the continued run equals the
    uninterrupted one. The checkpoint holds the sums over replicas, so (for optimizers
    that need no per-replica samples) it also resumes on a single device."""
    entry = ENTRIES[entry_id]
    x, y = regression_data(num_examples=48)
    init = initial_weights()
    two_replicas = mirrored_strategy(2)

    def build(strategy):
        with strategy.scope():
            model = tiny_model()
            model.set_weights(init)
            optimizer = entry.make(gradient_accumulation_steps=2)
            optimizer.build(model.trainable_variables)
        return model, optimizer

    def make_step(strategy, model, optimizer):
        @tf.function
        def train_step(xs, ys):
            def step(xs, ys):
                with tf.GradientTape() as tape:
                    per_example = keras.losses.mean_squared_error(ys, model(xs))
                    loss = tf.nn.compute_average_loss(per_example, global_batch_size=8)
                optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

            strategy.run(step, args=(xs, ys))

        return train_step

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    batches = list(two_replicas.experimental_distribute_dataset(dataset))
    model, optimizer = build(two_replicas)
    train_step = make_step(two_replicas, model, optimizer)
    for xs, ys in batches[:3]:
        train_step(xs, ys)
    path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / "ckpt"))
    for xs, ys in batches[3:]:
        train_step(xs, ys)

    restored_model, restored_optimizer = build(two_replicas)
    tf.train.Checkpoint(model=restored_model, optimizer=restored_optimizer).restore(path).assert_consumed()
    restored_step = make_step(two_replicas, restored_model, restored_optimizer)
    for xs, ys in batches[3:]:
        restored_step(xs, ys)
    assert int(restored_optimizer.iterations.numpy()) == 3
    assert_weights_close(restored_model.get_weights(), model.get_weights(), rtol=1e-5, atol=1e-6)

    if entry.min_samples == 1:
        one_device = tf.distribute.get_strategy()
        single_model, single_optimizer = build(one_device)
        tf.train.Checkpoint(model=single_model, optimizer=single_optimizer).restore(path).assert_consumed()
        single_step = make_step(one_device, single_model, single_optimizer)
        for xs, ys in list(dataset)[3:]:
            single_step(xs, ys)
        assert_weights_close(single_model.get_weights(), model.get_weights(), rtol=1e-5, atol=1e-6,
                             what="resumed on one device")


# ------------------------------------------------------ EMA under replicas
@pytest.mark.parametrize("entry_id", ["SNGM", "VRAdam"])
def test_ema_with_overwrite_under_replicas_and_accumulation_matches_single_device(entry_id):
    """``use_ema`` + ``ema_overwrite_frequency`` work under MirroredStrategy (Keras's own
    overwrite ``tf.cond`` fails there, even for ``keras.optimizers.SGD``), and the
    average moves on real updates only, so 2 replicas x 2 micro-batches equal one
    device x 4 micro-batches."""
    entry = ENTRIES[entry_id]
    ema = dict(use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=2, clip={})
    reference = _fit(entry, tf.distribute.get_strategy(), batch_size=4, accumulation=4, run_eagerly=True, **ema)
    replicas = _fit(entry, mirrored_strategy(2), batch_size=8, accumulation=2, **ema)
    assert_weights_close(replicas, reference, what="EMA-overwritten weights, 2x2 vs 1x4")

