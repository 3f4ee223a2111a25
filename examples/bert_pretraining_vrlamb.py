"""BERT masked-LM pretraining with VR-LAMB, on KerasHub's BERT.

What this shows, top to bottom:

1. a `tf.distribute` strategy: `TPUStrategy` on a TPU (`--tpu NAME`), else
   `MirroredStrategy` over every local GPU or the CPU (`--cpu-replicas N` splits the
   CPU into N logical devices, to see several replicas on a laptop);
2. KerasHub's `BertBackbone` under `BertMaskedLM` (the masked-LM head), built in the
   strategy scope;
3. `tf_largebatch.optimizers.VRLAMB` as the BERT/LAMB papers configure LAMB: weight
   decay 0.01 with `bias` and LayerNorm excluded from the decay and from the layer-wise
   trust ratio, linear warm-up then polynomial decay of the learning rate
   (`tf_largebatch.schedules.WarmupPolynomialDecay`);
4. the VR optimizers need k >= 2 gradient samples per update: k = replicas x
   `gradient_accumulation_steps`, so on one device the accumulation gives them their
   samples;
5. two ways to train:
   - `--loop fit` (default): `model.compile` / `model.fit` with
     `tf_largebatch.callbacks.GSNRMonitor` (GSNR and gradient noise scale to
     TensorBoard) and `keras.callbacks.BackupAndRestore` (a rerun resumes where a
     killed run stopped);
   - `--loop custom`: a custom training loop with `strategy.run`,
     `tf.nn.compute_average_loss` and `optimizer.apply`, checkpointed with
     `tf.train.CheckpointManager`.

By default everything is tiny (a 2-layer BERT, synthetic token ids, a few steps) and
runs on a CPU in seconds. Real sizes and data come from flags, e.g. BERT-large phase 1
on a TPU pod with a WordPiece vocabulary and plain-text shards:

    python examples/bert_pretraining_vrlamb.py --tpu my-pod --size large \\
        --vocabulary gs://my-bucket/vocab.txt --text-files 'gs://my-bucket/text/*.txt' \\
        --sequence-length 128 --global-batch-size 65536 --steps 7038 --warmup-steps 2000 \\
        --learning-rate 6e-3 --accumulation 1 --model-dir gs://my-bucket/bert

The shipped, tested pod configurations (both phases, the papers' hyperparameters) run
with the command line instead: `tf-largebatch train --experiment
bert_large_vrlamb_64k-32k_v3-1024` (docs/pipelines.md).

References: Devlin et al., "BERT" (2019); You et al., "Large Batch Optimization for
Deep Learning: Training BERT in 76 minutes" (LAMB, 2020); Jiang et al., "Accelerating
Large Batch Training via Gradient Signal to Noise Ratio (GSNR)" (VR-LAMB, Algorithm 5).
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_largebatch as tlb  # noqa: E402

SIZES = {  # BertBackbone arguments
    "tiny": dict(num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64),
    "base": dict(num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072),
    "large": dict(num_layers=24, num_heads=16, hidden_dim=1024, intermediate_dim=4096),
}
NO_DECAY = ["bias", "layer_norm"]  # KerasHub's variable paths: ".../self_attention_layer_norm/gamma", ".../query/bias"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="BERT masked-LM pretraining with VR-LAMB (KerasHub BERT).")
    parser.add_argument("--loop", choices=("fit", "custom"), default="fit")
    parser.add_argument("--tpu", default=None, help="TPU name ('local' on a TPU VM); default: GPUs or the CPU")
    parser.add_argument("--cpu-replicas", type=int, default=0, help="split the CPU into N logical replicas")
    parser.add_argument("--size", choices=tuple(SIZES), default="tiny")
    parser.add_argument("--vocabulary", default=None, help="WordPiece vocabulary file (default: synthetic ids)")
    parser.add_argument("--text-files", default=None, help="glob of plain-text files, one sentence per line")
    parser.add_argument("--vocabulary-size", type=int, default=512, help="synthetic data only")
    parser.add_argument("--sequence-length", type=int, default=32)
    parser.add_argument("--global-batch-size", type=int, default=16, help="examples per optimizer update")
    parser.add_argument("--accumulation", type=int, default=2, help="gradient_accumulation_steps")
    parser.add_argument("--steps", type=int, default=4, help="optimizer updates")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--model-dir", default="/tmp/bert_vrlamb")
    return parser.parse_args(argv)


def make_strategy(tpu, cpu_replicas):
    """TPUStrategy on a TPU, else MirroredStrategy over the GPUs or the CPU."""
    if tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if cpu_replicas > 1:  # must happen before TensorFlow runs its first op
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_replicas)],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    return tf.distribute.MirroredStrategy()  # every local GPU, or the CPU


def masked_lm_dataset(args, batch_size):
    """Batches of ``(features, mask_ids, mask_weights)``, as BertMaskedLM takes them."""
    if args.vocabulary:  # real text: KerasHub's tokenizer and masked-LM preprocessor
        tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=args.vocabulary)
        preprocessor = keras_hub.models.BertMaskedLMPreprocessor(tokenizer, sequence_length=args.sequence_length)
        lines = tf.data.TextLineDataset(tf.io.gfile.glob(args.text_files))
        return (lines.shuffle(10_000).repeat().batch(batch_size, drop_remainder=True)
                .map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))
    # Synthetic: random token ids; ids 0-3 play [PAD], [CLS], [SEP], [MASK].
    masker = keras_hub.layers.MaskedLMMaskGenerator(
        vocabulary_size=args.vocabulary_size, mask_selection_rate=0.15, mask_token_id=3,
        mask_selection_length=max(1, int(0.15 * args.sequence_length)), unselectable_token_ids=[0, 1, 2])
    ids = tf.data.Dataset.random(seed=0).map(lambda s: tf.random.stateless_uniform(
        [args.sequence_length], seed=[s, 0], minval=4, maxval=args.vocabulary_size, dtype=tf.int32))

    def to_features(token_ids):
        masked = masker(token_ids)
        features = {"token_ids": masked["token_ids"], "segment_ids": tf.zeros_like(token_ids),
                    "padding_mask": tf.ones_like(token_ids), "mask_positions": masked["mask_positions"]}
        return features, masked["mask_ids"], masked["mask_weights"]

    return ids.batch(batch_size, drop_remainder=True).map(to_features).prefetch(tf.data.AUTOTUNE)


def build_model(args, vocabulary_size):
    backbone = keras_hub.models.BertBackbone(vocabulary_size=vocabulary_size,
                                             max_sequence_length=max(512, args.sequence_length), **SIZES[args.size])
    backbone.get_layer("pooled_dense").trainable = False   # the pooler serves next-sentence prediction, not trained here
    return keras_hub.models.BertMaskedLM(backbone=backbone, preprocessor=None)


def build_optimizer(args):
    schedule = tlb.schedules.WarmupPolynomialDecay(
        peak_learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
        decay_steps=args.steps - args.warmup_steps, end_learning_rate=0.0, power=1.0)
    return tlb.optimizers.VRLAMB(
        learning_rate=schedule,              # counts optimizer updates, not micro-batches
        weight_decay=0.01,
        exclude_from_weight_decay=NO_DECAY,
        exclude_from_layer_adaptation=NO_DECAY,
        gradient_accumulation_steps=args.accumulation,
    )


def train_with_fit(args, strategy, model, optimizer, dataset):
    micro_batch = args.global_batch_size // args.accumulation   # examples per fit step (all replicas)
    model.compile(optimizer=optimizer, weighted_metrics=["sparse_categorical_accuracy"])  # loss: BertMaskedLM's
    callbacks = [
        tlb.callbacks.GSNRMonitor(os.path.join(args.model_dir, "gsnr"), global_batch_size=args.global_batch_size,
                                  update_freq=args.accumulation),
        keras.callbacks.BackupAndRestore(os.path.join(args.model_dir, "backup")),
    ]
    history = model.fit(dataset.rebatch(micro_batch), steps_per_epoch=args.steps * args.accumulation, epochs=1,
                        shuffle=False, callbacks=callbacks, verbose=2)
    return history.history["loss"][-1]


def train_with_custom_loop(args, strategy, model, optimizer, dataset):
    micro_batch = args.global_batch_size // args.accumulation
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    with strategy.scope():
        optimizer.build(model.trainable_variables)   # in the scope, before the first step
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(args.model_dir, "checkpoints"), max_to_keep=2)
    checkpoint.restore(manager.latest_checkpoint)    # resumes a killed run; nothing on the first run
    batches = iter(strategy.experimental_distribute_dataset(dataset.rebatch(micro_batch)))

    def micro_step(features, mask_ids, mask_weights):
        with tf.GradientTape() as tape:
            predictions = model(features, training=True)
            per_example = tf.reduce_sum(loss_fn(mask_ids, predictions) * tf.cast(mask_weights, tf.float32), axis=1)
            per_example /= tf.maximum(tf.reduce_sum(tf.cast(mask_weights, tf.float32), axis=1), 1.0)
            # Mean over the global micro-batch: the replicas' gradients sum to the global mean.
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=micro_batch)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(gradients, model.trainable_variables)   # an update every `accumulation` micro-steps
        return loss

    @tf.function
    def train_step(batch):
        losses = strategy.run(micro_step, args=batch)
        return strategy.reduce("SUM", losses, axis=None)

    save_every = max(1, args.steps // 2)
    while int(optimizer.iterations) < args.steps:
        updates_before = int(optimizer.iterations)
        loss = train_step(next(batches))
        updates = int(optimizer.iterations)
        if updates > updates_before:   # this micro-step completed an update
            print(f"update {updates}: loss of its last micro-batch {float(loss):.4f}")
            if updates % save_every == 0 or updates == args.steps:
                manager.save(checkpoint_number=updates)
    return float(loss)


def main(argv=None):
    args = parse_args(argv)
    strategy = make_strategy(args.tpu, args.cpu_replicas)
    k = strategy.num_replicas_in_sync * args.accumulation
    if k < 2:
        raise SystemExit("VR-LAMB needs k = replicas x --accumulation >= 2 gradient samples per update")
    if args.global_batch_size % k:
        raise SystemExit(f"--global-batch-size must be a multiple of replicas x --accumulation = {k}")
    vocabulary_size = (keras_hub.tokenizers.BertTokenizer(vocabulary=args.vocabulary).vocabulary_size()
                       if args.vocabulary else args.vocabulary_size)
    dataset = masked_lm_dataset(args, args.global_batch_size)
    with strategy.scope():
        model = build_model(args, vocabulary_size)
        optimizer = build_optimizer(args)
    print(f"{strategy.__class__.__name__} with {strategy.num_replicas_in_sync} replica(s) x {args.accumulation} "
          f"micro-batches: k = {k} gradient samples per update, global batch {args.global_batch_size}")
    train = train_with_fit if args.loop == "fit" else train_with_custom_loop
    loss = train(args, strategy, model, optimizer, dataset)
    print(f"{args.loop}: {int(optimizer.iterations)} VR-LAMB updates, final loss {loss:.4f}; "
          f"checkpoints and TensorBoard events in {args.model_dir}")
    return loss


if __name__ == "__main__":
    main()
