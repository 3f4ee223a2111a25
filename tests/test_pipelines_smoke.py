"""Smoke runs: configs of each model/optimizer family train end-to-end on CPU
through the real TFDS loading code (``tfds.testing.mock_data``) and real
``Model.fit`` under a real tf.distribute strategy.

Every file in tpu_configs/ is validated in test_config.py and built in its
smoke form in test_pipelines_synthetic.py, where one file per family also
smoke-runs on synthetic data; here the ResNet-20 configs train on mocked real
data (the BERT family on TFRecords in test_pipelines_synthetic.py), and the ResNet-50 ImageNet
input is read from mocked TFDS data without training ResNet-50 again (its
training runs in test_pipelines_synthetic.py).
"""

import glob
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tf_largebatch import config
from tf_largebatch.pipelines import imagenet, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_path(name):
    return os.path.join(ROOT, "tpu_configs", name + ".yaml")


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def smoke(name, tmp_path, *overrides):
    configs = config.load_config(config_path(name), smoke=True,
                                 overrides=[f"training.model_dir={tmp_path}/run", *overrides])
    (summary,) = train.run(configs)
    return configs[0], summary


def check_run(cfg, summary, tmp_path):
    assert summary["optimizer_steps"] == cfg.total_steps() == 2
    assert all(np.isfinite(v) for v in summary["final_logs"].values()), summary["final_logs"]
    assert "val_loss" in summary["final_logs"]
    run = tmp_path / "run"
    assert (run / "final.weights.h5").exists() and (run / "final.keras").exists()
    written = os.listdir(run / "checkpoints")
    assert "best.weights.h5" in written and "checkpoint" in written  # the CheckpointManager's state file
    assert sorted({n.split(".")[0] for n in written if n.startswith("ckpt-")}) == ["ckpt-1", "ckpt-2"]
    assert glob.glob(str(run / "logs" / "train" / "events.out.tfevents.*"))
    assert not (run / "backup").exists()  # removed once the phase's final files are written
    assert summary["optimizer_updates"] == 2
    assert summary["measured_steps"] == 1 and summary["seconds_per_step"] > 0
    assert summary["examples_per_second"] == pytest.approx(cfg.training.global_batch_size / summary["seconds_per_step"])
    assert summary["device_count"] == summary["replicas"] and summary["device_kind"].startswith("CPU")


# One ResNet-20/CIFAR-10 config per optimizer of the SNGM paper's Table 2; the
# SNGM run also covers mixed_bfloat16, the LARS run gradient accumulation with
# mixed_float16 (the loss-scale optimizer wrapped around LARS by compile).
CIFAR_RUNS = [
    ("resnet20_sngm_1024_v3-8", ["precision=mixed_bfloat16"]),
    ("resnet20_msgd_8192_v3-8", []),
    ("resnet20_lars_2048_v3-8", ["training.global_batch_size=8", "training.gradient_accumulation_steps=2",
                                 "precision=mixed_float16"]),
]


@pytest.mark.parametrize("name, overrides", CIFAR_RUNS, ids=[r[0] for r in CIFAR_RUNS])
def test_cifar_configs_train_in_smoke_mode(name, overrides, tmp_path, mock_tfds):
    cfg, summary = smoke(name, tmp_path, *overrides)
    check_run(cfg, summary, tmp_path)
    assert summary["replicas"] == 2
    expected = {"mixed_float16": "LossScaleOptimizer"}.get(cfg.precision, cfg.optimizer.name)
    assert summary["optimizer"] == expected


