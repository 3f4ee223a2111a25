"""Keras behaviour users rely on, for every optimizer of the zoo (single device).

fit / XLA / custom loops agree; ``model.save`` + ``load_model`` and
``tf.train.Checkpoint`` restore the optimizer state exactly (also in the middle
of a gradient-accumulation cycle); serialization keeps every argument including
exclusion patterns; ``use_ema``; ``mixed_float16`` (LossScaleOptimizer) and
bfloat16 variables; sparse ``IndexedSlices`` gradients equal their dense twin.
Replica equivalence lives in ``test_distributed_equivalence.py``.
"""

import copy

import keras
import numpy as np
import pytest
import tensorflow as tf

from optimizer_zoo import (
    ZOO,
    assert_weights_close,
    initial_weights,
    regression_data,
    tiny_model,
    weights_changed,
)

BATCH = 8


def _batches(num_batches, dtype="float32"):
    x, y = regression_data(num_examples=BATCH * num_batches)
    return [(tf.constant(x[i:i + BATCH], dtype), tf.constant(y[i:i + BATCH], dtype)) for i in range(0, len(x), BATCH)]


def _loss(model, x, y):
    return tf.reduce_mean(keras.losses.mean_squared_error(y, model(x, training=True)))


def _eager_step(model, optimizer, x, y):
    with tf.GradientTape() as tape:
        loss = _loss(model, x, y)
    optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)


def _model_and_optimizer(entry, **overrides):
    model = tiny_model()
    model.set_weights(initial_weights())
    optimizer = entry.single_device(**overrides)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def _all_finite(arrays):
    return all(np.all(np.isfinite(np.asarray(a, dtype=np.float64))) for a in arrays)


# ------------------------------------------------------------- the zoo
def test_zoo_names_every_public_optimizer_and_each_exists():
    """A missing class fails here (and in every zoo test), and a new optimizer must join the zoo."""
    import tf_largebatch.optimizers as tlb_optimizers

    zoo_classes = {param.values[0].class_name for param in ZOO}
    missing = sorted(name for name in zoo_classes if not hasattr(tlb_optimizers, name))
    assert missing == [], f"zoo entries whose class does not exist: {missing}"
    public = {
        name for name, value in vars(tlb_optimizers).items()
        if isinstance(value, type) and issubclass(value, tlb_optimizers.LargeBatchOptimizer)
        and value is not tlb_optimizers.LargeBatchOptimizer
    }
    assert public - zoo_classes == set(), f"public optimizers missing from the zoo: {sorted(public - zoo_classes)}"


@pytest.mark.parametrize("entry", ZOO)
def test_records_gradient_statistics_says_whether_statistics_are_recorded(entry):
    vr = entry.min_samples > 1
    assert entry.single_device().records_gradient_statistics is vr
    if not vr:
        assert entry.single_device(record_gradient_statistics=True).records_gradient_statistics is True


# ------------------------------------------------- fit, XLA, custom loops
@pytest.mark.parametrize("entry", ZOO)
def test_fit_with_xla_and_jit_custom_loop_match_eager_loop_without_retracing(entry):
    """Eager GradientTape loop (reference) == ``fit`` under ``jit_compile=True`` ==
    a ``tf.function(jit_compile=True)`` train step, which traces exactly once."""
    batches = _batches(6)

    model, optimizer = _model_and_optimizer(entry)
    for x, y in batches:
        _eager_step(model, optimizer, x, y)
    reference = model.get_weights()
    assert weights_changed(initial_weights(), reference) and _all_finite(reference)

    fitted = tiny_model()
    fitted.set_weights(initial_weights())
    fitted.compile(optimizer=entry.single_device(), loss="mse", jit_compile=True)
    assert fitted.jit_compile is True  # Keras falls back silently for models it cannot compile
    x, y = regression_data(num_examples=BATCH * 6)
    history = fitted.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert_weights_close(fitted.get_weights(), reference, rtol=1e-4, atol=1e-5, what="fit(jit_compile=True)")

    model, optimizer = _model_and_optimizer(entry)
    traces = []

    @tf.function(jit_compile=True)
    def train_step(x, y):
        traces.append(1)  # Python side effect: runs once per trace
        _eager_step(model, optimizer, x, y)

    for x, y in batches:
        train_step(x, y)
    assert len(traces) == 1, f"train step traced {len(traces)} times in {len(batches)} steps"
    assert_weights_close(model.get_weights(), reference, rtol=1e-4, atol=1e-5, what="jit custom loop")


