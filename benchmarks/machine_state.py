"""The machine state a benchmark ran in: load average over the whole run, and thread settings.

Every benchmark of this directory prints, at its start, the TensorFlow and
Keras versions, the CPU count and the thread settings, and at its end the
1-minute load average sampled every few seconds over the whole run (min,
mean, max) beside the benchmark's own CPU use, with a warning when the load
went above :data:`QUIET_LOAD`: ratios measured then come from a busy machine
and are marked as such wherever they are quoted.

    with MachineState() as state:
        ...                     # the benchmark
    # prints the header on entry and the load summary on exit
"""

import os
import threading
import time

#: Highest 1-minute load average (this benchmark's own threads included) of a quiet run.
QUIET_LOAD = 1.5


def thread_settings():
    """TensorFlow's intra- and inter-op thread counts (0: TensorFlow's choice) and OMP_NUM_THREADS."""
    import tensorflow as tf

    return (f"TensorFlow threads: intra-op {tf.config.threading.get_intra_op_parallelism_threads()}, "
            f"inter-op {tf.config.threading.get_inter_op_parallelism_threads()} (0 = TensorFlow's choice); "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")


class MachineState:
    """Samples the 1-minute load average every ``interval`` seconds in a daemon thread.

    Args:
        interval: seconds between samples.
        quiet_load: the load above which the summary warns.
    """

    def __init__(self, interval=5.0, quiet_load=QUIET_LOAD):
        self.interval = interval
        self.quiet_load = quiet_load
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.interval):
                return

    def header(self):
        import keras
        import tensorflow as tf

        return (f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores; "
                + thread_settings())

    def __enter__(self):
        print(self.header(), flush=True)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])
        print(self.summary(), flush=True)
        return False

    def summary(self):
        """Load over the run, this process's CPU use, and a warning line when the load was high."""
        wall = time.perf_counter() - self._wall
        cpu = time.process_time() - self._cpu
        low, high = min(self.samples), max(self.samples)
        mean = sum(self.samples) / len(self.samples)
        text = (f"\nmachine state: 1-minute load average over the run min {low:.2f} / mean {mean:.2f} / max "
                f"{high:.2f} ({len(self.samples)} samples, every {self.interval:.0f} s; this benchmark's own use "
                f"{cpu / max(wall, 1e-9):.2f} cores: {cpu:.0f} s CPU in {wall:.0f} s)")
        if high > self.quiet_load:
            text += (f"\nWARNING: the load went above {self.quiet_load} during the run: the machine was busy, so "
                     "quote these ratios as measured on a busy machine (CPU-time ratios with --threads 1 suffer "
                     "least), or re-run on a quiet one.")
        return text
