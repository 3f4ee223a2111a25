"""Test setup: four logical CPU devices, configured before TensorFlow initialises.

Replica tests use ``tf.distribute.MirroredStrategy`` over these devices; they
must be set up before any TensorFlow op runs, so this happens at import time of
the first conftest.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

NUM_LOGICAL_CPUS = 4

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(NUM_LOGICAL_CPUS)]
)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def cpu_devices():
    """Names of the logical CPU devices, e.g. ``["/cpu:0", ..., "/cpu:3"]``."""
    return [f"/cpu:{i}" for i in range(NUM_LOGICAL_CPUS)]


@pytest.fixture
def mirrored():
    """``mirrored(n)`` builds a MirroredStrategy over the first ``n`` logical CPUs."""
    from distribute_utils import mirrored_strategy

    return mirrored_strategy


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.backend.clear_session()
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run first (otherwise in collection order).

    Under pytest-xdist the run ends when the last worker finishes; a
    minute-long test that starts near the end keeps one worker busy while the
    other idles. Started first, the slow tests overlap with the many short ones,
    which then even out the end. The sort is stable and only moves marked tests.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
