"""One worker of a 2-worker ``MultiWorkerMirroredStrategy`` run that may be killed.

``python multiworker_fault_worker.py PORTS_CSV TASK_INDEX RUN_DIR VICTIM DIE_AFTER``

Trains a tiny model with VRLAMB (gradient accumulation 2) through ``model.fit``
with ``keras.callbacks.BackupAndRestore`` (one backup directory per task under
``RUN_DIR``: Keras 3's callback has no chief/worker logic, so two workers sharing
one ``latest.weights.h5`` would write the same file at the same time). Worker
``VICTIM`` kills itself (``os._exit``, no clean-up, like SIGKILL) after its
``DIE_AFTER``-th batch unless ``RUN_DIR/killed`` exists; it creates that marker
first, so the same command run again trains to the end. The final weights and
optimizer variables go to ``RUN_DIR/worker{TASK_INDEX}.npz``.

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
    """Rows ``[x | y]`` packed into one tensor (see :class:`PackedRegression`)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH * BATCHES_PER_EPOCH, FEATURES)).astype("float32")
    y = np.tanh(x @ rng.normal(size=(FEATURES, 2))).astype("float32")
    data = tf.data.Dataset.from_tensor_slices(np.concatenate([x, y], axis=1)).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return data.with_options(options)


def packed_regression():
    """Dense(4, tanh) -> Dense(2) on ``z[:, :5]``, MSE against ``z[:, 5:]``.

    Why one packed tensor instead of ``(x, y)`` pairs: Keras 3.15's ``fit`` under
    ``MultiWorkerMirroredStrategy`` with more than one worker fails before the
    first step when a batch is a tuple (``Trainer._maybe_symbolic_build`` calls
    ``strategy.reduce`` on the whole ``(x, y)`` structure, which
    ``CollectiveAllReduceExtended._reduce_to``, unlike MirroredStrategy's, does not
    map over: "Attempt to convert a value (PerReplica ...) to a Tensor";
    keras-team/keras#20585). A single tensor per batch avoids it with public API
    only: the targets are sliced out in ``compute_loss``, which keeps Keras's
    own loss scaling (1/replicas). ``train_step`` works around a second Keras
    3.15 multi-worker failure (the reduction of scalar logs).
    """
    import keras
    import tensorflow as tf

    class PackedRegression(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(4, activation="tanh")
            self.head = keras.layers.Dense(2)

        def call(self, z):
            return self.head(self.hidden(z[:, :FEATURES]))

        def train_step(self, data):
            # Keras 3.15 reduces a multi-worker step's logs with
            # `strategy.reduce("MEAN", value, axis=0)`, which fails on the scalar
            # loss ("Invalid reduction dimension 0 for input with 0 dimensions");
            # shape (1,) reduces to the same scalar mean over replicas.
            return {name: tf.reshape(value, [1]) for name, value in super().train_step(data).items()}

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            return super().compute_loss(x, x[:, FEATURES:], y_pred, sample_weight, training=training)

    return PackedRegression()


def train(strategy, callbacks=()):
    """Fits the model; returns (weights, optimizer variables) as NumPy arrays."""
    import keras

    import tf_largebatch as tlb

    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = packed_regression()
        model(np.zeros((1, FEATURES + 2), "float32"))
        model.compile(optimizer=tlb.optimizers.VRLAMB(learning_rate=0.02, gradient_accumulation_steps=2), loss="mse")
    model.fit(dataset(), epochs=EPOCHS, verbose=0, callbacks=list(callbacks))
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
    import tensorflow as tf

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

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    backup = keras.callbacks.BackupAndRestore(os.path.join(run_dir, f"backup{task_index}"), save_freq="epoch")
    weights, slots = train(strategy, [backup, Report(), DieAfter()])
    np.savez(os.path.join(run_dir, f"worker{task_index}.npz"), *weights, *slots)
    print("DONE", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
