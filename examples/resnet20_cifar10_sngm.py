"""ResNet-20 on CIFAR-10 with SNGM, the SNGM paper's setting (Section 7.1, Table 2).

What this shows, top to bottom:

1. a `tf.distribute` strategy: `TPUStrategy` on a TPU (`--tpu NAME`), else
   `MirroredStrategy` over every local GPU or the CPU;
2. a ResNet-20 for CIFAR (He et al. 2016, Section 4.2: three stages of 16, 32, 64
   filters, 3 basic blocks each) written with Keras layers, with
   `tf_largebatch.layers.GhostBatchNormalization` (batch statistics over
   `--virtual-batch-size` examples, whatever the batch size);
3. `tf_largebatch.optimizers.SNGM` as the paper trains it: momentum 0.9, weight decay
   1e-4 (batch-norm parameters and biases excluded), cosine learning rate without
   restarts and without warm-up (`keras.optimizers.schedules.CosineDecay`), and
   gradient accumulation where a device's share of the batch is larger than 128;
4. `model.fit` with `tf_largebatch.callbacks.GSNRMonitor` (the gradient noise scale;
   `record_gradient_statistics=True` makes SNGM record its gradient statistics from
   k = replicas x `gradient_accumulation_steps` >= 2 samples per update) and
   `keras.callbacks.ModelCheckpoint` (a `.keras` file per epoch, optimizer state
   included), then `model.evaluate` on the test split.

By default it runs on synthetic images (a few hundred examples, 2 epochs) and
finishes on a CPU in seconds. The paper's run, on CIFAR-10 from TensorFlow Datasets
(prepared beforehand, e.g. `tfds build cifar10`; nothing is downloaded):

    python examples/resnet20_cifar10_sngm.py --data cifar10 --global-batch-size 4096 \\
        --accumulation 4 --epochs 160 --learning-rate 1.6 --model-dir /tmp/resnet20_sngm

(the paper tunes the learning rate per batch size and does not publish it; 1.6 is a
starting point). The shipped, tested configurations of this setting run with the
command line: `tf-largebatch train --experiment resnet20_sngm_1024_v3-8`
(docs/pipelines.md).

References: Zhao, Shi, Xie and Li, "Stochastic Normalized Gradient Descent with
Momentum for Large-Batch Training" (SNGM); He et al., "Deep Residual Learning for Image
Recognition" (2016); Hoffer, Hubara and Soudry, "Train longer, generalize better"
(ghost batch norm).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_largebatch as tlb  # noqa: E402
from tf_largebatch.layers import GhostBatchNormalization  # noqa: E402

NO_DECAY = ["ghost_batch_normalization", "bias"]   # matched against variable paths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="ResNet-20 on CIFAR-10 with SNGM.")
    parser.add_argument("--tpu", default=None, help="TPU name ('local' on a TPU VM); default: GPUs or the CPU")
    parser.add_argument("--data", choices=("synthetic", "cifar10"), default="synthetic")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory holding a prepared cifar10")
    parser.add_argument("--synthetic-examples", type=int, default=256)
    parser.add_argument("--depth", type=int, default=20, help="6n+2: 20, 32, 44, 56, 110")
    parser.add_argument("--global-batch-size", type=int, default=64, help="examples per optimizer update")
    parser.add_argument("--accumulation", type=int, default=2, help="gradient_accumulation_steps")
    parser.add_argument("--virtual-batch-size", type=int, default=16, help="ghost batch norm group size")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=0.5, help="peak of the cosine schedule")
    parser.add_argument("--model-dir", default="/tmp/resnet20_sngm")
    return parser.parse_args(argv)


def make_strategy(tpu):
    """TPUStrategy on a TPU, else MirroredStrategy over the GPUs or the CPU."""
    if tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.MirroredStrategy()  # every local GPU, or the CPU


def resnet_cifar(depth, virtual_batch_size, num_classes=10):
    """ResNet-(6n+2) for 32x32 images (He et al. 2016, Section 4.2), ghost batch norm."""
    if (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2, got {depth}")
    blocks = (depth - 2) // 6

    def conv_bn(x, filters, stride, relu=True):
        x = keras.layers.Conv2D(filters, 3, stride, padding="same", use_bias=False,
                                kernel_initializer="he_normal")(x)
        x = GhostBatchNormalization(virtual_batch_size=virtual_batch_size)(x)
        return keras.layers.ReLU()(x) if relu else x

    inputs = keras.Input((32, 32, 3))
    x = conv_bn(inputs, 16, 1)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            if stride != 1 or x.shape[-1] != filters:   # projection shortcut
                shortcut = keras.layers.Conv2D(filters, 1, stride, use_bias=False)(x)
                shortcut = GhostBatchNormalization(virtual_batch_size=virtual_batch_size)(shortcut)
            y = conv_bn(x, filters, stride)
            y = conv_bn(y, filters, 1, relu=False)
            x = keras.layers.ReLU()(keras.layers.Add()([shortcut, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")


def make_datasets(args, batch_size):
    """(train, test, train examples): batches of (image in [0, 1], label)."""
    if args.data == "cifar10":
        import tensorflow_datasets as tfds  # pip install tensorflow-datasets

        (train, test), info = tfds.load("cifar10", split=["train", "test"], as_supervised=True,
                                        data_dir=args.data_dir, download=False, with_info=True)
        examples = info.splits["train"].num_examples
    else:
        def synthetic(seed):
            return tf.data.Dataset.random(seed=seed).take(args.synthetic_examples).map(lambda s: (
                tf.random.stateless_uniform([32, 32, 3], [s, 0], maxval=256, dtype=tf.int32),
                tf.random.stateless_uniform([], [s, 1], maxval=10, dtype=tf.int32)))
        train, test, examples = synthetic(0), synthetic(1), args.synthetic_examples

    def augment(image, label):   # pad 4, random 32x32 crop, random flip
        image = tf.image.resize_with_crop_or_pad(image, 40, 40)
        image = tf.image.random_flip_left_right(tf.image.random_crop(image, [32, 32, 3]))
        return image, label

    def scale(image, label):
        return tf.cast(image, tf.float32) / 255.0, label

    train = (train.cache().shuffle(50_000).map(scale).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
             .batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    test = test.map(scale).batch(batch_size)
    return train, test, examples


def main(argv=None):
    args = parse_args(argv)
    strategy = make_strategy(args.tpu)
    k = strategy.num_replicas_in_sync * args.accumulation
    if args.global_batch_size % (k * args.virtual_batch_size):
        raise SystemExit("--global-batch-size must be a multiple of replicas x --accumulation x "
                         f"--virtual-batch-size = {k * args.virtual_batch_size}")
    micro_batch = args.global_batch_size // args.accumulation   # examples per fit step, over all replicas
    train, test, examples = make_datasets(args, micro_batch)
    updates_per_epoch = examples // args.global_batch_size

    with strategy.scope():
        model = resnet_cifar(args.depth, args.virtual_batch_size)
        optimizer = tlb.optimizers.SNGM(
            learning_rate=keras.optimizers.schedules.CosineDecay(args.learning_rate,
                                                                 decay_steps=args.epochs * updates_per_epoch),
            momentum=0.9,
            weight_decay=1e-4,                    # coupled: added to the gradient before the normalisation
            exclude_from_weight_decay=NO_DECAY,
            gradient_accumulation_steps=args.accumulation,
            record_gradient_statistics=True,      # for GSNRMonitor
        )
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])

    callbacks = [keras.callbacks.ModelCheckpoint(os.path.join(args.model_dir, "epoch_{epoch:03d}.keras"))]
    if k >= 2:   # the noise scale needs k >= 2 gradient samples per update
        callbacks.append(tlb.callbacks.GSNRMonitor(os.path.join(args.model_dir, "gsnr"),
                                                   global_batch_size=args.global_batch_size,
                                                   update_freq=args.accumulation))
    model.fit(train, epochs=args.epochs, steps_per_epoch=updates_per_epoch * args.accumulation,
              shuffle=False, callbacks=callbacks, verbose=2)
    loss, accuracy = model.evaluate(test, verbose=0)
    print(f"ResNet-{args.depth} with SNGM: {int(optimizer.iterations)} updates, test loss {loss:.4f}, "
          f"test accuracy {accuracy:.4f}; checkpoints and TensorBoard events in {args.model_dir}")


if __name__ == "__main__":
    main()
