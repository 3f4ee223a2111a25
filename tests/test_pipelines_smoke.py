"""Smoke runs: configs of each model/optimizer family train end-to-end on CPU
through the real TFDS loading code (``tfds.testing.mock_data``) and real
``Model.fit`` under a real tf.distribute strategy.

Every file in tpu_configs/ is validated in test_config.py; here one file per
(model, optimizer) pair trains (the BERT family in test_pipelines_bert.py), to
stay within the test-time budget.
"""

import glob
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tf_largebatch import config
from tf_largebatch.pipelines import train

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
    assert (run / "final.weights.h5").exists()
    assert sorted(os.listdir(run / "checkpoints")) == ["loop-00001.weights.h5", "loop-00002.weights.h5"]
    assert glob.glob(str(run / "logs" / "train" / "events.out.tfevents.*"))


# One ResNet-20/CIFAR-10 config per optimizer of the SNGM paper's Table 2; the
# SNGM run also covers mixed_bfloat16, the LARS run gradient accumulation.
CIFAR_RUNS = [
    ("resnet20_sngm_1024_v3-8", ["precision=mixed_bfloat16"]),
    ("resnet20_msgd_8192_v3-8", []),
    ("resnet20_lars_2048_v3-8", ["training.global_batch_size=8", "training.gradient_accumulation_steps=2"]),
]


@pytest.mark.parametrize("name, overrides", CIFAR_RUNS, ids=[r[0] for r in CIFAR_RUNS])
def test_cifar_configs_train_in_smoke_mode(name, overrides, tmp_path, mock_tfds):
    cfg, summary = smoke(name, tmp_path, *overrides)
    check_run(cfg, summary, tmp_path)
    assert summary["replicas"] == 2


@pytest.mark.slow
def test_resnet50_vrlars_config_trains_in_smoke_mode(tmp_path, mock_tfds):
    # ResNet-50 itself (25 M parameters) at 64 pixels; VR-LARS with k = 2
    # accumulation micro-batches on one device. The LARS and SNGM ResNet-50
    # configs use the same model and data code (validated in test_config.py).
    cfg, summary = smoke("resnet50_vrlars_32k_v3-512", tmp_path)
    check_run(cfg, summary, tmp_path)
    assert cfg.training.gradient_accumulation_steps == 2
