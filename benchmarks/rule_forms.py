"""Forms of a sum of squares and of Adam's root update, timed alone in graph mode and under XLA.

    python benchmarks/rule_forms.py            # a 874 x 874 float32 tensor, one TensorFlow thread

CPU ms per call (median of interleaved rounds) of:

* the sum of squares as ``reduce_sum(x)`` (a plain read, for scale), ``2 * l2_loss(x)``,
  ``reduce_sum(square(x))`` and the row sums of ``x**2`` by a matrix-vector product with
  ones (``rules._sum_of_squares_by_rows``);
* the update ``r <- sqrt(d r**2 + (1 - d) g**2)`` of Adam's root, written to a variable:
  unguarded (overflows for |g| > ~1.8e19), guarded by the largest inputs (what
  ``rules.root_moving_average`` runs in graph mode), guarded by the largest element of
  ``v`` itself, and in the ``hypot`` form (what it runs under XLA).

Which form is cheaper differs between graph mode and XLA:CPU; ``rules`` picks per mode.
"""

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine_state import MachineState  # noqa: E402
from tf_largebatch.optimizers import rules  # noqa: E402


def _guarded_by_v(root, value, decay):
    kept, added = tf.sqrt(decay) * root, tf.sqrt(1.0 - decay) * value
    plain = tf.square(kept) + tf.square(added)
    return tf.cond(tf.math.is_finite(tf.reduce_max(plain)), lambda: tf.sqrt(plain), lambda: rules.hypot(kept, added))


def main():
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    x = tf.Variable(rng.normal(size=(874, 874)).astype("float32"))
    root = tf.Variable(np.abs(rng.normal(size=(874, 874))).astype("float32"))
    decay = tf.constant(0.999)
    forms = {
        "sum: reduce_sum(x) (a read)": lambda: tf.reduce_sum(x),
        "sum of squares: 2 * l2_loss": lambda: 2.0 * tf.nn.l2_loss(x),
        "sum of squares: reduce_sum(square)": lambda: tf.reduce_sum(tf.square(x)),
        "sum of squares: rows by matvec": lambda: rules._sum_of_squares_by_rows(tf.convert_to_tensor(x)),
        "root: unguarded": lambda: root.assign(tf.sqrt(decay * tf.square(root) + (1 - decay) * tf.square(x)))[0, 0],
        "root: guard on the inputs": lambda: root.assign(
            rules.root_moving_average(root, x, 0.999, underflow_tolerance=1.0))[0, 0],
        "root: guard on v": lambda: root.assign(_guarded_by_v(root, x, decay))[0, 0],
        "root: hypot": lambda: root.assign(rules.root_moving_average(root, x, 0.999))[0, 0],
    }
    with MachineState():
        print("command: python benchmarks/rule_forms.py")
        functions = {(name, jit): tf.function(form, jit_compile=jit, autograph=False)
                     for name, form in forms.items() for jit in (False, True)}
        for function in functions.values():
            function(), function()
        times = {key: [] for key in functions}
        for _ in range(7):
            for key, function in functions.items():
                start = time.process_time()
                for _ in range(40):
                    function()
                times[key].append((time.process_time() - start) / 40 * 1e3)
        print(f"{'form (874 x 874 float32)':<38}{'graph ms':>10}{'XLA ms':>10}")
        for name in forms:
            print(f"{name:<38}{statistics.median(times[(name, False)]):>10.3f}"
                  f"{statistics.median(times[(name, True)]):>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
