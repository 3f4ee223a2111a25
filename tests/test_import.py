"""``import tf_largebatch`` registers every class with Keras, in fresh processes.

A model saved in one process loads in another after only ``import tf_largebatch``
(Keras 3.15 never imports a saved config's module for a package other than its
own, so registration at import is what makes ``load_model`` work). Under the
``tf-largebatch`` launcher the package defers its imports instead, and loads them
on first use. Keras's backend must be TensorFlow, and a clear error says so.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

REGISTERED = [
    "SNGM", "LARS", "LAMB", "LayerwiseSGD", "LayerwiseAdagrad", "LayerwiseRMSprop", "LayerwiseAdam", "MCLR",
    "PercentDelta", "AdaScale", "VR", "VRSGD", "VRMomentum", "VRAdam", "VRLAMB", "VRLARS", "LossScaleOptimizer",
    "GhostBatchNormalization", "ChannelPadShortcut", "WarmupPolynomialDecay", "WarmupCosineDecay", "WarmupStepDecay", "DiscardSmallLosses",
]


def run_python(code, cwd, **env):
    """Runs ``code`` in a fresh interpreter with the repository on the path; returns stdout."""
    environment = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    environment.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", **env)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=environment,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


SAVE = f"""
    import json, keras, numpy as np
    import tf_largebatch as tlb
    from tf_largebatch.layers import GhostBatchNormalization

    # What the import registered, before anything else is built.
    found = {{name: getattr(keras.saving.get_registered_object("tf_largebatch>" + name), "__name__", None)
             for name in {REGISTERED!r}}}
    json.dump(found, open("registered.json", "w"))
""" + """
    def build(optimizer):
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8),
                                  GhostBatchNormalization(virtual_batch_size=4), keras.layers.Dense(1)])
        model.compile(optimizer=optimizer, loss="mse")
        return model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32"); y = rng.normal(size=(32, 1)).astype("float32")
    optimizers = {
        "sngm": tlb.optimizers.SNGM(learning_rate=tlb.schedules.WarmupCosineDecay(0.1, warmup_steps=2,
                                                                                    decay_steps=10)),
        "vrlamb": tlb.optimizers.VRLAMB(learning_rate=1e-2, weight_decay=0.01, gradient_accumulation_steps=2),
    }
    saved = {}
    for name, optimizer in optimizers.items():
        model = build(optimizer)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        model.save(f"{name}.keras")
        saved[name] = {
            "weights": [w.tolist() for w in model.get_weights()],
            "optimizer": [np.asarray(v).tolist() for v in model.optimizer.variables],
            "prediction": model.predict(x[:4], verbose=0).tolist(),
        }
    json.dump(saved, open("saved.json", "w"))
    json.dump(x[:4].tolist(), open("x.json", "w"))
"""

LOAD = """
    import json, sys, keras, numpy as np

    # First without the package: Keras cannot find the classes.
    assert "tf_largebatch" not in sys.modules
    try:
        keras.saving.load_model("sngm.keras")
    except Exception as error:
        without = "failed: " + type(error).__name__
    else:
        without = "loaded"

    import tf_largebatch

    saved = json.load(open("saved.json"))
    report = {"without_tf_largebatch": without}
    for name, values in saved.items():
        model = keras.saving.load_model(f"{name}.keras")
        report[name] = {
            "optimizer_class": type(model.optimizer).__name__,
            "layer_classes": [type(layer).__name__ for layer in model.layers],
            "learning_rate": model.optimizer.get_config()["learning_rate"],
            "weights_equal": all(np.array_equal(a, np.asarray(b, a.dtype))
                                 for a, b in zip(model.get_weights(), values["weights"])),
            "optimizer_equal": len(model.optimizer.variables) == len(values["optimizer"]) and all(
                np.array_equal(np.asarray(a), np.asarray(b, np.asarray(a).dtype))
                for a, b in zip(model.optimizer.variables, values["optimizer"])),
            "prediction_close": bool(np.allclose(model.predict(np.asarray(
                json.load(open("x.json")), "float32"), verbose=0), values["prediction"], rtol=1e-5, atol=1e-6)),
        }
    print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """A directory with models saved by a fresh process (shared by the tests below),
    and the classes its ``import tf_largebatch`` registered (``registered.json``)."""
    directory = tmp_path_factory.mktemp("saved")
    run_python(SAVE, directory)
    return directory


