"""BERT pretraining inputs: Model Garden TFRecords or raw text masked on the fly.

Both sources yield the same batches, ready for
:func:`tf_largebatch.pipelines.models.bert_pretrainer`::

    x  = {"token_ids", "segment_ids", "padding_mask": [B, seq_length],
          "mask_positions": [B, max_predictions_per_seq]}
    y  = {"mlm": masked token ids [B, max_predictions_per_seq],
          "nsp": next-sentence label [B] (0: B follows A, 1: random B)}
    sw = {"mlm": masked_lm_weights (1 for real predictions, 0 for padding),
          "nsp": ones}

TFRecords follow TensorFlow Model Garden's / Google BERT's
``create_pretraining_data.py`` format: ``input_ids``, ``input_mask``,
``segment_ids`` (``seq_length`` int64), ``masked_lm_positions``,
``masked_lm_ids`` (``max_predictions_per_seq`` int64), ``masked_lm_weights``
(float), ``next_sentence_labels`` (one int64).

Raw text (a TFDS text dataset, ``data.text_feature``) is tokenised with a
WordPiece vocabulary (``data.vocabulary``); each document's tokens are split
into two halves (A, B); for half of the examples B is replaced by the B of
another document in the batch (label 1). KerasHub's ``MultiSegmentPacker``
adds ``[CLS] A [SEP] B [SEP]`` and ``MaskedLMMaskGenerator`` selects
``mask_rate`` of the tokens (80% ``[MASK]``, 10% random, 10% kept).

References:
    Devlin et al., "BERT", 2019, §3.1 and Appendix A.1.
"""

import tensorflow as tf

from tf_largebatch.config import ConfigError
from tf_largebatch.pipelines import datasets

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def feature_spec(seq_length, max_predictions_per_seq):
    """The ``tf.io.parse_single_example`` spec of a pretraining record."""
    ints = tf.io.FixedLenFeature
    return {
        "input_ids": ints([seq_length], tf.int64),
        "input_mask": ints([seq_length], tf.int64),
        "segment_ids": ints([seq_length], tf.int64),
        "masked_lm_positions": ints([max_predictions_per_seq], tf.int64),
        "masked_lm_ids": ints([max_predictions_per_seq], tf.int64),
        "masked_lm_weights": ints([max_predictions_per_seq], tf.float32),
        "next_sentence_labels": ints([1], tf.int64),
    }


def parse_record(serialized, seq_length, max_predictions_per_seq):
    """One serialized pretraining record -> ``(x, y, sample_weight)``."""
    f = tf.io.parse_single_example(serialized, feature_spec(seq_length, max_predictions_per_seq))
    as_int = lambda t: tf.cast(t, tf.int32)  # noqa: E731
    x = {
        "token_ids": as_int(f["input_ids"]),
        "segment_ids": as_int(f["segment_ids"]),
        "padding_mask": as_int(f["input_mask"]),
        "mask_positions": as_int(f["masked_lm_positions"]),
    }
    y = {"mlm": as_int(f["masked_lm_ids"]), "nsp": as_int(f["next_sentence_labels"][0])}
    sw = {"mlm": f["masked_lm_weights"], "nsp": tf.ones([], tf.float32)}
    return x, y, sw


def read_vocabulary(path):
    if not path:
        raise ConfigError("data.vocabulary", "required for raw-text BERT data (a WordPiece vocabulary file)")
    if not tf.io.gfile.exists(path):
        raise ConfigError("data.vocabulary", f"no such file: {path}")
    with tf.io.gfile.GFile(path) as f:
        vocab = [line.rstrip("\n") for line in f if line.strip()]
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ConfigError("data.vocabulary", f"{path} lacks the special tokens {', '.join(missing)}")
    return vocab