def test_resnet50_vrlars_config_reads_mock_imagenet_through_tfds(tmp_path, mock_tfds):
    # The ImageNet config's data as its training run gets it: the real TFDS
    # code (tfds.load on the mocked imagenet2012, a local data_dir instead of
    # the shipped gs:// placeholder, which the pipeline would try to reach over
    # the network), then decoding, cropping, normalisation, one-hot labels and
    # micro-batches of k = 2 accumulation steps on one device. Training the
    # config's model and optimizer (ResNet-50, VR-LARS, the ImageNet loss and
    # metrics) through the same runner is covered on synthetic batches of the
    # same shapes by test_pipelines_synthetic.py's
    # test_one_config_per_family_smoke_runs_offline[resnet50_vrlars_16k_v3-256]
    # (the 32k file is in its family), and the runner's files, checkpoints
    # and summary after real-data loading by test_cifar_configs_train_in_smoke_mode.
    (cfg,) = config.load_config(config_path("resnet50_vrlars_32k_v3-512"), smoke=True, overrides=[
        f"training.model_dir={tmp_path}/run", f"data.data_dir={tmp_path}/tensorflow_datasets"])
    assert cfg.task == "imagenet" and cfg.model.name == "resnet50" and not cfg.data.synthetic
    assert cfg.training.gradient_accumulation_steps == 2 and cfg.micro_batch_size == 4
    train_ds, eval_ds = train.make_datasets(cfg)  # what train.run trains and evaluates on
    assert eval_ds is not None
    size = cfg.data.image_size
    for dataset in (train_ds, eval_ds):
        batches = list(dataset.take(5))  # more than the 16 mock examples: the data repeats
        for x, y in batches:
            assert x.shape == (4, size, size, 3) and x.dtype == np.float32 and np.all(np.isfinite(x))
            assert y.shape == (4, 1000) and y.dtype == np.float32
            np.testing.assert_array_equal(np.sum(y, -1), np.ones(4))  # one-hot
        # normalised by the ImageNet mean and standard deviation: roughly centred
        pixels = np.concatenate([x.numpy().ravel() for x, _ in batches])
        assert abs(float(np.mean(pixels))) < 1.5 and 0.1 < float(np.std(pixels)) < 3
    # The same images as the TFDS builder's mocked examples, labels included:
    # the evaluation split is read in order and centre-cropped.
    import tensorflow as tf

    mocked = tfds.load("imagenet2012", split=cfg.data.eval_split, data_dir=cfg.data.data_dir)
    first = list(mocked.take(4))
    x, y = next(iter(eval_ds))
    np.testing.assert_array_equal(np.argmax(y, -1), [int(ex["label"]) for ex in first])
    expected = [imagenet.preprocess_eval(ex["image"], size) for ex in first]
    np.testing.assert_allclose(x, tf.stack(expected), atol=1e-5)


def test_imagenet_tfrecords_are_decoded_cropped_and_one_hot(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 60), (72, 50), (64, 64), (33, 90)]]
    jpegs = [tf.io.encode_jpeg(image).numpy() for image in images]
    with tf.io.TFRecordWriter(str(tmp_path / "train-00000-of-00001")) as writer:
        for label, jpeg in enumerate(jpegs, start=1):  # 1-based labels, as imagenet_to_gcs.py writes
            feature = {
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    (cfg,) = config.load_config(config_path("resnet50_lars_32k_v3-256"), smoke=True, overrides=[
        f"data.train_files={tmp_path}/train-*", f"data.eval_files={tmp_path}/train-*", "data.label_offset=1",
        "data.shuffle_buffer=1", "training.global_batch_size=8", "training.gradient_accumulation_steps=2",
    ])
    train_ds, eval_ds = imagenet.make_datasets(cfg)
    x, y = next(iter(eval_ds))
    assert x.shape == (4, 64, 64, 3) and y.shape == (4, 1000)
    np.testing.assert_array_equal(np.argmax(y, -1), [0, 1, 2, 3])
    # Evaluation is the centre crop: the 64x64 image's central 64/96 = 42 pixels, resized.
    decoded = tf.io.decode_jpeg(jpegs[2], channels=3)
    expected = imagenet.normalize(tf.image.resize(decoded[11:53, 11:53], [64, 64], method="bicubic"))
    np.testing.assert_allclose(x[2], expected, atol=1e-3)
    x, y = next(iter(train_ds))
    assert x.shape == (4, 64, 64, 3) and np.all(np.isfinite(x))
    assert sorted(np.argmax(y, -1)) == [0, 1, 2, 3]


def test_xla_compiled_smoke_run(tmp_path, mock_tfds):
    # What a TPU runs is XLA-compiled; on CPU, XLA works on a single device
    # (Keras turns it off under MirroredStrategy on CPUs).
    cfg, summary = smoke("resnet20_sngm_128_v3-8", tmp_path, "strategy.type=one_device",
                         "strategy.num_cpu_replicas=null", "training.jit_compile=true")
    check_run(cfg, summary, tmp_path)
    assert summary["replicas"] == 1 and summary["jit_compile"] is True
