"""The VRGD paper's CIFAR-10 / ResNet-56 configs carry Table 12 exactly.

The table below is typed by hand from the paper (Jiang et al., "Accelerating
Large Batch Training via Gradient Signal to Noise Ratio (GSNR)", Table 12 for
the hyper-parameters, Table 6 for the accuracies); every shipped
``resnet56_*`` file is checked against it.
"""

import glob
import os

import pytest

from tf_largebatch import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "tf_largebatch", "tpu_configs")
STEPS_PER_EPOCH = {b: 50000 / b for b in (256, 512, 1024, 2048, 4096, 8192)}

# (optimizer row, batch size, warm-up epochs exponent: 2^e, LR as numerator / (2^e x denominator),
#  Table 6 accuracy in %)
TABLE_12 = [
    ("Momentum", 256, 2, 128, 2, 100, "93.68"),
    ("Momentum", 512, 2.5, 128, 1.5, 100, "93.56"),
    ("Momentum", 1024, 3, 128, 1, 100, "93.17"),
    ("Momentum", 2048, 3.5, 128, 0.5, 100, "92.19"),
    ("Momentum", 4096, 4, 128, 0, 100, "17.40"),
    ("Momentum", 8192, 5, 128, -0.5, 100, "14.57"),
    ("VR-Momentum", 256, 2, 128, 2, 100, "93.79"),
    ("VR-Momentum", 512, 2.5, 128, 1.5, 100, "93.71"),
    ("VR-Momentum", 1024, 3, 128, 1, 100, "93.50"),
    ("VR-Momentum", 2048, 3.5, 128, 0.5, 100, "93.28"),
    ("VR-Momentum", 4096, 4, 128, 0, 100, "92.70"),
    ("VR-Momentum", 8192, 5, 128, -0.5, 100, "90.57"),
    ("Adam", 256, 2, 192, 3, 1e4, "91.88"),
    ("Adam", 512, 2.5, 192, 2.5, 1e4, "92.24"),
    ("Adam", 1024, 3, 192, 2, 1e4, "92.02"),
    ("Adam", 2048, 3.5, 192, 1, 1e4, "91.98"),
    ("Adam", 4096, 4, 192, 0, 1e4, "59.38"),
    ("Adam", 8192, 5, 192, -1, 1e4, "20.74"),
    ("VR-Adam", 256, 2, 192, 3, 1e4, "92.46"),
    ("VR-Adam", 512, 2.5, 192, 2.5, 1e4, "92.40"),
    ("VR-Adam", 1024, 3, 192, 2, 1e4, "92.43"),
    ("VR-Adam", 2048, 3.5, 192, 1, 1e4, "92.10"),
    ("VR-Adam", 4096, 4, 192, 0, 1e4, "91.74"),
    ("VR-Adam", 8192, 5, 192, -1, 1e4, "90.86"),
    ("LAMB", 256, 2, 64, 4, 1e3, "92.08"),
    ("LAMB", 512, 2.5, 64, 3.5, 1e3, "92.03"),
    ("LAMB", 1024, 3, 64, 3, 1e3, "91.90"),
    ("LAMB", 2048, 3.5, 64, 2, 1e3, "92.13"),
    ("LAMB", 4096, 4, 64, 1, 1e3, "58.35"),
    ("LAMB", 8192, 5, 64, 1, 1e3, "15.13"),
    ("VR-LAMB", 256, 2, 64, 4, 1e3, "92.29"),
    ("VR-LAMB", 512, 2.5, 64, 3.5, 1e3, "92.34"),
    ("VR-LAMB", 1024, 3, 64, 3, 1e3, "92.05"),
    ("VR-LAMB", 2048, 3.5, 64, 2, 1e3, "92.43"),
    ("VR-LAMB", 4096, 4, 64, 1, 1e3, "92.04"),
    ("VR-LAMB", 8192, 5, 64, 1, 1e3, "91.07"),
    ("LARS", 256, 2, 896, 2, 100, "92.30"),
    ("LARS", 512, 2.5, 896, 1.5, 100, "92.29"),
    ("LARS", 1024, 3, 896, 1, 100, "92.34"),
    ("LARS", 2048, 3.5, 896, 0.5, 100, "82.39"),
    ("LARS", 4096, 4, 896, 0, 100, "27.50"),
    ("LARS", 8192, 5, 896, -0.5, 100, "12.21"),
    ("VR-LARS", 256, 2, 896, 2, 100, "92.35"),
    ("VR-LARS", 512, 2.5, 896, 1.5, 100, "92.53"),
    ("VR-LARS", 1024, 3, 896, 1, 100, "92.44"),
    ("VR-LARS", 2048, 3.5, 896, 0.5, 100, "92.79"),
    ("VR-LARS", 4096, 4, 896, 0, 100, "92.35"),
    ("VR-LARS", 8192, 5, 896, -0.5, 100, "91.86"),
]
OPTIMIZER_CLASS = {
    "Momentum": "SGD", "VR-Momentum": "VRMomentum", "Adam": "Adam", "VR-Adam": "VRAdam",
    "LAMB": "LAMB", "VR-LAMB": "VRLAMB", "LARS": "LARS", "VR-LARS": "VRLARS",
}


