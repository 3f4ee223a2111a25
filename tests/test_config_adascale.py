"""AdaScale in configs: ``optimizer: {name: AdaScale, inner: {...}}``, Keras's ``{class_name, config}``
form, ``training.base_global_batch_size`` (lengths in base-run updates), the runner's stop at the
base run's updates, and clear errors for the combinations that cannot work."""

import json

import keras
import numpy as np
import pytest
import yaml

import tf_largebatch as tlb
from tf_largebatch import cli, config
from tf_largebatch.pipelines import train

INNER = {"name": "SGD", "args": {"momentum": 0.9}}


def raw_with(optimizer=None, *, base=32, batch=128, strategy=None, accumulation=1, **sections):
    raw = {
        "name": "t", "task": "cifar10", "data": {"name": "cifar10", "num_train_examples": 1024},
        "model": {"name": "resnet20", "args": {"depth": 8}},
        "optimizer": optimizer if optimizer is not None else {"name": "AdaScale", "inner": INNER},
        "schedule": {"name": "warmup_cosine", "learning_rate": 0.1, "warmup_epochs": 1},
        "strategy": strategy or {"type": "mirrored", "num_cpu_replicas": 4},
        "training": {"global_batch_size": batch, "epochs": 2, "gradient_accumulation_steps": accumulation},
    }
    if base is not None:
        raw["training"]["base_global_batch_size"] = base
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


def load(tmp_path, raw, overrides=(), smoke=False):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    (cfg,) = config.load_config(str(path), overrides=overrides, smoke=smoke)
    return cfg


def error_of(tmp_path, raw):
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, raw)
    return str(info.value)


def test_lengths_count_base_run_updates_and_the_runner_sets_the_scale(tmp_path):
    cfg = load(tmp_path, raw_with())
    # 2 epochs of 1024 examples at the base batch 32: 64 base-run updates, 32 of them warm-up.
    assert cfg.total_steps() == 64 and cfg.warmup_steps() == 32
    optimizer = train.build_optimizer(cfg)
    assert isinstance(optimizer, tlb.AdaScale) and optimizer.scale == 4.0
    assert isinstance(optimizer.inner_optimizer, keras.optimizers.SGD)
    assert optimizer.inner_optimizer.momentum == 0.9
    schedule = train.build_schedule(cfg)
    assert float(schedule(32)) == pytest.approx(0.1) and float(schedule(64)) == pytest.approx(0.0, abs=1e-7)
    assert optimizer.learning_rate is not None  # the base rate at tau = 0


def test_keras_form_from_get_config_builds_the_same_optimizer(tmp_path):
    original = tlb.AdaScale(keras.optimizers.SGD(0.1, momentum=0.8, nesterov=True), smoothing=0.9)
    cfg = load(tmp_path, raw_with(keras.optimizers.serialize(original)))
    assert cfg.optimizer.keras_form and cfg.optimizer.name == "AdaScale"
    built = train.build_optimizer(cfg)
    assert isinstance(built, tlb.AdaScale) and built.smoothing == 0.9 and built.scale == 4.0
    assert built.inner_optimizer.nesterov and built.inner_optimizer.momentum == 0.8


def test_gsnr_monitor_is_accepted_with_adascale(tmp_path):
    cfg = load(tmp_path, raw_with(callbacks={"gsnr_monitor": {"update_freq": 2}}))
    assert cfg.callbacks.gsnr_monitor == {"update_freq": 2}


