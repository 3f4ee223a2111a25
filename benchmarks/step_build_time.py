"""How long the first training step takes to build: ResNet-50, Keras SGD against the package's optimizers.

    python benchmarks/step_build_time.py            # each optimizer in its own process, one thread

The first ``train_on_batch`` of a model traces the train step (the model's
forward and backward passes and the optimizer's update of every variable) and
lets TensorFlow optimise the graph; later steps reuse it. A layer-wise
optimizer adds its norms and trust ratio for each variable, so its share grows
with the number of variables (214 in ResNet-50). Printed: the first step's
wall and CPU seconds, and the second step's wall seconds, per optimizer, each
built in a fresh process so that no trace is reused between them. "LARS, guard
inline" is LARS with the overflow-free norm's guard traced as a ``tf.cond``
for every norm (``rules.l2_norm``'s form in a trace that XLA compiles), the
form graph mode used before the guard became one function traced once.
"""

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

OPTIMIZERS = ("Keras SGD+momentum", "SNGM", "LARS", "LARS, guard inline", "LAMB")


def _optimizer(name):
    import keras

    import tf_largebatch as tlb
    from tf_largebatch.optimizers import rules

    if name == "LARS, guard inline":
        def inline_guard(x, plain_sum_of_squares=None):
            x = rules.as_float32(x)
            plain = rules.sum_of_squares(x) if plain_sum_of_squares is None else plain_sum_of_squares
            return rules._norm_from_sum_of_squares(plain, rules._num_elements(x), lambda: rules._scaled_l2_norm(x))

        rules.l2_norm = inline_guard
    return {
        "Keras SGD+momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        "SNGM": lambda: tlb.optimizers.SNGM(0.1),
        "LARS": lambda: tlb.optimizers.LARS(1.0),
        "LARS, guard inline": lambda: tlb.optimizers.LARS(1.0),
        "LAMB": lambda: tlb.optimizers.LAMB(1e-3),
    }[name]()


def _one(name):
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10)
    model.compile(optimizer=_optimizer(name), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 32, 32, 3), dtype=np.float32), rng.integers(0, 10, 8)
    wall, cpu = time.perf_counter(), time.process_time()
    model.train_on_batch(x, y)
    first_wall, first_cpu = time.perf_counter() - wall, time.process_time() - cpu
    wall = time.perf_counter()
    model.train_on_batch(x, y)
    print(f"{name:<22}{first_wall:>12.1f}{first_cpu:>12.1f}{time.perf_counter() - wall:>12.2f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", choices=OPTIMIZERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        _one(args.one)
        return 0
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tensorflow as tf
    from machine_state import MachineState

    tf.config.threading.set_intra_op_parallelism_threads(1)  # as in each child, so that the header says so
    tf.config.threading.set_inter_op_parallelism_threads(1)

    with MachineState():
        print("command: python benchmarks/step_build_time.py")
        print("ResNet-50 (32 x 32 inputs, 10 classes), batch 8, one device, graph mode, one TensorFlow thread")
        print(f"{'optimizer':<22}{'1st wall s':>12}{'1st CPU s':>12}{'2nd wall s':>12}", flush=True)
        for name in OPTIMIZERS:
            subprocess.run([sys.executable, os.path.abspath(__file__), "--one", name], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
