"""Bad input data is a config error naming the file or key before training, not a
TensorFlow traceback mid-run: wrong TFRecord schemas, undecodable images, an
unreachable ``gs://`` data directory, ``data.download`` without a network."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tf_largebatch import config
from tf_largebatch.pipelines import bert, datasets, imagenet

from distribute_utils import free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESNET50 = os.path.join(ROOT, "tpu_configs", "resnet50_lars_32k_v3-256.yaml")
CIFAR = os.path.join(ROOT, "tpu_configs", "resnet20_sngm_1024_v3-8.yaml")
BERT = os.path.join(ROOT, "tpu_configs", "bert_large_vrlamb_64k-32k_v3-1024.yaml")


def write_records(path, features):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for feature in features:
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def image_feature(encoded, label=1):
    return {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    }


def imagenet_config(tmp_path):
    (cfg,) = config.load_config(RESNET50, smoke=True, overrides=[
        f"data.train_files={tmp_path}/*.tfrecord", "data.eval_files=null", "training.eval_steps=0",
    ])
    return cfg


def test_image_records_with_another_schema_name_the_file(tmp_path):
    good = tf.io.encode_jpeg(np.zeros((8, 8, 3), np.uint8)).numpy()
    write_records(tmp_path / "a.tfrecord", [image_feature(good)])
    write_records(tmp_path / "b.tfrecord", [{"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[good]))}])
    with pytest.raises(config.ConfigError, match=rf"data.train_files: {tmp_path}/b.tfrecord: its records do not "
                                                 "have the expected features"):
        imagenet.make_datasets(imagenet_config(tmp_path))


def test_undecodable_image_bytes_name_the_file(tmp_path):
    write_records(tmp_path / "a.tfrecord", [image_feature(b"this is not a JPEG")])
    with pytest.raises(config.ConfigError, match=rf"data.train_files: {tmp_path}/a.tfrecord: its records"):
        imagenet.make_datasets(imagenet_config(tmp_path))


def test_bert_records_with_another_schema_name_the_file(tmp_path):
    ints = lambda n: tf.train.Feature(int64_list=tf.train.Int64List(value=[1] * n))  # noqa: E731
    # Sequence 64 where the config reads 128: the fixed-length features do not parse.
    write_records(tmp_path / "short.tfrecord", [{
        "input_ids": ints(64), "input_mask": ints(64), "segment_ids": ints(64),
        "masked_lm_positions": ints(20), "masked_lm_ids": ints(20),
        "masked_lm_weights": tf.train.Feature(float_list=tf.train.FloatList(value=[1.0] * 20)),
        "next_sentence_labels": ints(1),
    }])
    (cfg,) = config.load_config(BERT, smoke=True, overrides=[
        f"phases.0.data.train_files={tmp_path}/*.tfrecord", "training.eval_steps=0"])[:1]
    with pytest.raises(config.ConfigError, match=rf"data.train_files: {tmp_path}/short.tfrecord: its records"):
        bert.make_datasets(cfg)


def test_an_unreachable_remote_data_dir_is_a_config_error():
    # A remote data_dir that TensorFlow cannot reach. The tests send nothing over
    # the network, so the remote file system here is one this TensorFlow cannot
    # open at all (s3://: not built in since TF 2.6): the same OpError path as an
    # unreachable gs:// bucket, answered locally.
    (cfg,) = config.load_config(CIFAR, smoke=True, overrides=["data.data_dir=s3://your-bucket/tensorflow_datasets"])
    with pytest.raises(config.ConfigError, match=r"^data.data_dir: (cannot reach|.* does not exist)"):
        datasets.load_tfds(cfg.data, "train", shuffle_files=True)


def test_download_without_network_fails_at_once_with_one_line(monkeypatch):
    # Simulate "offline" deterministically: the probe goes to a closed local port.
    (port,) = free_ports(1)
    monkeypatch.setattr(datasets, "DOWNLOAD_PROBE", ("127.0.0.1", port))
    (cfg,) = config.load_config(CIFAR, smoke=True, overrides=["data.download=true", "data.data_dir=/nonexistent"])
    with pytest.raises(config.ConfigError) as info:
        datasets.load_tfds(cfg.data, "train", shuffle_files=True)
    message = str(info.value)
    assert message.startswith("data.download: true, but this machine cannot reach the network")
    assert "tfds build cifar10" in message and "\n" not in message


def test_smoke_never_touches_a_gcs_placeholder():
    # The shipped ImageNet and BERT configs point at gs://YOUR_BUCKET: in smoke
    # mode their data counts as missing (synthetic instead), without a request.
    for path in (RESNET50, BERT):
        for cfg in config.load_config(path, smoke=True):
            assert "is not on this machine" in datasets.missing_local_data(cfg.data)