@pytest.fixture(scope="module")
def load_report(saved_models):
    """What a second fresh process found loading them, first without, then after ``import tf_largebatch``."""
    return json.loads(run_python(LOAD, saved_models).splitlines()[-1])


def test_import_registers_every_class(saved_models):
    # Read in the saving process, right after its import tf_largebatch.
    found = json.loads((saved_models / "registered.json").read_text())
    assert found == {name: name for name in REGISTERED}


def test_a_model_saved_in_one_process_loads_in_another_after_only_import_tf_largebatch(load_report):
    report = load_report
    assert report["sngm"]["learning_rate"]["registered_name"] == "tf_largebatch>WarmupCosineDecay"
    for name, optimizer_class in [("sngm", "SNGM"), ("vrlamb", "VRLAMB")]:
        entry = report[name]
        assert entry["optimizer_class"] == optimizer_class
        assert entry["layer_classes"] == ["Dense", "GhostBatchNormalization", "Dense"]
        assert entry["weights_equal"] and entry["optimizer_equal"] and entry["prediction_close"], entry


def test_without_tf_largebatch_the_load_fails(load_report):
    """The check above can fail: without the import, Keras cannot find the classes
    (the same process, before its ``import tf_largebatch``)."""
    assert load_report["without_tf_largebatch"].startswith("failed:")


def test_under_the_launcher_the_package_defers_tensorflow_until_first_use(tmp_path):
    out = run_python("""
        import json, sys
        import tf_largebatch_cli
        import tf_largebatch
        before = "tensorflow" in sys.modules or "keras" in sys.modules
        version = tf_largebatch.__version__
        optimizer = tf_largebatch.SNGM
        import keras
        print(json.dumps({"before": before, "version": version, "after": "tensorflow" in sys.modules,
                          "class": optimizer.__name__,
                          "registered": keras.saving.get_registered_object("tf_largebatch>VRLAMB") is not None}))
    """, tmp_path)
    assert json.loads(out.splitlines()[-1]) == {"before": False, "version": "0.1.0", "after": True,
                                                 "class": "SNGM", "registered": True}


def test_unknown_attribute_is_an_attribute_error():
    import tf_largebatch

    with pytest.raises(AttributeError, match="no_such_name"):
        tf_largebatch.no_such_name  # noqa: B018


def test_a_backend_other_than_tensorflow_is_a_clear_error(tmp_path):
    out = run_python("""
        try:
            import tf_largebatch
        except ImportError as error:
            print(error)
        else:
            print("imported")
    """, tmp_path, KERAS_BACKEND="numpy")
    message = out.splitlines()[-1]
    assert "TensorFlow backend" in message and "'numpy'" in message and "KERAS_BACKEND=tensorflow" in message


def test_the_package_metadata_allows_exactly_the_keras_versions_the_seam_accepts():
    import re

    from tf_largebatch.optimizers import keras_seam

    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    low, high = re.search(r'"keras>=(\d+\.\d+),<(\d+\.\d+)"', text).groups()
    assert tuple(map(int, low.split("."))) == keras_seam.SUPPORTED_KERAS_MIN
    assert tuple(map(int, high.split("."))) == keras_seam.SUPPORTED_KERAS_MAX_EXCLUSIVE


def test_the_core_install_imports_without_any_extra(tmp_path):
    """``pip install tf_largebatch`` brings tensorflow, keras and numpy only; the
    package and every class it registers must import with nothing else."""
    extras = ["yaml", "tensorflow_datasets", "matplotlib", "tqdm", "keras_hub", "tensorflow_text", "tensorboard"]
    out = run_python(f"""
        import sys
        for name in {extras!r}:
            sys.modules[name] = None               # as if not installed
        import keras
        import tf_largebatch
        print(keras.saving.get_registered_object("tf_largebatch>VRLAMB").__name__)
    """, tmp_path)
    assert out.splitlines()[-1] == "VRLAMB"
