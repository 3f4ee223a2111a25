"""Non-finite gradients never silently poison optimizer state.

Without loss scaling the optimizers check the all-reduced gradient once per
update (``nonfinite_gradients="skip"``): a NaN/Inf on any replica or
micro-batch skips the update everywhere. With mixed precision, the package's
``LossScaleOptimizer`` agrees on overflow across replicas (Keras's own decides
from replica 0 only).
"""

import numpy as np
import pytest
import tensorflow as tf

import keras
import tf_largebatch as tlb
from optimizer_zoo import ZOO, initial_weights, tiny_model

FACTORIES = {
    "SNGM": lambda **kw: tlb.SNGM(0.1, **kw),
    "LAMB": lambda **kw: tlb.LAMB(0.01, weight_decay=0.01, **kw),
    "LARS": lambda **kw: tlb.LARS(1.0, **kw),
    "VRAdam": lambda **kw: tlb.VRAdam(0.01, **kw),
}


def state_snapshot(optimizer, variables):
    """Weights and every float optimizer variable (slots, accumulators, GSNR momentum)."""
    floats = [v for v in optimizer.variables if v.dtype not in ("int32", "int64")]
    return [np.array(v.numpy()) for v in list(variables) + floats]


def feeder(strategy, bad_replica=None, bad_value=np.nan):
    def fn(context):
        replica = context.replica_id_in_sync_group
        gradient = tf.constant([[0.5, -1.0], [2.0, 0.25]]) + float(replica)
        return gradient * bad_value if replica == bad_replica else gradient

    return strategy.experimental_distribute_values_from_function(fn)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("replicas,accumulation", [(1, 2), (2, None), (2, 2)])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_a_nonfinite_update_is_skipped_on_every_replica(name, replicas, accumulation, bad_value, mirrored):
    strategy = mirrored(replicas) if replicas > 1 else tf.distribute.get_strategy()
    micro = accumulation or 1
    with strategy.scope():
        variable = keras.Variable(np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), name="kernel")
        optimizer = FACTORIES[name](gradient_accumulation_steps=accumulation)
        optimizer.build([variable])

    @tf.function
    def micro_step(per_replica):
        strategy.run(lambda g: optimizer.apply([g], [variable]), args=(per_replica,))

    for _ in range(2 * micro):
        micro_step(feeder(strategy))
    before = state_snapshot(optimizer, [variable])
    # The last replica's first micro-batch of this update is non-finite.
    for i in range(micro):
        micro_step(feeder(strategy, bad_replica=replicas - 1 if i == 0 else None, bad_value=bad_value))
    for a, b in zip(before, state_snapshot(optimizer, [variable])):
        np.testing.assert_array_equal(a, b)
    assert optimizer.skipped_updates == 1
    assert int(optimizer.iterations.numpy()) == 3  # the skipped update still counts, schedules stay aligned

    for _ in range(micro):
        micro_step(feeder(strategy))
    assert np.all(np.isfinite(variable.numpy()))
    assert not np.array_equal(before[0], variable.numpy())


def test_raise_names_the_variable():
    variable = keras.Variable(np.ones(3, np.float32), name="my_bias")
    optimizer = tlb.SNGM(0.1, nonfinite_gradients="raise")
    with pytest.raises(tf.errors.InvalidArgumentError, match="my_bias"):
        optimizer.apply([tf.constant([1.0, np.nan, 0.0])], [variable])


def test_bad_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="nonfinite_gradients.*'ignore'"):
        tlb.LAMB(0.01, nonfinite_gradients="ignore")