@pytest.mark.parametrize("entry", ZOO)
def test_accumulation_counts_real_updates_for_schedules_and_bias_correction(entry):
    """2 micro-batches of 4 accumulated == 1 batch of 8, under a fast-decaying schedule:
    the schedule (and any bias correction) must see update 0, 1, 2, not micro-step 1, 3, 5."""
    if entry.min_samples > 1:
        pytest.skip("one sample per update is not enough for VR; see test_distributed_equivalence")
    schedule = keras.optimizers.schedules.ExponentialDecay(
        entry.kwargs["learning_rate"], decay_steps=1, decay_rate=0.5
    )
    x, y = regression_data(num_examples=24)
    accumulated, optimizer = _model_and_optimizer(entry, learning_rate=schedule, gradient_accumulation_steps=2)
    for i in range(0, 24, 4):
        _eager_step(accumulated, optimizer, x[i:i + 4], y[i:i + 4])
    assert int(optimizer.iterations.numpy()) == 3
    whole, optimizer = _model_and_optimizer(entry, learning_rate=schedule)
    for i in range(0, 24, 8):
        _eager_step(whole, optimizer, x[i:i + 8], y[i:i + 8])
    assert_weights_close(accumulated.get_weights(), whole.get_weights(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------- serialization
@pytest.mark.parametrize("entry", ZOO)
def test_serialization_round_trip_keeps_every_argument(entry):
    schedule = keras.optimizers.schedules.CosineDecay(0.05, decay_steps=100, warmup_target=0.1, warmup_steps=10)
    for optimizer in (entry.make(), entry.make(learning_rate=schedule, gradient_accumulation_steps=3)):
        config = optimizer.get_config()
        # (Keras's from_config replaces config["learning_rate"] in place: pass a copy)
        assert type(optimizer).from_config(copy.deepcopy(config)).get_config() == config
        revived = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
        assert type(revived) is type(optimizer)
        assert revived.get_config() == config
    for argument in ("exclude_from_weight_decay", "exclude_from_layer_adaptation"):
        if argument in entry.kwargs:
            assert entry.make().get_config()[argument] == list(entry.kwargs[argument])


@pytest.mark.parametrize("entry", ZOO)
def test_weight_decay_exclusions_match_variable_path(entry):
    """``"layer_normalization"`` excludes ``.../layer_normalization/gamma``: Keras's own
    ``exclude_from_weight_decay(var_names=...)`` matches only the short name ``gamma``."""
    if not entry.accepts("exclude_from_weight_decay"):
        pytest.skip(f"{entry.class_name} has no exclude_from_weight_decay")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.LayerNormalization()])
    optimizer = entry.single_device(weight_decay=1e-2, exclude_from_weight_decay=["layer_normalization"])
    revived = type(optimizer).from_config(optimizer.get_config())
    for opt in (optimizer, revived):
        opt.build(model.trainable_variables)
        opt = getattr(opt, "inner_optimizer", opt)  # VRLAMB, VRLARS: the decay is the inner optimizer's
        decayed = {v.path: opt._use_weight_decay(v) for v in model.trainable_variables}
        assert decayed == {
            "sequential/dense/kernel": True,
            "sequential/dense/bias": True,
            "sequential/layer_normalization/gamma": False,
            "sequential/layer_normalization/beta": False,
        }