def text_batches(text_ds, cfg, vocabulary_size):
    """Batched pretraining examples from a dataset of strings, masked on the fly."""
    import keras_hub

    data = cfg.data
    vocab = read_vocabulary(data.vocabulary)
    if len(vocab) > vocabulary_size:
        raise ConfigError("model.args.vocabulary_size", f"{vocabulary_size} is smaller than the vocabulary "
                          f"in {data.vocabulary} ({len(vocab)} tokens)")
    ids = {t: vocab.index(t) for t in SPECIAL_TOKENS}
    tokenizer = keras_hub.tokenizers.WordPieceTokenizer(vocabulary=vocab, lowercase=data.lowercase,
                                                        strip_accents=data.lowercase)
    packer = keras_hub.layers.MultiSegmentPacker(
        sequence_length=data.seq_length, start_value=ids["[CLS]"], end_value=ids["[SEP]"],
        pad_value=ids["[PAD]"],
    )
    masker = keras_hub.layers.MaskedLMMaskGenerator(
        vocabulary_size=len(vocab),
        mask_selection_rate=data.mask_rate,
        mask_token_id=ids["[MASK]"],
        mask_selection_length=data.max_predictions_per_seq,
        unselectable_token_ids=[ids["[PAD]"], ids["[CLS]"], ids["[SEP]"]],
    )
    batch_size = cfg.micro_batch_size

    def halves(text):
        tokens = tokenizer(text)
        n = tf.shape(tokens, out_type=tf.int64)[0] // 2
        return tokens[:n], tokens[n:]

    def to_example(first, second):
        rows = tf.range(batch_size)
        is_random = tf.random.uniform([batch_size]) < 0.5
        other = tf.where(is_random, (rows + 1) % batch_size, rows)
        second = tf.gather(second, other)
        token_ids, segment_ids = packer((first, second))
        masked = masker(token_ids)
        x = {
            "token_ids": tf.cast(masked["token_ids"], tf.int32),
            "segment_ids": tf.cast(segment_ids, tf.int32),
            "padding_mask": tf.cast(token_ids != ids["[PAD]"], tf.int32),
            "mask_positions": tf.cast(masked["mask_positions"], tf.int32),
        }
        y = {"mlm": tf.cast(masked["mask_ids"], tf.int32), "nsp": tf.cast(is_random, tf.int32)}
        sw = {"mlm": tf.cast(masked["mask_weights"], tf.float32), "nsp": tf.ones([batch_size], tf.float32)}
        return x, y, sw

    ds = text_ds.map(halves, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ragged_batch(batch_size, drop_remainder=True)
    return ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def make_datasets(cfg):
    """``(train, eval or None)`` batched BERT pretraining datasets (repeat forever)."""
    data = cfg.data
    seed = cfg.training.seed
    vocabulary_size = cfg.model.args.get("vocabulary_size", 30522)

    def records(pattern, training):
        path = "data.train_files" if training else "data.eval_files"
        parse = lambda r: parse_record(r, data.seq_length, data.max_predictions_per_seq)  # noqa: E731
        ds = datasets.tfrecord_dataset(pattern, path, shuffle=training, seed=seed, check_record=parse)
        return datasets.finish(
            ds, parse, cfg.micro_batch_size,
            training=training, shuffle_buffer=data.shuffle_buffer if training else 0, seed=seed, cache=data.cache,
        )

    def text(split, training):
        ds = datasets.load_tfds(data, split, shuffle_files=training).map(lambda ex: ex[data.text_feature])
        ds = ds.repeat()
        if training and data.shuffle_buffer > 1:
            ds = ds.shuffle(data.shuffle_buffer, seed=seed)
        return text_batches(ds, cfg, vocabulary_size)

    if data.train_files:
        train = records(data.train_files, True)
    else:
        train = text(data.train_split, True)
    evaluation = None
    if cfg.training.eval_steps:
        if data.eval_files:
            evaluation = records(data.eval_files, False)
        elif data.name and data.eval_split and not data.train_files:
            evaluation = text(data.eval_split, False)
    return train, evaluation