def _overflow_on_one_replica(mirrored, make_optimizer):
    """Replica 1's half of the batch overflows float16 under the 2**15 loss scale."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    x[4:] *= 3e3
    y[4:] *= 3e3
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        strategy = mirrored(2)
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
            weights = [w.numpy() for w in model.trainable_weights]
            model.compile(optimizer=make_optimizer(), loss="mse")
        model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model, weights


def test_package_loss_scale_optimizer_skips_an_overflow_on_any_replica(mirrored):
    model, weights = _overflow_on_one_replica(
        mirrored, lambda: tlb.optimizers.LossScaleOptimizer(tlb.LAMB(0.01))
    )
    optimizer = model.optimizer
    assert isinstance(optimizer, tlb.optimizers.LossScaleOptimizer)
    assert int(optimizer.inner_optimizer.iterations.numpy()) == 0, "the overflowing step was applied"
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**14
    for w, w0 in zip(model.trainable_weights, weights):
        np.testing.assert_array_equal(w.numpy(), w0)


def test_loss_scale_optimizer_round_trips_through_config():
    wrapped = tlb.optimizers.LossScaleOptimizer(tlb.VRAdam(0.01, gradient_accumulation_steps=2), initial_scale=256.0)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(wrapped))
    assert isinstance(clone, tlb.optimizers.LossScaleOptimizer)
    assert isinstance(clone.inner_optimizer, tlb.VRAdam)
    assert clone.initial_scale == 256.0


# ------------------------------------------------ a skipped update leaves no trace
# One rule for the package (LargeBatchOptimizer's docstring): bias corrections and
# moments count applied updates, so with a constant learning rate a run with a
# skipped update inserted equals the run without it, weights and every slot.
SKIP_ENTRIES = [*ZOO, pytest.param("VR-Adam-wrapper", id="VR-Adam-wrapper")]
UPDATES = 6
ACCUMULATION = 2


def _make_for_skip_test(entry):
    if entry == "VR-Adam-wrapper":
        return tlb.optimizers.VR(keras.optimizers.Adam(0.01), gsnr_momentum=0.9,
                                 gradient_accumulation_steps=ACCUMULATION)
    return entry.make(gradient_accumulation_steps=ACCUMULATION)


def _micro_batches(count, seed):
    rng = np.random.default_rng(seed)
    shapes = [w.shape for w in initial_weights()]
    return [[rng.normal(size=shape).astype("float32") for shape in shapes] for _ in range(count)]


def _bad_update(position_of_nan, bad_value):
    """One update's micro-batches, the one at ``position_of_nan`` non-finite."""
    batches = _micro_batches(ACCUMULATION, seed=99)
    batches[position_of_nan] = [g * np.float32(bad_value) for g in batches[position_of_nan]]
    return batches


def _run(make, micro_batches, wrap=None):
    model = tiny_model()
    model.set_weights(initial_weights())
    optimizer = make()
    if wrap is not None:
        optimizer = wrap(optimizer)
    optimizer.build(model.trainable_variables)
    for grads in micro_batches:
        optimizer.apply([tf.constant(g) for g in grads], model.trainable_variables)
    return optimizer, state_snapshot(optimizer, model.trainable_variables)


def _assert_same_state(actual, expected):
    assert len(actual) == len(expected)
    for index, (a, e) in enumerate(zip(actual, expected)):
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7, err_msg=f"state[{index}] (0 = first weight)")


