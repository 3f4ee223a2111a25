"""Training throughput of a run, measured per loop after compilation, and the devices it ran on."""

import platform
import time

import keras


class LoopTimer(keras.callbacks.Callback):
    """Wall-clock time of each loop's training steps (one Keras epoch each).

    A loop's time runs from its start to the start of its evaluation (Keras
    has read the loop's metrics by then, so the device work is finished), or
    to its end without evaluation; evaluation, checkpoints and backups are
    not counted. The first loop a ``fit`` runs includes tracing and
    compilation and is left out of :meth:`rates`.

    Args:
        updates_per_loop: optimizer updates per loop.
        examples_per_update: examples per optimizer update (the global batch size).
    """

    def __init__(self, updates_per_loop, examples_per_update):
        super().__init__()
        self.updates_per_loop = updates_per_loop
        self.examples_per_update = examples_per_update
        self.loop_seconds = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def _stop(self):
        if self._start is not None:
            self.loop_seconds.append(time.perf_counter() - self._start)
            self._start = None

    def on_test_begin(self, logs=None):
        self._stop()

    def on_epoch_end(self, epoch, logs=None):
        self._stop()

    def rates(self):
        """``{"seconds_per_step", "examples_per_second", "measured_steps"}`` over
        every loop but the first (``None`` values if fewer than two loops ran);
        a step is one optimizer update."""
        measured = self.loop_seconds[1:]
        steps = len(measured) * self.updates_per_loop
        if not steps:
            return {"seconds_per_step": None, "examples_per_second": None, "measured_steps": 0}
        seconds = sum(measured)
        return {
            "seconds_per_step": seconds / steps,
            "examples_per_second": steps * self.examples_per_update / seconds,
            "measured_steps": steps,
        }


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def device_description(strategy):
    """``{"device_kind", "device_count"}``: what the replicas of ``strategy`` run on.

    ``device_kind`` is the device type and, where TensorFlow reports it, the
    model (``"GPU: NVIDIA A100-SXM4-40GB"``, ``"TPU"``, ``"CPU: <model name>"``);
    ``device_count`` is the number of replicas. Logical CPUs of one host share
    its cores: their count is not a count of processors.
    """
    import tensorflow as tf

    devices = strategy.extended.worker_devices
    kind = tf.DeviceSpec.from_string(devices[0]).device_type or "CPU"
    detail = None
    if kind == "GPU":
        physical = tf.config.list_physical_devices("GPU")
        if physical:
            detail = tf.config.experimental.get_device_details(physical[0]).get("device_name")
    elif kind == "CPU":
        detail = _cpu_name()
    return {
        "device_kind": f"{kind}: {detail}" if detail else kind,
        "device_count": strategy.num_replicas_in_sync,
    }
