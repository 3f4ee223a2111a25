"""Keras's string lookup by plain class name, and the top-level names of the package."""

import subprocess
import sys

import keras
import numpy as np
import pytest

import tf_largebatch as tlb
from tf_largebatch import optimizers


@pytest.mark.parametrize("name, cls", [("SNGM", optimizers.SNGM), ("sngm", optimizers.SNGM),
                                       ("LARS", optimizers.LARS), ("lars", optimizers.LARS),
                                       ("LAMB", optimizers.LAMB), ("MCLR", optimizers.MCLR),
                                       ("vrmomentum", optimizers.VRMomentum), ("VRAdam", optimizers.VRAdam),
                                       ("layerwisesgd", optimizers.LayerwiseSGD)])
def test_keras_optimizers_get_finds_plain_class_names(name, cls):
    optimizer = keras.optimizers.get(name)
    assert type(optimizer) is cls
    assert keras.optimizers.get("tf_largebatch>" + cls.__name__).get_config() == optimizer.get_config()


def test_keras_own_names_are_not_shadowed():
    assert type(keras.optimizers.get("adam")) is keras.optimizers.Adam
    assert type(keras.optimizers.get("SGD")) is keras.optimizers.SGD
    # keras.optimizers.Lamb exists: "lamb" is not taken over (only the exact "LAMB" is ours).
    assert "lamb" not in optimizers.PLAIN_NAMES
    assert "LossScaleOptimizer" not in optimizers.PLAIN_NAMES


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    return x, x @ np.array([[1.0], [-2.0], [0.5]], "float32")


@pytest.mark.parametrize("name, cls", [("sngm", optimizers.SNGM), ("LAMB", optimizers.LAMB)])
def test_compile_with_a_plain_name_fits_and_saves_under_the_registered_name(name, cls, tmp_path):
    x, y = _data()
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=name, loss="mse")
    assert type(model.optimizer) is cls
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations.numpy()) > 0
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is cls
    assert loaded.get_compile_config()["optimizer"]["registered_name"] == "tf_largebatch>" + cls.__name__
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_plain_names_work_in_a_fresh_process_after_import_tf_largebatch():
    code = ("import keras, tf_largebatch; "
            "print(type(keras.optimizers.get('sngm')).__name__, type(keras.optimizers.get('VRLAMB')).__name__)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["SNGM", "VRLAMB"]


def test_loss_scale_optimizer_is_at_the_top_level():
    assert tlb.LossScaleOptimizer is optimizers.LossScaleOptimizer
    assert "LossScaleOptimizer" in tlb.__all__
    wrapped = tlb.LossScaleOptimizer(tlb.SNGM(0.1))
    assert isinstance(wrapped, keras.optimizers.LossScaleOptimizer)