def config_file(row, batch):
    return os.path.join(CONFIG_DIR, f"resnet56_{row.lower().replace('-', '')}_{batch}_v3-8.yaml")


def test_one_file_per_row_and_no_other():
    expected = sorted(config_file(row, batch) for row, batch, *_ in TABLE_12)
    assert sorted(glob.glob(os.path.join(CONFIG_DIR, "resnet56_*.yaml"))) == expected


@pytest.mark.parametrize("row, batch, warmup_exp, numerator, lr_exp, denominator, accuracy", TABLE_12,
                         ids=[f"{r[0]}-{r[1]}" for r in TABLE_12])
def test_config_carries_table_12(row, batch, warmup_exp, numerator, lr_exp, denominator, accuracy):
    path = config_file(row, batch)
    (cfg,) = config.load_config(path)
    assert cfg.task == "cifar10" and cfg.model.name == "resnet56" and cfg.model.args.get("depth", 56) == 56
    assert cfg.optimizer.name == OPTIMIZER_CLASS[row]
    if row.startswith("VR-"):
        assert cfg.optimizer.args["gamma"] == 0.1  # Table 12's note
    assert cfg.training.global_batch_size == batch
    # Device number k = 8 (Table 12's note): 8 replicas, no accumulation.
    assert cfg.strategy.type == "tpu" and cfg.training.gradient_accumulation_steps == 1 and "v3-8" in cfg.name
    assert cfg.schedule.learning_rate == pytest.approx(numerator / (2.0**lr_exp * denominator), rel=1e-12)
    assert cfg.schedule.warmup_epochs == pytest.approx(2.0**warmup_exp, rel=1e-12)
    # Section 7.1: label smoothing and cosine decay to 0.
    assert cfg.schedule.name == "warmup_cosine" and cfg.schedule.alpha == 0.0
    assert cfg.loss.label_smoothing > 0
    assert cfg.warmup_steps() == round(2.0**warmup_exp * STEPS_PER_EPOCH[batch])
    with open(path) as f:
        text = f.read()
    label = {1024: "1k", 2048: "2k", 4096: "4k", 8192: "8k"}.get(batch, str(batch))
    assert f"Expected result: Table 6 (top-1 test accuracy, mean of 5 runs), {row} at {label}: {accuracy}%." \
        in text


def test_the_headline_rows():
    # The two worked examples, by value.
    (momentum,) = config.load_config(config_file("Momentum", 4096))
    assert momentum.schedule.learning_rate == pytest.approx(1.28) and momentum.schedule.warmup_epochs == 16
    (adam,) = config.load_config(config_file("Adam", 4096))
    assert adam.schedule.learning_rate == pytest.approx(0.0192) and adam.schedule.warmup_epochs == 16


def test_the_resnet56_model_has_56_layers_with_weights():
    """The ``resnet56`` model name builds depth 56: 55 convolutions and the dense layer (He et al. 2016, §4.2)."""
    import keras

    from tf_largebatch.pipelines import models

    model = models.resnet56(width=4)
    weighted = [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    assert len(weighted) == 56 and model.name == "resnet56"