# ------------------------------------------------- save / load mid-training
@pytest.mark.parametrize("entry", ZOO)
def test_save_and_load_model_mid_training_continues_identically(entry, tmp_path):
    """3 steps (for VR, with accumulation 2: mid-cycle), ``model.save``, ``load_model``;
    continuing the loaded model equals continuing the original."""
    x, y = regression_data(num_examples=BATCH * 6)
    model = tiny_model()
    model.set_weights(initial_weights())
    model.compile(optimizer=entry.single_device(), loss="mse", run_eagerly=True)
    model.fit(x[: 3 * BATCH], y[: 3 * BATCH], batch_size=BATCH, shuffle=False, verbose=0)
    model.save(tmp_path / "model.keras")

    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert_weights_close(
        [v.numpy() for v in loaded.optimizer.variables],
        [v.numpy() for v in model.optimizer.variables],
        rtol=0,
        atol=0,
        what="optimizer state after load",
    )
    loaded.run_eagerly = True
    for m in (model, loaded):
        m.fit(x[3 * BATCH:], y[3 * BATCH:], batch_size=BATCH, shuffle=False, verbose=0)
    assert_weights_close(loaded.get_weights(), model.get_weights(), rtol=1e-6, atol=1e-7, what="continued")


@pytest.mark.parametrize("entry", ZOO)
def test_checkpoint_mid_accumulation_continues_identically(entry, tmp_path):
    """``tf.train.Checkpoint`` of model + optimizer after 3 micro-steps of a 2-step
    accumulation cycle; the restored pair continues exactly like the original."""
    batches = _batches(6)
    model, optimizer = _model_and_optimizer(entry, gradient_accumulation_steps=2)
    for x, y in batches[:3]:
        _eager_step(model, optimizer, x, y)
    path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(tmp_path / "ckpt"))
    for x, y in batches[3:]:
        _eager_step(model, optimizer, x, y)

    restored_model, restored_optimizer = _model_and_optimizer(entry, gradient_accumulation_steps=2)
    tf.train.Checkpoint(model=restored_model, optimizer=restored_optimizer).restore(path).assert_consumed()
    for x, y in batches[3:]:
        _eager_step(restored_model, restored_optimizer, x, y)
    assert int(restored_optimizer.iterations.numpy()) == 3
    assert_weights_close(restored_model.get_weights(), model.get_weights(), rtol=1e-6, atol=1e-7)


# -------------------------------------------------------------------- EMA
@pytest.mark.parametrize("entry", ZOO)
def test_use_ema_tracks_moving_average_of_updates_and_finalize_swaps_it_in(entry):
    """The average follows Keras's rule (``m = 0`` at update 0, then ``a <- m a + (1-m) w``),
    moving on real updates only (with accumulation, not on every micro-step), differs
    from the raw weights, and replaces them on ``finalize_variable_values``."""
    ema_momentum = 0.5
    model, optimizer = _model_and_optimizer(entry, use_ema=True, ema_momentum=ema_momentum)
    expected = None
    for x, y in _batches(5):
        update = int(optimizer.iterations.numpy())
        _eager_step(model, optimizer, x, y)
        if int(optimizer.iterations.numpy()) == update:
            continue  # a micro-step that only accumulated
        weights = model.get_weights()
        if update == 0:
            expected = weights
        else:
            expected = [ema_momentum * a + (1 - ema_momentum) * w for a, w in zip(expected, weights)]
    averages = [v.numpy() for v in optimizer._model_variables_moving_average]
    assert_weights_close(averages, expected, rtol=1e-5, atol=1e-6, what="EMA")
    assert weights_changed(averages, model.get_weights())
    optimizer.finalize_variable_values(model.trainable_variables)
    assert_weights_close(model.get_weights(), averages, rtol=0, atol=0, what="finalized")


# --------------------------------------------------------- mixed precision
@pytest.fixture
def global_policy():
    """Sets a global dtype policy for one test and restores float32 afterwards."""
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy("float32")


def _mse_over_64(y_true, y_pred):
    # Keras's initial loss scale 2**15 times this problem's gradients overflows float16
    # (the LossScaleOptimizer then skips steps, correctly); 1/64 keeps every step.
    return keras.losses.mean_squared_error(y_true, y_pred) / 64.0


