"""BERT pretraining pipeline: the TFRecord reader and on-the-fly masking from raw
text. The two-phase run (phase 2 starts from phase 1's weights with its own
warm-up) is the BERT family's smoke run in test_pipelines_synthetic.py, with
this file's ``PhaseRecorder``: one BERT training for both."""

import glob
import os

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_largebatch import config
from tf_largebatch.pipelines import bert, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BERT_CONFIG = sorted(glob.glob(os.path.join(ROOT, "tpu_configs", "bert_large_vrlamb_64k-32k_*.yaml")))[0]


def pretraining_records(path, num, seq_length, max_predictions, seed):
    """Writes Model Garden-format records with tf.train.Example; returns them as arrays."""
    rng = np.random.default_rng(seed)
    rows = []
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(num):
            length = int(rng.integers(seq_length // 2, seq_length + 1))
            ids = np.zeros(seq_length, np.int64)
            ids[:length] = rng.integers(5, 1000, length)
            mask = (np.arange(seq_length) < length).astype(np.int64)
            segments = np.zeros(seq_length, np.int64)
            segments[length // 2:length] = 1
            count = int(rng.integers(1, max_predictions + 1))
            positions = np.zeros(max_predictions, np.int64)
            positions[:count] = np.sort(rng.choice(np.arange(1, length), count, replace=False))
            lm_ids = np.zeros(max_predictions, np.int64)
            lm_ids[:count] = rng.integers(5, 1000, count)
            weights = np.zeros(max_predictions, np.float32)
            weights[:count] = 1.0
            row = dict(input_ids=ids, input_mask=mask, segment_ids=segments, masked_lm_positions=positions,
                       masked_lm_ids=lm_ids, masked_lm_weights=weights, next_sentence_labels=np.array([i % 2]))
            feature = {
                k: tf.train.Feature(float_list=tf.train.FloatList(value=v)) if v.dtype == np.float32
                else tf.train.Feature(int64_list=tf.train.Int64List(value=v))
                for k, v in row.items()
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
            rows.append(row)
    return rows


def test_tfrecord_reader_round_trips(tmp_path):
    rows = pretraining_records(tmp_path / "a.tfrecord", 6, 32, 5, seed=0)
    (cfg,) = config.load_config(BERT_CONFIG, smoke=True, overrides=[
        f"phases.0.data.train_files={tmp_path}/*.tfrecord", "phases.0.data.seq_length=32",
        "phases.0.data.max_predictions_per_seq=5", "data.shuffle_buffer=1", "training.global_batch_size=6",
    ])[:1]
    train_ds, eval_ds = bert.make_datasets(cfg)
    assert eval_ds is None
    x, y, sw = next(iter(train_ds))
    np.testing.assert_array_equal(x["token_ids"], [r["input_ids"] for r in rows])
    np.testing.assert_array_equal(x["padding_mask"], [r["input_mask"] for r in rows])
    np.testing.assert_array_equal(x["segment_ids"], [r["segment_ids"] for r in rows])
    np.testing.assert_array_equal(x["mask_positions"], [r["masked_lm_positions"] for r in rows])
    np.testing.assert_array_equal(y["mlm"], [r["masked_lm_ids"] for r in rows])
    np.testing.assert_array_equal(y["nsp"], [r["next_sentence_labels"][0] for r in rows])
    np.testing.assert_array_equal(sw["mlm"], [r["masked_lm_weights"] for r in rows])
    assert x["token_ids"].dtype == tf.int32 and sw["mlm"].dtype == tf.float32


def test_raw_text_is_tokenized_packed_and_masked(tmp_path):
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocabulary = list(bert.SPECIAL_TOKENS) + letters + ["##" + c for c in letters]
    (tmp_path / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    (cfg,) = config.load_config(BERT_CONFIG, smoke=True, overrides=[
        "phases.0.data.train_files=null", "data.name=wikipedia/20230601.en", f"data.vocabulary={tmp_path}/vocab.txt",
        "phases.0.data.seq_length=24", "phases.0.data.max_predictions_per_seq=4", "training.global_batch_size=8",
    ])[:1]
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        train_ds, _ = bert.make_datasets(cfg)
        x, y, sw = next(iter(train_ds))
    ids = {t: vocabulary.index(t) for t in bert.SPECIAL_TOKENS}
    tokens = x["token_ids"].numpy()
    assert tokens.shape == (8, 24) and x["mask_positions"].shape == (8, 4)
    np.testing.assert_array_equal(tokens[:, 0], ids["[CLS]"])
    np.testing.assert_array_equal(x["padding_mask"].numpy(), (tokens != ids["[PAD]"]).astype(np.int32))
    # Two segments: [CLS] A [SEP] B [SEP]; segment 1 exists where B is non-empty.
    assert set(np.unique(x["segment_ids"])) <= {0, 1}
    weights = sw["mlm"].numpy()
    positions = x["mask_positions"].numpy()
    assert weights.sum() > 0 and set(np.unique(weights)) <= {0.0, 1.0}
    for row in range(8):
        chosen = positions[row][weights[row] > 0]
        # Never [CLS], [SEP] or padding; the labels are real tokens.
        assert np.all(tokens[row, chosen] != ids["[CLS]"])
        assert np.all(y["mlm"].numpy()[row][weights[row] > 0] >= len(bert.SPECIAL_TOKENS))
    assert set(np.unique(y["nsp"])) <= {0, 1}
    # The batch fits the pretraining model.
    model = train.build_model(cfg)
    outputs = model(x)
    assert outputs["mlm"].shape == (8, 4, cfg.model.args["vocabulary_size"]) and outputs["nsp"].shape == (8, 2)


class PhaseRecorder(keras.callbacks.Callback):
    """Per phase: weights and learning rate at the first step, weights at the end
    (used by test_pipelines_synthetic.py's two-phase BERT run)."""

    def __init__(self):
        super().__init__()
        self.phases = []

    def on_train_begin(self, logs=None):
        self.phases.append({"learning_rates": []})

    def on_train_batch_begin(self, batch, logs=None):
        phase = self.phases[-1]
        optimizer = self.model.optimizer
        if "first_weights" not in phase:
            phase["first_weights"] = [w.copy() for w in self.model.get_weights()]
            phase["first_iterations"] = int(optimizer.iterations.numpy())
        phase["learning_rates"].append(float(optimizer.learning_rate.numpy()))

    def on_train_end(self, logs=None):
        self.phases[-1]["last_weights"] = [w.copy() for w in self.model.get_weights()]
        self.phases[-1]["position_embedding"] = tuple(
            v.shape for v in self.model.variables if "position_embedding" in v.path)
