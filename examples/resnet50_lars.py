"""ResNet-50 with LARS (or SNGM) in your own `model.fit`.

What this shows, top to bottom:

1. a `tf.distribute` strategy: `TPUStrategy` on a TPU (`--tpu NAME`), else
   `MirroredStrategy` over every local GPU or the CPU;
2. Keras's own `keras.applications.ResNet50(weights=None)`, built in the strategy scope;
3. `tf_largebatch.optimizers.LARS` as MLPerf's ResNet-50 recipe configures it: momentum
   0.9, weight decay, batch-norm parameters and biases excluded from the decay and from
   the layer-wise trust ratio, linear warm-up then polynomial (power 2) decay
   (`tf_largebatch.schedules.WarmupPolynomialDecay`), label smoothing 0.1 from the Keras
   loss; or `--optimizer sngm` (`tf_largebatch.optimizers.SNGM`: momentum on the
   globally normalised gradient, same schedule and exclusions);
4. the learning rate scaled from a reference batch size with
   `tf_largebatch.scaling.scale_learning_rate`;
5. `model.fit` with `tf_largebatch.callbacks.GSNRMonitor` (the gradient noise scale: the
   optimizer records its gradient statistics with `record_gradient_statistics=True`,
   from k = replicas x `gradient_accumulation_steps` >= 2 samples per update),
   `keras.callbacks.BackupAndRestore` (a rerun resumes where a killed run stopped) and a
   final `model.save`.

By default it is tiny (32x32 synthetic images, 10 classes, a few steps) and runs on a
CPU in seconds. ImageNet at pod scale (TFDS `imagenet2012`, prepared beforehand with
`tfds build`; nothing is downloaded):

    python examples/resnet50_lars.py --tpu my-pod --data imagenet2012 --data-dir gs://my-bucket/tfds \\
        --image-size 224 --global-batch-size 32768 --accumulation 1 --epochs 64 --warmup-epochs 18 \\
        --base-learning-rate 0.1 --model-dir gs://my-bucket/resnet50_lars

The shipped, tested pod configurations (the papers' hyperparameters, the full input
pipeline) run with the command line: `tf-largebatch train --experiment
resnet50_lars_32k_v3-256` (docs/pipelines.md).

References: You, Gitman and Ginsburg, "Large Batch Training of Convolutional Networks"
(LARS, 2017); Zhao et al., "Stochastic Normalized Gradient Descent with Momentum for
Large-Batch Training" (SNGM); Goyal et al., "Accurate, Large Minibatch SGD" (linear
scaling, warm-up).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_largebatch as tlb  # noqa: E402

# keras.applications' paths: "conv2_block1_1_bn/gamma", "conv1_conv/bias", "predictions/bias".
NO_DECAY = ["_bn/", "bias"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="ResNet-50 with LARS or SNGM in model.fit.")
    parser.add_argument("--optimizer", choices=("lars", "sngm"), default="lars")
    parser.add_argument("--tpu", default=None, help="TPU name ('local' on a TPU VM); default: GPUs or the CPU")
    parser.add_argument("--data", choices=("synthetic", "imagenet2012"), default="synthetic")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory holding a prepared imagenet2012")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10, help="synthetic data only (ImageNet: 1000)")
    parser.add_argument("--global-batch-size", type=int, default=16, help="examples per optimizer update")
    parser.add_argument("--accumulation", type=int, default=2, help="gradient_accumulation_steps")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps-per-epoch", type=int, default=2, help="synthetic data only")
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--base-learning-rate", type=float, default=0.1, help="at batch 256, scaled linearly")
    parser.add_argument("--weight-decay", type=float, default=5e-5)
    parser.add_argument("--model-dir", default="/tmp/resnet50_lars")
    return parser.parse_args(argv)


def make_strategy(tpu):
    """TPUStrategy on a TPU, else MirroredStrategy over the GPUs or the CPU."""
    if tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    return tf.distribute.MirroredStrategy()  # every local GPU, or the CPU


def make_dataset(args, batch_size):
    """Batches of (image, one-hot label); returns (dataset, steps_per_epoch, num_classes)."""
    if args.data == "imagenet2012":
        import tensorflow_datasets as tfds  # pip install tensorflow-datasets

        builder = tfds.builder("imagenet2012", data_dir=args.data_dir)   # never downloads: prepare it first
        images = builder.as_dataset(split="train", shuffle_files=True, as_supervised=True)
        num_classes, examples = 1000, builder.info.splits["train"].num_examples
    else:
        images = tf.data.Dataset.random(seed=0).map(lambda s: (
            tf.random.stateless_uniform([args.image_size, args.image_size, 3], [s, 0], maxval=255),
            tf.random.stateless_uniform([], [s, 1], maxval=args.num_classes, dtype=tf.int32)))
        num_classes, examples = args.num_classes, args.steps_per_epoch * args.global_batch_size

    def preprocess(image, label):
        image = tf.image.resize(tf.cast(image, tf.float32), [args.image_size, args.image_size])
        return keras.applications.resnet.preprocess_input(image), tf.one_hot(label, num_classes)

    dataset = (images.shuffle(10_000).repeat().map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    return dataset, examples // args.global_batch_size, num_classes


def build_optimizer(args, steps_per_epoch):
    peak = tlb.scaling.scale_learning_rate(args.base_learning_rate, base_batch_size=256,
                                           batch_size=args.global_batch_size)
    schedule = tlb.schedules.WarmupPolynomialDecay(
        peak_learning_rate=peak, warmup_steps=args.warmup_epochs * steps_per_epoch,
        decay_steps=(args.epochs - args.warmup_epochs) * steps_per_epoch, end_learning_rate=1e-4, power=2.0)
    common = dict(learning_rate=schedule, momentum=0.9, weight_decay=args.weight_decay,
                  exclude_from_weight_decay=NO_DECAY, gradient_accumulation_steps=args.accumulation,
                  record_gradient_statistics=True)   # for GSNRMonitor's noise scale
    if args.optimizer == "sngm":
        return tlb.optimizers.SNGM(**common)
    return tlb.optimizers.LARS(**common, exclude_from_layer_adaptation=NO_DECAY)


def main(argv=None):
    args = parse_args(argv)
    strategy = make_strategy(args.tpu)
    k = strategy.num_replicas_in_sync * args.accumulation
    if args.global_batch_size % k:
        raise SystemExit(f"--global-batch-size must be a multiple of replicas x --accumulation = {k}")
    micro_batch = args.global_batch_size // args.accumulation   # examples per fit step, over all replicas
    dataset, steps_per_epoch, num_classes = make_dataset(args, micro_batch)

    with strategy.scope():
        model = keras.applications.ResNet50(weights=None, input_shape=(args.image_size, args.image_size, 3),
                                            classes=num_classes)
        model.compile(optimizer=build_optimizer(args, steps_per_epoch),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
                      metrics=["accuracy"])

    callbacks = [keras.callbacks.BackupAndRestore(os.path.join(args.model_dir, "backup"))]
    if k >= 2:   # the noise scale needs k >= 2 gradient samples per update
        callbacks.append(tlb.callbacks.GSNRMonitor(os.path.join(args.model_dir, "gsnr"),
                                                   global_batch_size=args.global_batch_size,
                                                   update_freq=args.accumulation))
    model.fit(dataset, epochs=args.epochs, steps_per_epoch=steps_per_epoch * args.accumulation,
              shuffle=False, callbacks=callbacks, verbose=2)
    model.save(os.path.join(args.model_dir, "final.keras"))   # keras.saving.load_model finds the optimizer
    print(f"{args.optimizer}: {int(model.optimizer.iterations)} updates on {strategy.num_replicas_in_sync} "
          f"replica(s) x {args.accumulation} micro-batches; model, backup and TensorBoard events in {args.model_dir}")


if __name__ == "__main__":
    main()
