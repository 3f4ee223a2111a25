"""Test setup: four logical CPU devices, configured before TensorFlow initialises.

Replica tests use ``tf.distribute.MirroredStrategy`` over these devices; they
must be set up before any TensorFlow op runs, so this happens at import time of
the first conftest.
"""

import gc
import os
import time

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


# A test that used more CPU than this leaves its garbage to a full collection.
_COLLECT_AFTER_CPU_SECONDS = 1.0


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Every test starts from a fresh Keras state and fixed seeds.

    ``clear_session``'s own full garbage collection costs about 0.2 s of CPU
    in a worker that has TensorFlow loaded, more than most tests take, so it
    is run only after a test that used more than a second of CPU (the ones
    that build models big enough to matter for memory); Python's generational
    collector takes care of the rest.
    """
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    start = time.process_time()
    yield
    if time.process_time() - start > _COLLECT_AFTER_CPU_SECONDS:
        gc.collect()


def pytest_collection_finish(session):
    """What is alive once every test module is imported lives to the end: frozen.

    ``gc.freeze`` moves those objects (TensorFlow's, Keras's and the test
    modules' own, about 400,000) out of the collector's generations, so the
    full collections after the heavier tests (``_fresh_keras_state``) no
    longer walk them each time; they are never garbage anyway.
    """
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run first (otherwise in collection order).

    Under pytest-xdist the run ends when the last worker finishes; a
    minute-long test that starts near the end keeps one worker busy while the
    other idles. Started first, the slow tests overlap with the many short ones,
    which then even out the end. The sort is stable and only moves marked tests.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