@pytest.mark.parametrize("change, path, message", [
    (dict(base=None), "training.base_global_batch_size", "required by AdaScale"),
    (dict(base=256), "training.base_global_batch_size", "larger than training.global_batch_size"),
    (dict(optimizer={"name": "SGD", "args": {"momentum": 0.9}}), "training.base_global_batch_size",
     "AdaScale optimizer only"),
    (dict(optimizer={"name": "AdaScale"}), "optimizer.inner", "required by AdaScale"),
    (dict(optimizer={"name": "SGD", "inner": INNER}, base=None), "optimizer.inner", "takes no inner optimizer"),
    (dict(optimizer={"name": "AdaScale", "inner": {"name": "VR", "args": {}}}), "optimizer.inner.name",
     "wraps one itself"),
    (dict(optimizer={"name": "AdaScale", "inner": {"name": "VRSGD"}}), "optimizer: rejected by AdaScale",
     "does not wrap a VRSGD"),
    (dict(optimizer={"name": "AdaScale", "inner": {"name": "SGD", "args": {"learning_rate": 0.1}}}),
     "optimizer.inner.args.learning_rate", "put it in schedule"),
    (dict(optimizer={"name": "AdaScale", "inner": {"name": "SGD", "args": {"momentun": 0.9}}}),
     "optimizer.inner.args.momentun", "unknown argument of SGD"),
    (dict(optimizer={"name": "AdaScale", "inner": {"name": "SDG"}}), "optimizer.inner.name", "did you mean 'SGD'"),
    (dict(optimizer={"name": "AdaScale", "inner": INNER, "args": {"scale": 8.0}}), "optimizer.args.scale",
     "training.base_global_batch_size"),
    (dict(optimizer={"name": "AdaScale", "inner": INNER, "args": {"smoothing": 1.0}}), "optimizer: rejected",
     "smoothing"),
    (dict(optimizer={"name": "AdaScale", "inner": INNER, "args": {"weight_decay": 1e-4}}), "optimizer: rejected",
     "set it on the inner optimizer"),
    (dict(strategy={"type": "one_device"}), "training.gradient_accumulation_steps", "k >= 2"),
])
def test_bad_combinations_are_config_errors(tmp_path, change, path, message):
    error = error_of(tmp_path, raw_with(**change))
    assert error.startswith(path) and message in error, error


def test_one_device_with_accumulation_gives_two_samples(tmp_path):
    cfg = load(tmp_path, raw_with(strategy={"type": "one_device"}, accumulation=2))
    assert train.build_optimizer(cfg).gradient_accumulation_steps == 2


def test_keras_form_must_agree_with_the_runner(tmp_path):
    config_ = keras.optimizers.serialize(tlb.AdaScale(keras.optimizers.SGD(0.1), scale=2.0))
    error = error_of(tmp_path, raw_with(config_))
    assert error.startswith("optimizer.config.scale") and "differs" in error
    config_ = keras.optimizers.serialize(tlb.AdaScale(keras.optimizers.SGD(0.5)))
    error = error_of(tmp_path, raw_with(config_))
    assert error.startswith("optimizer.config.inner_optimizer.config.learning_rate") and "differs" in error


def test_the_runner_stops_at_the_base_runs_updates(tmp_path):
    # Base batch 2 at batch 8 (S = 4) on 2 replicas x 2 micro-batches (k = 4): the 6 base-run
    # updates take fewer than 6 updates, and the summary says how many base updates they were worth.
    raw = raw_with(base=2, batch=8, accumulation=2, strategy={"type": "mirrored", "num_cpu_replicas": 2})
    raw["training"].update({"epochs": None, "steps": 6, "steps_per_loop": 2, "verbose": 0,
                            "model_dir": str(tmp_path / "run")})
    raw["data"] = {"synthetic": True, "image_size": 8, "num_train_examples": 64}
    raw["model"]["args"] = {"depth": 8, "width": 2, "num_classes": 10}
    raw["schedule"] = {"name": "constant", "learning_rate": 0.05}
    raw["callbacks"] = {"tensorboard": False, "checkpoints": False, "backup_and_restore": False}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["train", "--config", str(path)]) == 0
    summary = json.loads((tmp_path / "run" / train.SUMMARY).read_text())
    assert summary["optimizer"] == "AdaScale"
    assert summary["scale_invariant_steps"] >= 6.0
    assert summary["optimizer_updates"] < 6
    assert np.isfinite(summary["final_learning_rate"]) and summary["final_learning_rate"] >= 0.05 - 1e-9
