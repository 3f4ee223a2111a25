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
