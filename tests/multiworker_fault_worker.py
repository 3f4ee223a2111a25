"""One worker of a 2-worker ``MultiWorkerMirroredStrategy`` run that may be killed.

``python multiworker_fault_worker.py PORTS_CSV TASK_INDEX RUN_DIR VICTIM DIE_AFTER``

Trains a tiny model with VRLAMB (gradient accumulation 2) through ``model.fit``
with ``keras.callbacks.BackupAndRestore`` (one backup directory per task under
``RUN_DIR``: Keras 3's callback has no chief/worker logic, so two workers sharing
one ``latest.weights.h5`` would write the same file at the same time). Worker
``VICTIM`` kills itself (``os._exit``, no clean-up, like SIGKILL) after its
``DIE_AFTER``-th batch unless ``RUN_DIR/killed`` exists; it creates that marker
first, so the same command run again trains to the end. The final weights and
optimizer variables go to ``RUN_DIR/worker{TASK_INDEX}.npz``. The strategy is
the package's (``tf_largebatch.strategy.build_strategy``, type ``multi_worker``),
which is what ``tf-largebatch train`` uses.

``train`` is also the in-process reference (``MirroredStrategy`` of two replicas):
``tf.data`` DATA sharding gives worker i the i-th half of every global batch,
which is what ``MirroredStrategy`` gives replica i.
"""

import json
import os
import sys

import numpy as np

GLOBAL_BATCH = 16
BATCHES_PER_EPOCH = 3  # odd: epoch boundaries fall inside an accumulation cycle
EPOCHS = 3
KILLED_EXIT_CODE = 17


FEATURES = 5


def dataset():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH * BATCHES_PER_EPOCH, FEATURES)).astype("float32")
    y = np.tanh(x @ rng.normal(size=(FEATURES, 2))).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.with_options(options)


def train(strategy, callbacks=()):
    """Fits the model; returns (weights, optimizer variables) as NumPy arrays."""
    import keras

    import tf_largebatch as tlb

    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(4, activation="tanh"),
                                  keras.layers.Dense(2)])
        model.compile(optimizer=tlb.optimizers.VRLAMB(learning_rate=0.02, gradient_accumulation_steps=2), loss="mse")
    model.fit(dataset(), epochs=EPOCHS, verbose=0, shuffle=False, callbacks=list(callbacks))
    return ([np.asarray(w.numpy()) for w in model.weights],
            [np.asarray(v.numpy()) for v in model.optimizer.variables])


def main(ports, task_index, run_dir, victim, die_after):
    task_index, victim, die_after = int(task_index), int(victim), int(die_after)
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"localhost:{p}" for p in ports.split(",")]},
        "task": {"type": "worker", "index": task_index},
    })
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    marker = os.path.join(run_dir, "killed")

    class Report(keras.callbacks.Callback):
        """Prints the epoch and micro-step training (re)starts from (after any restore)."""

        def on_train_begin(self, logs=None):
            self.reported = False

        def on_epoch_begin(self, epoch, logs=None):
            if not self.reported:
                self.reported = True
                print(f"START epoch={epoch} micro_steps={int(self.model.optimizer._iterations.numpy())}", flush=True)

    class DieAfter(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.batches = 0

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            if task_index == victim and self.batches == die_after and not os.path.exists(marker):
                with open(marker, "w") as f:
                    f.write(f"worker {task_index} killed after batch {self.batches}\n")
                print(f"DYING after batch {self.batches}", flush=True)
                os._exit(KILLED_EXIT_CODE)

    from tf_largebatch import config, strategy as strategy_lib

    # The package's multi-worker strategy: plain `tf.distribute.MultiWorkerMirroredStrategy`
    # fails in Keras 3.15's `fit` with more than one worker (keras-team/keras#20585).
    strategy = strategy_lib.build_strategy(config.StrategyConfig(type="multi_worker"))
    backup = keras.callbacks.BackupAndRestore(os.path.join(run_dir, f"backup{task_index}"), save_freq="epoch")
    weights, slots = train(strategy, [backup, Report(), DieAfter()])
    np.savez(os.path.join(run_dir, f"worker{task_index}.npz"), *weights, *slots)
    print("DONE", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
