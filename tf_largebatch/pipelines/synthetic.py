"""Synthetic input (``data.synthetic: true``): random batches of the real shapes and types.

Each task's synthetic batches have exactly the structure, shapes and dtypes of
its real input pipeline (:mod:`~tf_largebatch.pipelines.imagenet`,
:mod:`~tf_largebatch.pipelines.cifar`, :mod:`~tf_largebatch.pipelines.bert`),
so a config runs end to end without its data: no file is opened and nothing is
downloaded. A small fixed set of batches (:data:`NUM_BATCHES`) is drawn once with
stateless random ops seeded by ``training.seed`` and repeated, so the input
costs one copy of a ready batch per step and the run measures the throughput of
the model, optimizer and devices alone (the purpose of the synthetic modes of
TensorFlow Model Garden and of the MLPerf reference implementations).

The numbers are not meaningful data: losses and accuracies of a synthetic run
say nothing about a recipe. What it checks is that the config builds, compiles,
trains, evaluates, checkpoints and resumes; what it measures is
``examples_per_second`` of the slice (see ``summary.json``).
"""

import dataclasses
import logging

import tensorflow as tf

logger = logging.getLogger(__name__)

# Distinct batches drawn per dataset; then repeated.
NUM_BATCHES = 2
# Examples of a BERT sequence that are real tokens: a uniform length in
# [MIN_LENGTH_FRACTION * seq_length, seq_length].
MIN_LENGTH_FRACTION = 0.5
MASK_RATE = 0.15


def _seed(seed, batch_index, stream):
    """A stateless-RNG seed for one batch and one tensor of it."""
    return tf.stack([tf.cast(seed, tf.int64) * 1000 + tf.cast(stream, tf.int64), tf.cast(batch_index, tf.int64)])


def image_batch(seed, batch_index, *, batch_size, image_size, num_classes):
    """``(images, one_hot_labels)`` like the image pipelines' output.

    Images are float32 ``[batch, image_size, image_size, 3]`` drawn from a
    standard normal (the real pipelines normalise each channel to mean 0 and
    standard deviation 1); labels are one-hot float32 ``[batch, num_classes]``.
    """
    images = tf.random.stateless_normal([batch_size, image_size, image_size, 3], _seed(seed, batch_index, 0))
    labels = tf.random.stateless_uniform([batch_size], _seed(seed, batch_index, 1), 0, num_classes, tf.int32)
    return images, tf.one_hot(labels, num_classes)


