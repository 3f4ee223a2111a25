"""Synthetic input: the real pipelines' structure, shapes and dtypes, deterministic
from the seed, no file or network; and every shipped config smoke-runs offline
on it (what ``tf-largebatch train --smoke`` does without the datasets)."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_largebatch import cli, config
from tf_largebatch.pipelines import bert, cifar, synthetic, train

from test_pipelines_bert import pretraining_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "tf_largebatch", "tpu_configs")
CIFAR = os.path.join(CONFIG_DIR, "resnet20_sngm_1024_v3-8.yaml")
BERT = os.path.join(CONFIG_DIR, "bert_large_vrlamb_64k-32k_v3-1024.yaml")


def specs(dataset):
    return tf.nest.map_structure(lambda s: (tuple(s.shape), s.dtype), dataset.element_spec)


def test_image_batches_match_the_real_pipeline(tmp_path):
    (cfg,) = config.load_config(CIFAR, smoke=True, overrides=["training.global_batch_size=8"])
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        real_train, real_eval = cifar.make_datasets(cfg)
    fake_train, fake_eval = synthetic.make_datasets(cfg)
    assert specs(fake_train) == specs(real_train) == (((8, 32, 32, 3), tf.float32), ((8, 10), tf.float32))
    assert specs(fake_eval) == specs(real_eval)
    images, labels = next(iter(fake_train))
    np.testing.assert_array_equal(np.sum(labels, -1), np.ones(8))  # one-hot
    assert abs(float(np.mean(images))) < 0.2 and abs(float(np.std(images)) - 1) < 0.2  # normalised


def test_bert_batches_match_the_real_pipeline(tmp_path):
    pretraining_records(tmp_path / "a.tfrecord", 8, 128, 20, seed=0)
    (cfg,) = config.load_config(BERT, smoke=True, overrides=[
        f"phases.0.data.train_files={tmp_path}/*.tfrecord", "training.global_batch_size=8"])[:1]
    real_train, _ = bert.make_datasets(cfg)
    fake_train, fake_eval = synthetic.make_datasets(cfg)
    assert specs(fake_train) == specs(real_train)
    assert specs(fake_eval) == specs(real_train)  # evaluated whenever training.eval_steps is set
    x, y, sw = next(iter(fake_train))
    length = np.sum(x["padding_mask"], -1)
    assert np.all(length >= 64) and np.all(length <= 128)
    for row in range(8):
        used = sw["mlm"][row].numpy() == 1
        positions = x["mask_positions"][row].numpy()[used]
        assert used.sum() == min(20, max(1, round(0.15 * length[row])))
        assert len(set(positions)) == len(positions) and np.all(positions > 0) and np.all(positions < length[row])
        assert np.all(x["mask_positions"][row].numpy()[~used] == 0) and np.all(y["mlm"][row].numpy()[~used] == 0)
        assert np.all(x["token_ids"][row].numpy()[length[row]:] == 0)
        segments = x["segment_ids"][row].numpy()
        assert set(segments[: length[row] // 2]) == {0} and set(segments[length[row] // 2: length[row]]) == {1}
    assert np.all(x["token_ids"].numpy() < 30522) and set(np.unique(y["nsp"])) <= {0, 1}


def test_batches_are_deterministic_from_the_seed():
    (cfg,) = config.load_config(CIFAR, smoke=True)
    first = [b[0].numpy() for b in synthetic.make_datasets(cfg)[0].take(3)]
    again = [b[0].numpy() for b in synthetic.make_datasets(cfg)[0].take(3)]
    (other,) = config.load_config(CIFAR, smoke=True, overrides=["training.seed=7"])
    different = next(iter(synthetic.make_datasets(other)[0]))[0].numpy()
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[2], first[0])  # a fixed set of NUM_BATCHES = 2, repeated
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[0], different)


def test_smoke_falls_back_to_synthetic_only_where_data_is_missing(tmp_path):
    (cfg,) = config.load_config(CIFAR, smoke=True, overrides=[f"data.data_dir={tmp_path}/tfds"])
    (switched,) = synthetic.where_data_is_missing([cfg])
    assert switched.data.synthetic and not cfg.data.synthetic
    pretraining_records(tmp_path / "a.tfrecord", 4, 128, 20, seed=0)
    phases = config.load_config(BERT, smoke=True, overrides=[f"phases.0.data.train_files={tmp_path}/*.tfrecord"])
    assert [c.data.synthetic for c in synthetic.where_data_is_missing(phases)] == [False, True]  # phase 2: gs://


def test_smoke_with_synthetic_false_insists_on_real_data(tmp_path, capsys):
    code = cli.main(["train", "--config", CIFAR, "--smoke", "--set", "data.synthetic=false",
                     "--set", f"data.data_dir={tmp_path}/tfds", "--set", f"training.model_dir={tmp_path}/run"])
    assert code == 2
    assert "config error: data.name: 'cifar10' is not prepared in" in capsys.readouterr().err


# Every shipped file, from the CLI's smoke path. A representative per model and
# optimizer family runs in the fast suite; the rest (same code, other numbers)
# and the big models (ResNet-50 compiles for about a minute here) are marked slow.
CONFIG_FILES = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))
# (SNGM, LARS and MSGD on ResNet-20 also run in test_pipelines_smoke.py on mocked TFDS data.)
FAST = {"resnet56_momentum_4096_v3-8", "resnet56_vrmomentum_4096_v3-8", "resnet56_adam_4096_v3-8",
        "resnet56_vradam_4096_v3-8", "resnet56_lamb_4096_v3-8", "resnet56_vrlamb_4096_v3-8",
        "resnet56_vrlars_4096_v3-8"}


def config_param(path):
    name = os.path.basename(path)[: -len(".yaml")]
    marks = [] if name in FAST else [pytest.mark.slow]
    return pytest.param(path, id=name, marks=marks)


@pytest.mark.parametrize("path", [config_param(p) for p in CONFIG_FILES])
def test_every_shipped_config_smoke_runs_offline(path, tmp_path, capsys):
    assert cli.main(["train", "--config", path, "--smoke", "--set", f"training.model_dir={tmp_path}/run",
                     "--set", "training.verbose=0", "--set", "callbacks.tensorboard=false"]) == 0
    out = capsys.readouterr().out
    configs = config.load_config(path, smoke=True)
    for cfg in configs:
        directory = train.phase_dir(cfg).replace(cfg.training.model_dir, f"{tmp_path}/run")
        with open(os.path.join(directory, train.SUMMARY)) as f:
            summary = json.load(f)
        assert summary["synthetic_data"] is True
        assert summary["optimizer_updates"] == cfg.total_steps() == 2
        assert summary["examples_per_second"] > 0 and summary["measured_steps"] == 1
        assert all(np.isfinite(v) for v in summary["final_logs"].values()), summary["final_logs"]
        assert "final logs after 2 optimizer updates" in out