@pytest.mark.parametrize("entry", ZOO)
def test_mixed_float16_fit_with_loss_scale_optimizer(entry, global_policy):
    """``compile`` wraps the optimizer in a LossScaleOptimizer; every step is applied
    and the unscaled update matches the float32 run to float16 accuracy."""
    x, y = regression_data(num_examples=BATCH * 4)
    float32_model = tiny_model()
    float32_model.set_weights(initial_weights())
    float32_model.compile(optimizer=entry.single_device(), loss=_mse_over_64, run_eagerly=True)
    float32_model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)

    global_policy("mixed_float16")
    model = tiny_model()
    model.set_weights(initial_weights())
    model.compile(optimizer=entry.single_device(), loss=_mse_over_64, run_eagerly=True)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert model.layers[0].compute_dtype == "float16" and model.layers[0].kernel.dtype == "float32"
    inner = model.optimizer.inner_optimizer
    assert int(inner.iterations.numpy()) == int(float32_model.optimizer.iterations.numpy()), "skipped steps"
    weights = model.get_weights()
    assert weights_changed(initial_weights(), weights) and _all_finite(weights)
    assert_weights_close(weights, float32_model.get_weights(), rtol=0, atol=2e-3, what="mixed_float16 vs float32")


@pytest.mark.parametrize("entry", ZOO)
def test_bfloat16_variables_train(entry):
    """Layers with ``dtype="bfloat16"`` have bfloat16 variables; their update follows the
    float32 run to bfloat16 accuracy."""
    batches = _batches(4)
    reference, optimizer = _model_and_optimizer(entry)
    for x, y in batches:
        _eager_step(reference, optimizer, x, y)

    model = tiny_model(dtype="bfloat16")
    model.set_weights([w.astype(keras.backend.standardize_dtype("bfloat16")) for w in initial_weights()])
    assert all(v.dtype == "bfloat16" for v in model.trainable_variables)
    optimizer = entry.single_device()
    for x, y in _batches(4, dtype="bfloat16"):
        _eager_step(model, optimizer, x, y)
    weights = [w.astype("float32") for w in model.get_weights()]
    assert weights_changed(initial_weights(), weights) and _all_finite(weights)
    assert_weights_close(weights, reference.get_weights(), rtol=0, atol=5e-2, what="bfloat16 vs float32")


# -------------------------------------------------------- sparse gradients
@pytest.mark.parametrize("entry", ZOO)
def test_sparse_embedding_gradients_equal_dense_equivalent(entry):
    """``IndexedSlices`` from ``Embedding`` (with duplicate indices) give the update of
    the dense gradient ``tf.convert_to_tensor(slices)``."""
    ids = tf.constant([[1, 1, 3], [3, 5, 1], [7, 7, 7], [0, 2, 1]])
    targets = tf.constant([[0.5], [-1.0], [2.0], [0.0]])

    def build():
        keras.utils.set_random_seed(11)
        model = keras.Sequential(
            [keras.Input((3,), dtype="int32"), keras.layers.Embedding(10, 4),
             keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)]
        )
        optimizer = entry.single_device()
        optimizer.build(model.trainable_variables)
        return model, optimizer

    sparse_model, sparse_optimizer = build()
    dense_model, dense_optimizer = build()
    for _ in range(4):
        grads = []
        for model in (sparse_model, dense_model):
            with tf.GradientTape() as tape:
                loss = _loss(model, ids, targets)
            grads.append(tape.gradient(loss, model.trainable_variables))
        assert isinstance(grads[0][0], tf.IndexedSlices)
        assert len(np.unique(grads[0][0].indices.numpy())) < len(grads[0][0].indices.numpy())
        sparse_optimizer.apply(grads[0], sparse_model.trainable_variables)
        dense_optimizer.apply([tf.convert_to_tensor(g) for g in grads[1]], dense_model.trainable_variables)
    assert weights_changed(build()[0].get_weights(), sparse_model.get_weights())
    assert_weights_close(sparse_model.get_weights(), dense_model.get_weights(), rtol=1e-6, atol=1e-7)
