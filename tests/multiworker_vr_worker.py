"""A VR training loop shared by the multi-worker test and its in-process reference.

Run as a script it is one worker of a ``MultiWorkerMirroredStrategy`` cluster on
localhost: ``python multiworker_vr_worker.py PORTS_CSV TASK_INDEX OUT.npz``.
Each replica computes the gradient of its own shard with the loss scaled by
1/R (Keras's convention), and the VR optimizer takes it from there.
"""

import json
import os
import sys

import numpy as np

NUM_STEPS = 3
SHARD = 8


def train(strategy):
    import keras
    import tensorflow as tf

    import tf_largebatch as tlb

    replicas = strategy.num_replicas_in_sync
    rng = np.random.default_rng(0)
    x = rng.normal(size=(NUM_STEPS, replicas, SHARD, 5)).astype("float32")
    y = rng.normal(size=(NUM_STEPS, replicas, SHARD, 3)).astype("float32")
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(3)])
        optimizer = tlb.optimizers.VRAdam(learning_rate=0.05)
        optimizer.build(model.trainable_variables)

    @tf.function
    def step(xs, ys):
        def replica_step(xb, yb):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(xb) - yb)) / replicas
            optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)

        strategy.run(replica_step, args=(xs, ys))

    for t in range(NUM_STEPS):
        xs = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(x[t, ctx.replica_id_in_sync_group]))
        ys = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(y[t, ctx.replica_id_in_sync_group]))
        step(xs, ys)
    return [np.asarray(w.numpy()) for w in model.trainable_weights]


def main(ports, task_index, out_path):
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"localhost:{p}" for p in ports.split(",")]},
        "task": {"type": "worker", "index": int(task_index)},
    })
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    weights = train(strategy)
    np.savez(out_path, *weights)


if __name__ == "__main__":
    main(*sys.argv[1:])
