"""AdaScale's training-step overhead over its inner optimizer, beside the VR family's, as CPU-time ratios.

    python benchmarks/adascale_overhead.py                      # one device, 2 micro-batches per update
    python benchmarks/adascale_overhead.py --replicas 4         # MirroredStrategy over 4 logical CPUs
    python benchmarks/adascale_overhead.py --threads 1 --rounds 15 --params 1000000

Contenders, each on its own copy of the same MLP, all with the same replica and
accumulation layout (AdaScale and VR need k >= 2 gradient samples per update,
so the baseline runs with the same ``gradient_accumulation_steps``):

* ``SGD+momentum`` (Keras's own, the baseline);
* ``AdaScale(SGD+momentum)``: the gain ratio from the update's one all-reduce;
* ``VRMomentum``: the VR family on the same base (same collective, both moments).

Method: every contender is compiled and warmed up with a short ``fit``; then
they are timed in interleaved rounds (the order rotates every round), each
round one ``fit`` of ``--steps`` batches on one in-memory batch. The result is
the median over rounds of the *paired* ratio (contender / baseline in the same
round) of process CPU time (``time.process_time``), which tolerates a busy
machine far better than wall time; the wall-time ratio is printed beside it.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

MAX_REPLICAS = 4


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=300_000, help="approximate trainable parameters")
    parser.add_argument("--batch", type=int, default=64, help="global batch per fit step")
    parser.add_argument("--replicas", type=int, default=1, help="MirroredStrategy replicas (1: one device)")
    parser.add_argument("--accumulation", type=int, default=None,
                        help="gradient_accumulation_steps (default 2 on one device, else none)")
    parser.add_argument("--steps", type=int, default=20, help="fit steps per timed round")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds")
    parser.add_argument("--threads", type=int, default=None, help="TensorFlow intra/inter-op threads")
    return parser.parse_args()


def configure(args):
    """Logical CPUs and threads, before TensorFlow initialises its runtime."""
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration() for _ in range(MAX_REPLICAS)])
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)


def contenders(accumulation):
    import keras

    import tf_largebatch.optimizers as tlb

    keywords = {"gradient_accumulation_steps": accumulation} if accumulation else {}
    return {
        "SGD+momentum": lambda: keras.optimizers.SGD(0.01, momentum=0.9, **keywords),
        "AdaScale(SGD+momentum)": lambda: tlb.AdaScale(keras.optimizers.SGD(0.01, momentum=0.9), **keywords),
        "VRMomentum": lambda: tlb.VRMomentum(0.01, momentum=0.9, **keywords),
    }


def build_model(optimizer, params, strategy):
    import keras

    width = int((params / 3) ** 0.5)  # three width x width layers dominate
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((width,))] + [keras.layers.Dense(width, activation="relu")
                                                             for _ in range(3)] + [keras.layers.Dense(10)])
        model.compile(optimizer=optimizer(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, width


def timed_fit(model, dataset, steps):
    cpu, wall = time.process_time(), time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return time.process_time() - cpu, time.perf_counter() - wall


def main():
    args = parse_arguments()
    configure(args)
    import numpy as np

    accumulation = args.accumulation if args.accumulation is not None else (2 if args.replicas == 1 else None)
    strategy = (tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(args.replicas)])
                if args.replicas > 1 else tf.distribute.get_strategy())
    models = {}
    for name, factory in contenders(accumulation).items():
        models[name], width = build_model(factory, args.params, strategy)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, width)).astype("float32")
    y = rng.integers(0, 10, size=(args.batch,))
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    for model in models.values():
        timed_fit(model, dataset, max(4, args.steps // 4))  # trace, build, warm up
    names = list(models)
    times = {name: [] for name in names}
    for round_number in range(args.rounds):
        order = names[round_number % len(names):] + names[:round_number % len(names)]
        for name in order:
            times[name].append(timed_fit(models[name], dataset, args.steps))
    parameters = models[names[0]].count_params()
    print(f"model: MLP {parameters} parameters, global batch {args.batch}, replicas {args.replicas}, "
          f"gradient_accumulation_steps {accumulation}, {args.steps} steps x {args.rounds} rounds, "
          f"threads {args.threads or 'default'}, load {open('/proc/loadavg').read().split()[:3]}")
    print(f"{'contender':<24} {'CPU ratio':>10} {'wall ratio':>11} {'CPU s/step':>11}")
    baseline = times[names[0]]
    for name in names:
        cpu = statistics.median(c / b[0] for (c, _), b in zip(times[name], baseline))
        wall = statistics.median(w / b[1] for (_, w), b in zip(times[name], baseline))
        per_step = statistics.median(c for c, _ in times[name]) / args.steps
        print(f"{name:<24} {cpu:>10.3f} {wall:>11.3f} {per_step:>11.5f}")


if __name__ == "__main__":
    main()
