"""Writes the optimizer checkpoints that tests/test_checkpoint_compat.py loads.

Run once with the code whose checkpoints must keep loading, from the repository root:

    PYTHONPATH=<that checkout> python tests/data/checkpoints/make_checkpoints.py

For each optimizer: a tiny model (4x3 kernel, 3 bias) takes 3 updates on one
device (4 updates; 2 for the VR optimizers, whose accumulation of 2 gives k = 2 samples), then
``tf.train.Checkpoint(optimizer=..., model=...)`` and ``model.save(...keras)``,
plus ``<name>.npz`` with every optimizer variable by index (the expected state).
"""

import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_largebatch as tlb  # noqa: E402

HERE = pathlib.Path(__file__).parent

OPTIMIZERS = {
    "sngm": lambda: tlb.optimizers.SNGM(0.1, momentum=0.9, weight_decay=1e-3),
    "lamb": lambda: tlb.optimizers.LAMB(0.01, weight_decay=0.01, exclude_from_weight_decay=["bias"]),
    "vradam": lambda: tlb.optimizers.VRAdam(0.01, gradient_accumulation_steps=2),
    "vrlamb": lambda: tlb.optimizers.VRLAMB(0.01, weight_decay=0.01, gradient_accumulation_steps=2,
                                           record_gradient_statistics=True),
}


def make_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])
    return model


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 4)).astype("float32"), rng.normal(size=(16, 3)).astype("float32")


def train(name, steps=4):
    """``steps`` micro-batches of 4 examples."""
    model = make_model()
    optimizer = OPTIMIZERS[name]()
    model.compile(optimizer=optimizer, loss="mse", run_eagerly=False)
    x, y = data()
    model.fit(x[: 4 * steps], y[: 4 * steps], batch_size=4, epochs=1, shuffle=False, verbose=0)
    return model, optimizer


def main():
    for name in OPTIMIZERS:
        model, optimizer = train(name)
        tf.train.Checkpoint(optimizer=optimizer, model=model).write(str(HERE / name / "ckpt"))
        model.save(HERE / f"{name}.keras")
        np.savez(HERE / f"{name}.npz", *[v.numpy() for v in optimizer.variables],
                 names=np.array([v.path for v in optimizer.variables]))
        print(name, len(optimizer.variables), "variables", file=sys.stderr)


if __name__ == "__main__":
    main()