@pytest.mark.parametrize("where", ["start", "middle"])
@pytest.mark.parametrize("entry", SKIP_ENTRIES)
def test_a_skipped_update_leaves_no_trace(entry, where):
    good = _micro_batches(UPDATES * ACCUMULATION, seed=1)
    _, expected = _run(lambda: _make_for_skip_test(entry), good)
    cut = 0 if where == "start" else (UPDATES // 2) * ACCUMULATION
    position_of_nan = 0 if where == "start" else ACCUMULATION - 1
    with_skip = good[:cut] + _bad_update(position_of_nan, np.nan) + good[cut:]
    optimizer, actual = _run(lambda: _make_for_skip_test(entry), with_skip)
    assert optimizer.skipped_updates == 1
    assert int(optimizer.applied_updates.numpy()) == UPDATES
    assert int(optimizer.iterations.numpy()) == UPDATES + 1
    _assert_same_state(actual, expected)


class _RecordsStep(tlb.optimizers.LargeBatchOptimizer):
    """Plain SGD that records ``applied_updates + 1`` (the bias-correction step) at each update."""

    def build(self, variables):
        super().build(variables)
        self.steps_seen = self.add_variable(shape=(8,), initializer="zeros", dtype="int64", name="steps_seen")

    def update_step(self, gradient, variable, learning_rate):
        step = self.applied_updates + 1
        self.steps_seen.assign(tf.tensor_scatter_nd_update(self.steps_seen, [[step - 1]], [step]))
        self.assign_sub(variable, tf.cast(learning_rate, variable.dtype) * gradient)


@pytest.mark.parametrize("accumulation", [None, 2])
def test_applied_updates_is_the_bias_correction_step_and_skips_do_not_count(accumulation):
    variable = keras.Variable(np.ones(2, np.float32), name="kernel")
    optimizer = _RecordsStep(learning_rate=0.1, gradient_accumulation_steps=accumulation)
    optimizer.build([variable])
    assert int(optimizer.applied_updates.numpy()) == 0
    good, bad = tf.constant([1.0, 2.0]), tf.constant([np.nan, 1.0])
    micro = accumulation or 1
    for gradients in ([good] * micro, [bad] + [good] * (micro - 1), [good] * micro, [good] * micro):
        for gradient in gradients:
            optimizer.apply([gradient], [variable])
    # Four updates, the second skipped: three applied, seen as steps 1, 2, 3.
    assert optimizer.skipped_updates == 1
    assert int(optimizer.iterations.numpy()) == 4
    assert int(optimizer.applied_updates.numpy()) == 3
    np.testing.assert_array_equal(optimizer.steps_seen.numpy(), [1, 2, 3, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(variable.numpy(), [1.0 - 0.3, 1.0 - 0.6], rtol=1e-6)


@pytest.mark.parametrize("entry", [p for p in SKIP_ENTRIES if p.id in ("SNGM", "LARS", "VRSGD")])
def test_a_skipped_update_leaves_no_trace_in_the_moving_average(entry):
    """``use_ema`` moves on applied updates only and starts at the first applied one."""
    def make():
        return entry.make(gradient_accumulation_steps=ACCUMULATION, use_ema=True, ema_momentum=0.5,
                          ema_overwrite_frequency=4)

    good = _micro_batches(UPDATES * ACCUMULATION, seed=3)
    _, expected = _run(make, good)
    optimizer, actual = _run(make, _bad_update(0, np.inf) + good)
    assert optimizer.skipped_updates == 1
    _assert_same_state(actual, expected)


class _ScaledFeed:
    """Feeds a LossScaleOptimizer gradients multiplied by its current (power-of-two) scale."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def apply(self, grads, variables):
        scale = tf.cast(self.optimizer.dynamic_scale, tf.float32)
        self.optimizer.apply([g * scale for g in grads], variables)


@pytest.mark.parametrize("entry", SKIP_ENTRIES)
def test_a_loss_scale_overflow_leaves_no_trace(entry):
    good = _micro_batches(4 * ACCUMULATION, seed=2)
    overflow = [[np.full_like(g, np.inf) for g in good[0]]]

    def run(micro_batches):
        model = tiny_model()
        model.set_weights(initial_weights())
        optimizer = tlb.optimizers.LossScaleOptimizer(_make_for_skip_test(entry), initial_scale=2.0**10)
        optimizer.build(model.trainable_variables)
        feed = _ScaledFeed(optimizer)
        for grads in micro_batches:
            feed.apply([tf.constant(g) for g in grads], model.trainable_variables)
        return optimizer, state_snapshot(optimizer.inner_optimizer, model.trainable_variables)

    _, expected = run(good)
    optimizer, actual = run(good[:3] + overflow + good[3:])
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**9
    _assert_same_state(actual, expected)
