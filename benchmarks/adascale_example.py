"""A small-batch recipe at 8-64x the batch, with and without AdaScale (the example of docs/adascale.md).

    python benchmarks/adascale_example.py                      # 3 seeds, scales 8 16 64
    python benchmarks/adascale_example.py --seeds 5 --scales 8 32

Task: 32-dimensional Gaussian inputs labelled by a random two-layer teacher
network, each label *sampled* from the teacher's softmax (so the gradient
noise does not vanish); a 32-64-10 MLP student; 8192 training, 2048
validation and 2048 test examples.

Base recipe (batch ``B_0 = 16``): SGD with momentum 0.9, cosine decay over
``T_0 = --base-steps`` updates; the peak learning rate is picked from
``--lrs`` by mean validation accuracy over the seeds. At each scale ``S`` (batch
``S B_0``), three contenders, every one with the base recipe's hyper-parameters
and no tuning at the large batch:

* ``unchanged``: the base learning rate and schedule, over the same epochs
  (``T_0 / S`` updates);
* ``linear``: the linear scaling rule, peak ``S`` times the base one, 5 %
  linear warm-up, over ``T_0 / S`` updates (Goyal et al. 2017);
* ``AdaScale``: ``AdaScale(SGD(base schedule), scale=S)`` with ``min(S, 8)``
  gradient samples per update (accumulation micro-batches on one device), run
  until its clock reaches ``T_0``.

Printed per contender and scale: updates taken, examples processed (relative to
the base run), test accuracy, each as mean and 95 % t-interval over the seeds.
"""

import argparse
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_largebatch as tlb  # noqa: E402

T_975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}


def make_data(seed=0, n=(8192, 2048, 2048), dim=32, classes=10):
    """Teacher-labelled data with sampled labels, split (train, validation, test); the teacher is fixed."""
    rng = np.random.default_rng(seed)
    w1, w2 = rng.normal(size=(dim, 64)) / np.sqrt(dim), rng.normal(size=(64, classes)) * 3 / np.sqrt(64)
    x = rng.normal(size=(sum(n), dim)).astype("float32")
    logits = np.maximum(x @ w1, 0) @ w2
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(classes, p=row) for row in p])
    edges = np.cumsum(n)[:-1]
    return list(zip(np.split(x, edges), np.split(y, edges)))


def student(optimizer, seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def stream(train, batch, seed):
    return (tf.data.Dataset.from_tensor_slices(train).shuffle(len(train[0]), seed=seed).repeat()
            .batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))


def run_plain(train, evaluate, lr_schedule, batch, updates, seed):
    model = student(keras.optimizers.SGD(lr_schedule, momentum=0.9), seed)
    model.fit(stream(train, batch, seed), steps_per_epoch=updates, epochs=1, verbose=0)
    return updates, updates * batch, model.evaluate(*evaluate, verbose=0, batch_size=1024)[1]


def run_adascale(train, evaluate, lr_schedule, base_batch, scale, base_steps, seed):
    samples = min(scale, 8)
    optimizer = tlb.AdaScale(keras.optimizers.SGD(lr_schedule, momentum=0.9), scale=float(scale),
                             gradient_accumulation_steps=samples)
    model = student(optimizer, seed)
    batch = base_batch * scale
    model.fit(stream(train, batch // samples, seed), steps_per_epoch=10**9, epochs=1, verbose=0,
              callbacks=[tlb.optimizers.StopAtScaleInvariantSteps(base_steps)])
    updates = int(optimizer.iterations.numpy())
    return updates, updates * batch, model.evaluate(*evaluate, verbose=0, batch_size=1024)[1]


def interval(values):
    mean = statistics.mean(values)
    half = T_975.get(len(values), 1.96) * statistics.stdev(values) / np.sqrt(len(values)) if len(values) > 1 else 0
    return f"{mean:8.3f} ± {half:6.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scales", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--base-batch", type=int, default=16)
    parser.add_argument("--base-steps", type=int, default=600)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    args = parser.parse_args()
    train, val, test = make_data()
    seeds = list(range(args.seeds))
    b0, t0 = args.base_batch, args.base_steps

    def cosine(peak, steps, warmup=0):
        if warmup:
            return keras.optimizers.schedules.CosineDecay(0.0, steps - warmup, warmup_target=peak, warmup_steps=warmup)
        return keras.optimizers.schedules.CosineDecay(peak, steps)

    validation = {lr: [run_plain(train, val, cosine(lr, t0), b0, t0, s)[2] for s in seeds] for lr in args.lrs}
    lr = max(validation, key=lambda key: statistics.mean(validation[key]))
    by_lr = ", ".join(f"{k}: {statistics.mean(v):.3f}" for k, v in validation.items())
    print(f"load {open('/proc/loadavg').read().split()[:3]}; base recipe: batch {b0}, {t0} updates, "
          f"validation accuracy by peak lr: {by_lr} -> lr {lr}")
    rows = [("base", 1, [run_plain(train, test, cosine(lr, t0), b0, t0, s) for s in seeds])]
    for scale in args.scales:
        steps = max(t0 // scale, 1)
        rows.append(("unchanged", scale, [run_plain(train, test, cosine(lr, steps), b0 * scale, steps, s)
                                          for s in seeds]))
        rows.append(("linear", scale, [run_plain(train, test, cosine(lr * scale, steps, max(steps // 20, 1)),
                                                 b0 * scale, steps, s) for s in seeds]))
        rows.append(("AdaScale", scale, [run_adascale(train, test, cosine(lr, t0), b0, scale, t0, s)
                                         for s in seeds]))
    print(f"{'contender':<10} {'S':>3} {'updates':>18} {'examples / base':>18} {'test accuracy':>18}"
          f"   (n={len(seeds)})")
    for name, scale, results in rows:
        updates, examples, accuracy = zip(*results)
        print(f"{name:<10} {scale:>3} {interval(updates):>18} {interval([e / (b0 * t0) for e in examples]):>18} "
              f"{interval(accuracy):>18}")
    print(f"load {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
