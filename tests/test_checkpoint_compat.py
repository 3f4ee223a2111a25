"""Checkpoints written by earlier versions of the optimizers still load.

``tests/data/checkpoints/`` holds, per optimizer, a ``tf.train.Checkpoint``
and a ``.keras`` file written after a few updates by the code before the
optimizers were assembled from components (``make_checkpoints.py`` there says
how), and the optimizer's variables at that point (``<name>.npz``). Loading
them into today's classes must give exactly that state: same variables, same
order, same values, and the same step counters.
"""

import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_largebatch as tlb

DATA = pathlib.Path(__file__).parent / "data" / "checkpoints"

OPTIMIZERS = {
    "sngm": lambda: tlb.optimizers.SNGM(0.1, momentum=0.9, weight_decay=1e-3),
    "lamb": lambda: tlb.optimizers.LAMB(0.01, weight_decay=0.01, exclude_from_weight_decay=["bias"]),
    "vradam": lambda: tlb.optimizers.VRAdam(0.01, gradient_accumulation_steps=2),
    "vrlamb": lambda: tlb.optimizers.VRLAMB(0.01, weight_decay=0.01, gradient_accumulation_steps=2,
                                           record_gradient_statistics=True),
}


def expected_state(name):
    saved = np.load(DATA / f"{name}.npz")
    return [saved[f"arr_{i}"] for i in range(len(saved["names"]))]


def assert_state(optimizer, expected):
    values = [v.numpy() for v in optimizer.variables]
    assert len(values) == len(expected)
    for index, (value, want) in enumerate(zip(values, expected)):
        np.testing.assert_array_equal(value, want, err_msg=f"optimizer variable {index}")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_tf_checkpoint_of_earlier_version_restores(name):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="dense")])
    optimizer = OPTIMIZERS[name]()
    optimizer.build(model.trainable_variables)
    status = tf.train.Checkpoint(optimizer=optimizer, model=model).read(str(DATA / name / "ckpt"))
    status.assert_existing_objects_matched()
    assert_state(optimizer, expected_state(name))
    assert optimizer.skipped_updates == 0


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_keras_file_of_earlier_version_loads(name):
    model = keras.saving.load_model(DATA / f"{name}.keras")
    assert type(model.optimizer) is type(OPTIMIZERS[name]())
    assert_state(model.optimizer, expected_state(name))
    assert model.optimizer.get_config() == OPTIMIZERS[name]().get_config()
