"""A reference model saved by the runner loads after only ``import tf_largebatch``.

``final.keras`` of a CIFAR ResNet holds the ``ChannelPadShortcut`` layer; a
fresh process that imports only ``tf_largebatch`` (not the pipelines) must find
it, as it finds the optimizers.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from tf_largebatch.pipelines import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LOAD = """
    import json, sys, keras, numpy as np
    import tf_largebatch
    assert "tf_largebatch.pipelines" not in sys.modules
    model = keras.saving.load_model("resnet.keras")
    x = np.asarray(json.load(open("x.json")), "float32")
    print(json.dumps({"layers": sorted({type(layer).__name__ for layer in model.layers}),
                      "prediction": model.predict(x, verbose=0).tolist()}))
"""


def test_a_saved_cifar_resnet_loads_after_only_import_tf_largebatch(tmp_path):
    model = models.resnet20(num_classes=3, depth=8, width=4, image_size=8)
    model.compile(optimizer="sgd", loss="mse")
    model.save(tmp_path / "resnet.keras")
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    (tmp_path / "x.json").write_text(json.dumps(x.tolist()))
    environment = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    environment.update(PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(LOAD)], cwd=tmp_path, env=environment,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert "ChannelPadShortcut" in report["layers"]
    np.testing.assert_allclose(report["prediction"], model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
