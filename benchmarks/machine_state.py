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

import ctypes
import ctypes.util
import os
import threading
import time

#: Highest 1-minute load average (this benchmark's own threads included) of a quiet run.
QUIET_LOAD = 1.5

#: ``--malloc`` choices: the C library's default, or freed memory kept for reuse (:func:`configure_malloc`).
MALLOC_CHOICES = ("default", "pooled")

_malloc_setting = "default"

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def add_malloc_argument(parser):
    """Adds ``--malloc {default,pooled}`` to a benchmark's argument parser."""
    parser.add_argument(
        "--malloc", choices=MALLOC_CHOICES, default="default",
        help="'pooled': glibc keeps freed memory for reuse instead of returning each large temporary to the "
             "kernel (which then zeroes fresh pages on the next step, counted as system time), as an "
             "accelerator's pooling allocator does; Linux with glibc only (default: %(default)s)")


def configure_malloc(choice):
    """Applies ``--malloc`` before TensorFlow allocates; returns the setting in effect.

    TensorFlow's CPU allocator takes its tensors from the C library's
    ``malloc``. glibc serves blocks above its mmap threshold (at most 32 MB)
    with ``mmap`` and returns them with ``munmap`` when freed, so a step that
    creates a temporary of 4-40 MB (a parameter-sized tensor at 1e6-1e7
    parameters) makes the kernel map and zero fresh pages on every step: system
    time that grows with the number of temporaries and swings with the
    machine's memory pressure. ``"pooled"`` raises the mmap and trim
    thresholds (``mallopt``) so freed blocks stay in the heap and are reused,
    which is what the pooling (BFC) allocators of GPUs and TPUs do. Elsewhere
    than glibc it changes nothing and says so.
    """
    global _malloc_setting
    if choice == "default":
        return _malloc_setting
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or os.uname().sysname != "Linux":
        _malloc_setting = "default (pooled asked for, but no glibc mallopt here)"
        return _malloc_setting
    applied = (mallopt(_M_MMAP_THRESHOLD, 2**30) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
               and mallopt(_M_TOP_PAD, 2**28))
    _malloc_setting = ("pooled (glibc mmap threshold 1 GiB, trim threshold 2 GiB, top pad 256 MiB)" if applied
                       else "default (glibc refused the pooled settings)")
    return _malloc_setting


def thread_settings():
    """TensorFlow's intra- and inter-op thread counts (0: TensorFlow's choice) and OMP_NUM_THREADS."""
    import tensorflow as tf

    return (f"TensorFlow threads: intra-op {tf.config.threading.get_intra_op_parallelism_threads()}, "
            f"inter-op {tf.config.threading.get_inter_op_parallelism_threads()} (0 = TensorFlow's choice); "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; malloc: {_malloc_setting}")


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
        self._wall, self._cpu, self._times = time.perf_counter(), time.process_time(), os.times()
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
        times = os.times()
        user, system = times.user - self._times.user, times.system - self._times.system
        low, high = min(self.samples), max(self.samples)
        mean = sum(self.samples) / len(self.samples)
        text = (f"\nmachine state: 1-minute load average over the run min {low:.2f} / mean {mean:.2f} / max "
                f"{high:.2f} ({len(self.samples)} samples, every {self.interval:.0f} s; this benchmark's own use "
                f"{cpu / max(wall, 1e-9):.2f} cores: {cpu:.0f} s CPU ({user:.0f} s user + {system:.0f} s system) in "
                f"{wall:.0f} s)")
        if high > self.quiet_load:
            text += (f"\nWARNING: the load went above {self.quiet_load} during the run: the machine was busy, so "
                     "quote these ratios as measured on a busy machine (CPU-time ratios with --threads 1 suffer "
                     "least), or re-run on a quiet one.")
        return text