def bert_batch(seed, batch_index, *, batch_size, seq_length, max_predictions_per_seq, vocabulary_size):
    """``(x, y, sample_weight)`` like :func:`tf_largebatch.pipelines.bert.parse_record`, batched.

    Each sequence has a random length (at least half of ``seq_length``), a
    first segment of half that length, ``round(0.15 * length)`` masked
    positions (distinct, never position 0, at most
    ``max_predictions_per_seq``; unused slots are 0 with weight 0), random
    token and masked-token ids below ``vocabulary_size`` and a random
    next-sentence label.
    """
    positions = tf.range(seq_length)
    min_length = max(2, int(MIN_LENGTH_FRACTION * seq_length))
    lengths = tf.random.stateless_uniform(
        [batch_size], _seed(seed, batch_index, 0), min_length, seq_length + 1, tf.int32
    )
    in_sequence = positions[None, :] < lengths[:, None]
    token_ids = tf.random.stateless_uniform(
        [batch_size, seq_length], _seed(seed, batch_index, 1), 0, vocabulary_size, tf.int32
    )
    token_ids = tf.where(in_sequence, token_ids, 0)
    segment_ids = tf.cast(in_sequence & (positions[None, :] >= lengths[:, None] // 2), tf.int32)
    # Masked positions: the lowest random scores among the maskable positions.
    maskable = in_sequence & (positions[None, :] > 0)
    scores = tf.random.stateless_uniform([batch_size, seq_length], _seed(seed, batch_index, 2))
    scores = tf.where(maskable, scores, 2.0)
    chosen = tf.argsort(scores, axis=-1)[:, :max_predictions_per_seq]
    counts = tf.minimum(
        tf.cast(tf.round(MASK_RATE * tf.cast(lengths, tf.float32)), tf.int32), max_predictions_per_seq
    )
    counts = tf.minimum(tf.maximum(counts, 1), lengths - 1)
    used = tf.range(max_predictions_per_seq)[None, :] < counts[:, None]
    mask_positions = tf.where(used, tf.cast(chosen, tf.int32), 0)
    mask_ids = tf.random.stateless_uniform(
        [batch_size, max_predictions_per_seq], _seed(seed, batch_index, 3), 0, vocabulary_size, tf.int32
    )
    mask_ids = tf.where(used, mask_ids, 0)
    nsp = tf.random.stateless_uniform([batch_size], _seed(seed, batch_index, 4), 0, 2, tf.int32)
    x = {
        "token_ids": token_ids,
        "segment_ids": segment_ids,
        "padding_mask": tf.cast(in_sequence, tf.int32),
        "mask_positions": mask_positions,
    }
    y = {"mlm": mask_ids, "nsp": nsp}
    sw = {"mlm": tf.cast(used, tf.float32), "nsp": tf.ones([batch_size], tf.float32)}
    return x, y, sw


def repeated_batches(make_batch, seed):
    """:data:`NUM_BATCHES` batches of ``make_batch(seed, index)``, drawn once
    (cached) and repeated forever."""
    indices = tf.data.Dataset.range(NUM_BATCHES)
    return indices.map(lambda i: make_batch(seed, i)).cache().repeat().prefetch(tf.data.AUTOTUNE)


def _model_default(cfg, argument):
    """``model.args[argument]`` of ``cfg``, else the model builder's default."""
    import inspect

    from tf_largebatch.config import registry

    if argument in cfg.model.args:
        return cfg.model.args[argument]
    builder = registry.MODELS.get(cfg.model.name, "model.name").load()
    return inspect.signature(builder).parameters[argument].default


def image_batch_maker(cfg):
    """``make_batch(seed, index)`` of :func:`image_batch` at ``cfg``'s micro-batch and image size."""
    num_classes = _model_default(cfg, "num_classes")
    return lambda seed, i: image_batch(
        seed, i, batch_size=cfg.micro_batch_size, image_size=cfg.data.image_size, num_classes=num_classes
    )


def bert_batch_maker(cfg):
    """``make_batch(seed, index)`` of :func:`bert_batch` at ``cfg``'s micro-batch and sequence shapes."""
    vocabulary_size = _model_default(cfg, "vocabulary_size")
    return lambda seed, i: bert_batch(
        seed, i, batch_size=cfg.micro_batch_size, seq_length=cfg.data.seq_length,
        max_predictions_per_seq=cfg.data.max_predictions_per_seq, vocabulary_size=vocabulary_size,
    )


def batch_maker(cfg):
    """``make_batch(seed, index)`` for ``cfg``'s task (its registry entry's ``synthetic_batch``)."""
    from tf_largebatch.config import registry

    return registry.TASKS.get(cfg.task, "task").load_synthetic_batch()(cfg)


def make_datasets(cfg):
    """``(train, eval or None)``: repeated synthetic batches for ``cfg``'s task.

    Evaluation batches come whenever ``training.eval_steps`` is set (even for a
    task whose real data has no evaluation split), from another seed than
    the training batches.
    """
    make_batch = batch_maker(cfg)
    seed = cfg.training.seed
    train = repeated_batches(make_batch, seed)
    evaluation = repeated_batches(make_batch, seed + 1) if cfg.training.eval_steps else None
    return train, evaluation


def where_data_is_missing(configs):
    """``configs`` with ``data.synthetic`` turned on in every phase whose real
    data is not on this machine (one log line per such phase).

    What ``--smoke`` does unless ``data.synthetic`` is set explicitly; with
    ``data.synthetic: false`` a smoke run insists on real data.
    """
    from tf_largebatch.pipelines import datasets

    result = []
    for cfg in configs:
        reason = None if cfg.data.synthetic else datasets.missing_local_data(cfg.data)
        if reason:
            phase = f" [{cfg.phase}]" if cfg.phase else ""
            logger.info("%s%s: synthetic data (%s; --set data.synthetic=false insists on real data)",
                        cfg.name, phase, reason)
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, synthetic=True))
        result.append(cfg)
    return result
