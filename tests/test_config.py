"""Config files: every tpu_configs/ file validates, carries its paper's numbers,
and bad configs fail with the key path and what was expected."""

import glob
import os
import re

import pytest
import yaml

from tf_largebatch import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(glob.glob(os.path.join(ROOT, "tpu_configs", "*.yaml")))
NAMES = [os.path.basename(f) for f in CONFIG_FILES]


def test_there_are_configs_for_every_family():
    assert len(CONFIG_FILES) >= 30
    for prefix in ("bert_large_vrlamb_", "resnet50_vrlars_", "resnet50_lars_", "resnet50_sngm_",
                   "resnet20_sngm_", "resnet20_msgd_", "resnet20_lars_"):
        assert any(n.startswith(prefix) for n in NAMES), prefix


@pytest.mark.parametrize("smoke", [False, True], ids=["full", "smoke"])
def test_every_config_validates(smoke):
    # One test over all files (not one per file): each test pays conftest's
    # clear_session, and validation itself takes milliseconds.
    for path in CONFIG_FILES:
        configs = config.load_config(path, smoke=smoke)
        stem = os.path.splitext(os.path.basename(path))[0]
        for cfg in configs:
            assert cfg.name == stem, path  # named for model, optimizer, batch and slice
            assert cfg.source, path
            if smoke:
                assert cfg.total_steps() <= 2 and cfg.training.global_batch_size <= 8, path


def test_every_config_states_its_source_and_batch_in_its_name():
    for path in CONFIG_FILES:
        with open(path) as f:
            text = f.read()
        assert re.search(r"^# Source: ", text, re.M), path
        # The name's batch label (16k, 64k-32k, 1024) is the first phase's global batch.
        cfg = config.load_config(path)[0]
        label = os.path.basename(path).split("_")[3 if "bert_large" in path else 2]
        batch = label.split("-")[0]
        expected = int(batch[:-1]) * 1024 if batch.endswith("k") else int(batch)
        assert cfg.training.global_batch_size == expected, path


# Jiang et al., "Accelerating Large Batch Training via Gradient Signal to Noise Ratio (GSNR)", Table 9, typed from the paper:
# batch, steps, warm-up, phase-1 LR, phase-1 k, phase-2 warm-up, phase-2 LR, phase-2 k.
TABLE_9 = {
    "16k": (16384, 16384, 31250, 2800, 0.0035, 8, 280, 0.0035, 32),
    "32k": (32768, 32768, 15625, 2800, 0.0053, 8, 280, 0.0053, 32),
    "64k-32k": (65536, 32768, 8599, 2000, 0.007, 8, 200, 0.0045, 32),
    "64k": (65536, 65536, 7820, 2000, 0.007, 8, 200, 0.0055, 64),
    "96k-32k": (98304, 32768, 6256, 1870, 0.007, 12, 200, 0.00575, 32),
    "96k": (98304, 98304, 5214, 1870, 0.007, 12, 187, 0.0055, 96),
    "128k-64k": (131072, 65536, 4301, 1760, 0.007, 16, 200, 0.00575, 64),
}


def test_bert_vrlamb_configs_carry_table_9():
    for label in TABLE_9:
        check_table_9_row(label)


def check_table_9_row(label):
    (path,) = glob.glob(os.path.join(ROOT, "tpu_configs", f"bert_large_vrlamb_{label}_*.yaml"))
    b1, b2, steps, w1, lr1, k1, w2, lr2, k2 = TABLE_9[label]
    phase1, phase2 = config.load_config(path)
    assert phase1.total_steps() + phase2.total_steps() == steps
    assert (phase1.training.global_batch_size, phase2.training.global_batch_size) == (b1, b2)
    assert (phase1.warmup_steps(), phase2.warmup_steps()) == (w1, w2)
    assert (phase1.schedule.learning_rate, phase2.schedule.learning_rate) == (lr1, lr2)
    assert (phase1.training.gradient_accumulation_steps, phase2.training.gradient_accumulation_steps) == (k1, k2)
    assert (phase1.data.seq_length, phase2.data.seq_length) == (128, 512)
    assert phase1.model.args["max_sequence_length"] == 512  # sized for phase 2 from the start
    for phase in (phase1, phase2):
        assert phase.optimizer.name == "VRLAMB" and phase.optimizer.args["gamma"] == 0.1


# VRGD paper, Table 10: batch, warm-up epochs, LR.
TABLE_10 = {"2k": (2048, 0.625, 7.0), "4k": (4096, 1.25, 7 * 2**0.5), "8k": (8192, 2.5, 14.0),
            "16k": (16384, 5, 7 * 2**1.5), "32k": (32768, 14, 28.0), "64k": (65536, 40, 37.0),
            "96k": (98304, 41, 38.0)}


def test_resnet50_vrlars_configs_carry_table_10():
    for label in TABLE_10:
        check_table_10_row(label)


def check_table_10_row(label):
    (path,) = glob.glob(os.path.join(ROOT, "tpu_configs", f"resnet50_vrlars_{label}_*.yaml"))
    batch, warmup_epochs, lr = TABLE_10[label]
    (cfg,) = config.load_config(path)
    assert cfg.training.global_batch_size == batch
    assert cfg.schedule.warmup_epochs == warmup_epochs
    assert cfg.schedule.learning_rate == pytest.approx(lr, rel=1e-5)
    assert cfg.schedule.name == "warmup_cosine" and cfg.loss.label_smoothing == 0.1
    assert cfg.optimizer.args["gamma"] == 0.1
    assert cfg.warmup_steps() == round(warmup_epochs * 1281167 / batch)


def test_resnet20_configs_follow_sngm_section_7_1():
    for batch, opt in [(b, o) for b in (128, 1024, 2048, 4096, 8192) for o in ("sngm", "msgd", "lars")]:
        (cfg,) = config.load_config(os.path.join(ROOT, "tpu_configs", f"resnet20_{opt}_{batch}_v3-8.yaml"))
        assert cfg.training.epochs == 160 and cfg.schedule.name == "warmup_cosine"
        assert cfg.warmup_steps() == 0  # "We do not use any training tricks like warm-up"
        # 8 devices with B/8 each, accumulating micro-batches of 128 beyond that.
        assert cfg.training.gradient_accumulation_steps == max(1, batch // 8 // 128)
        momentum = cfg.optimizer.args["momentum"]
        assert momentum == 0.9


# ----------------------------------------------------------------------- errors


def write(tmp_path, raw, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def base_raw():
    return {
        "name": "t",
        "task": "cifar10",
        "data": {"name": "cifar10", "num_train_examples": 50000},
        "model": {"name": "resnet20", "args": {"depth": 8}},
        "optimizer": {"name": "SNGM", "args": {"momentum": 0.9}},
        "schedule": {"name": "warmup_cosine", "learning_rate": 0.1, "warmup_steps": 1},
        "training": {"global_batch_size": 8, "steps": 4},
    }


def error_of(tmp_path, raw=None, overrides=(), smoke=False):
    path = write(tmp_path, raw or base_raw())
    with pytest.raises(config.ConfigError) as info:
        config.load_config(path, overrides=overrides, smoke=smoke)
    return str(info.value)


def test_a_good_config_loads(tmp_path):
    (cfg,) = config.load_config(write(tmp_path, base_raw()))
    assert cfg.optimizer.args == {"momentum": 0.9} and cfg.total_steps() == 4


def test_wrong_type_names_the_key_and_expectation(tmp_path):
    message = error_of(tmp_path, overrides=["optimizer.args.momentum=abc"])
    assert message == "optimizer.args.momentum: expected a number, got 'abc'"
    message = error_of(tmp_path, overrides=["training.global_batch_size=8.5"])
    assert message.startswith("training.global_batch_size: expected an integer, got 8.5")
    message = error_of(tmp_path, overrides=["precision=float16"])
    assert message.startswith("precision: expected one of 'float32', 'mixed_bfloat16', 'mixed_float16'")


def test_unknown_key_lists_the_known_ones(tmp_path):
    message = error_of(tmp_path, overrides=["training.batch_size=8"])
    assert message.startswith("training.batch_size: unknown key; expected one of:")
    assert "global_batch_size" in message
    raw = base_raw()
    raw["optimiser"] = {}
    assert error_of(tmp_path, raw).startswith("optimiser: unknown key")


def test_unknown_optimizer_lists_the_known_names(tmp_path):
    message = error_of(tmp_path, overrides=["optimizer.name=VRLAMBB"])
    assert message.startswith("optimizer.name: unknown optimizer 'VRLAMBB'")
    for name in ("SNGM", "LARS", "LAMB", "VR", "VRSGD", "VRMomentum", "VRAdam", "VRLAMB", "VRLARS", "SGD", "Adam"):
        assert re.search(rf"\b{name}\b", message), name


def test_optimizer_arguments_are_checked_by_the_optimizer(tmp_path):
    message = error_of(tmp_path, overrides=["optimizer.args.momentum=1.5"])
    assert message.startswith("optimizer.args: rejected by SNGM:") and "momentum" in message
    message = error_of(tmp_path, overrides=["optimizer.args.momentun=0.9"])
    assert message.startswith("optimizer.args.momentun: unknown argument of SNGM; expected one of:")
    assert "momentum" in message and "clipnorm" in message
    message = error_of(tmp_path, overrides=["optimizer.name=VRLAMB", "optimizer.args={gama: 0.1}"])
    assert message.startswith("optimizer.args.gama: unknown argument of VRLAMB")
    assert "gamma" in message and "beta_1" in message
    message = error_of(tmp_path, overrides=["optimizer.args.learning_rate=0.1"])
    assert message == "optimizer.args.learning_rate: set by the runner; put it in schedule"


def test_missing_dataset_and_model_problems(tmp_path):
    assert error_of(tmp_path, overrides=["data.name=no_such_dataset"]).startswith(
        "data.name: unknown tensorflow-datasets dataset 'no_such_dataset'")
    assert error_of(tmp_path, overrides=["data.name=null"]).startswith("data: expected 'name'")
    assert error_of(tmp_path, overrides=["model.name=resnet50"]).startswith(
        "model.name: model 'resnet50' does not fit task 'cifar10'")
    assert error_of(tmp_path, overrides=["model.args.depth=deep"]) == (
        "model.args.depth: expected a number, got 'deep'")
    assert error_of(tmp_path, overrides=["model.args.layers=3"]).startswith(
        "model.args.layers: unknown argument of model 'resnet20'")


def test_required_and_cross_field_checks(tmp_path):
    raw = base_raw()
    del raw["training"]["global_batch_size"]
    assert error_of(tmp_path, raw) == "training.global_batch_size: required"
    assert error_of(tmp_path, overrides=["training.epochs=2"]) == (
        "training: expected exactly one of 'steps' and 'epochs'")
    assert error_of(tmp_path, overrides=["training.gradient_accumulation_steps=3"]).startswith(
        "training.gradient_accumulation_steps: must divide training.global_batch_size (8)")
    assert error_of(tmp_path, overrides=["schedule.warmup_steps=4"]).startswith(
        "schedule.warmup_steps: the warm-up (4 steps) must be shorter than training (4 steps)")


def test_gsnr_monitor_needs_an_optimizer_that_records_statistics(tmp_path):
    # The config agrees with GSNRMonitor in Python: a VR optimizer, or any
    # optimizer of the package created with record_gradient_statistics=True.
    assert error_of(tmp_path, overrides=["callbacks.gsnr_monitor={update_freq: 5}"]).startswith(
        "callbacks.gsnr_monitor: needs an optimizer that records gradient statistics: a VR optimizer, or one of "
        "this package with optimizer.args.record_gradient_statistics: true; 'SNGM' as configured records none")
    assert error_of(tmp_path, overrides=["callbacks.gsnr_monitor={update_freq: 5}", "optimizer.name=SGD"]
                    ).startswith("callbacks.gsnr_monitor: needs an optimizer that records gradient statistics")
    (cfg,) = config.load_config(write(tmp_path, base_raw()), overrides=[
        "callbacks.gsnr_monitor={update_freq: 5}", "optimizer.args.record_gradient_statistics=true"])
    assert cfg.optimizer.name == "SNGM" and cfg.callbacks.gsnr_monitor == {"update_freq": 5}
    assert error_of(tmp_path, overrides=["callbacks.gsnr_monitor={update_freqq: 5}", "optimizer.name=VRMomentum"]
                    ).startswith("callbacks.gsnr_monitor.update_freqq: unknown argument of GSNRMonitor")
    (cfg,) = config.load_config(write(tmp_path, base_raw()), overrides=[
        "callbacks.gsnr_monitor={update_freq: 5}", "optimizer.name=VRMomentum"])
    assert cfg.callbacks.gsnr_monitor == {"update_freq": 5}


def test_set_values_are_yaml_typed(tmp_path):
    path = write(tmp_path, base_raw())
    (cfg,) = config.load_config(path, overrides=[
        "training.steps=7", "optimizer.args.nesterov=true", "schedule.learning_rate=2e-1",
        "optimizer.args.exclude_from_weight_decay=[gamma, beta]", "optimizer.name=LARS",
    ])
    assert cfg.training.steps == 7 and cfg.schedule.learning_rate == 0.2
    assert cfg.optimizer.args["nesterov"] is True
    assert cfg.optimizer.args["exclude_from_weight_decay"] == ["gamma", "beta"]
    with pytest.raises(config.ConfigError, match=r"^--set: expected key.path=value"):
        config.load_config(path, overrides=["training.steps"])


def test_phase_errors_name_the_phase(tmp_path):
    raw = base_raw()
    raw["phases"] = [{"name": "a"}, {"name": "b", "training": {"steps": "many"}}]
    assert error_of(tmp_path, raw) == "phases[1].training.steps: expected an integer, got 'many'"
    raw["phases"][1]["training"]["steps"] = 3
    assert error_of(tmp_path, raw, overrides=["phases.2.training.steps=1"]).startswith("--set: 'phases.2.")
    a, b = config.load_config(write(tmp_path, raw), overrides=["phases.1.training.steps=5"])
    assert (a.phase, a.total_steps(), b.phase, b.total_steps()) == ("a", 4, "b", 5)


def test_smoke_shrinks_but_set_still_wins(tmp_path):
    path = write(tmp_path, base_raw())
    (cfg,) = config.load_config(path, smoke=True, overrides=["training.steps=3"])
    assert cfg.model.args["depth"] == 8 and cfg.model.args["width"] == 4
    assert cfg.training.steps == 3 and cfg.strategy.num_cpu_replicas == 2


@pytest.mark.parametrize("opt_cfg", [
    config.OptimizerConfig("SGD", {"weight_decay": 0.5, "exclude_from_weight_decay": ["gamma", "beta"]}),
    config.OptimizerConfig(class_name="SGD", config={"weight_decay": 0.5, "exclude_from_weight_decay": ["gamma"]}),
], ids=["name_args", "keras_form"])
def test_keras_optimizer_weight_decay_exclusions_use_keras_mechanism(opt_cfg):
    # Keras's Optimizer.exclude_from_weight_decay(var_names=...): the short variable name.
    import keras

    optimizer = config.build_optimizer(opt_cfg, learning_rate=0.1)
    gamma, kernel = keras.Variable([1.0], name="gamma"), keras.Variable([1.0], name="kernel")
    optimizer.apply([keras.ops.zeros([1]), keras.ops.zeros([1])], [gamma, kernel])
    assert float(gamma.numpy()[0]) == 1.0  # excluded: no decay
    assert float(kernel.numpy()[0]) == pytest.approx(1.0 - 0.1 * 0.5)  # decoupled decay: lr * wd * w


def test_resnet50_lars_32k_carries_the_mlperf_submission_values():
    (cfg,) = config.load_config(os.path.join(ROOT, "tpu_configs", "resnet50_lars_32k_v3-256.yaml"))
    assert cfg.optimizer.name == "LARS" and cfg.training.global_batch_size == 32768
    assert (cfg.schedule.learning_rate, cfg.schedule.warmup_epochs, cfg.training.epochs) == (29.0, 18, 64)
    assert (cfg.schedule.power, cfg.schedule.end_learning_rate, cfg.loss.label_smoothing) == (2.0, 1e-4, 0.1)
    assert cfg.optimizer.args["momentum"] == 0.929 and cfg.optimizer.args["weight_decay"] == 1e-4
    assert cfg.optimizer.args["epsilon"] == 0.0 and cfg.optimizer.args["trust_coefficient"] == 0.001


def test_resnet50_sngm_32k_follows_sngm_section_7_1():
    (cfg,) = config.load_config(os.path.join(ROOT, "tpu_configs", "resnet50_sngm_32k_v3-512.yaml"))
    assert cfg.optimizer.name == "SNGM" and cfg.training.global_batch_size == 32768
    assert cfg.training.epochs == 90 and cfg.schedule.name == "warmup_polynomial"
    assert cfg.optimizer.args["momentum"] == 0.9 and cfg.optimizer.args["weight_decay"] == 1e-4


def test_the_old_warm_up_start_key_is_an_error_naming_the_new_one(tmp_path):
    # Model Garden's initial_learning_rate is the peak; the start of the warm-up
    # is Model Garden's warmup_learning_rate, and so it is here.
    assert error_of(tmp_path, overrides=["schedule.initial_learning_rate=0.01"]) == (
        "schedule.initial_learning_rate: renamed to schedule.warmup_learning_rate (same meaning); use that key")
    (cfg,) = config.load_config(write(tmp_path, base_raw()), overrides=["schedule.warmup_learning_rate=0.01"])
    assert cfg.schedule.warmup_learning_rate == 0.01


def test_phase_is_not_a_key_of_a_file_and_the_unknown_key_error_lists_phases_and_smoke(tmp_path):
    message = error_of(tmp_path, {**base_raw(), "phase": "x"})
    assert message.startswith("phase: set by the loader, not a key of a file (a phase's name is phases[].name); "
                              "expected one of: ")
    listed = message.split("expected one of: ")[1].split(", ")
    assert error_of(tmp_path, {**base_raw(), "phasess": 1}).startswith("phasess: unknown key")
    assert "phases" in listed and "smoke" in listed and "phase" not in listed
    phased = {**base_raw(), "phases": [{"name": "a", "phase": "b"}]}
    assert error_of(tmp_path, phased).startswith("phases[0].phase: set by the loader")
    (cfg,) = config.load_config(write(tmp_path, {**base_raw(), "phases": [{"name": "a"}]}))
    assert cfg.phase == "a"


def test_a_key_of_another_schedule_is_an_error(tmp_path):
    assert error_of(tmp_path, overrides=["schedule.power=2"]) == (
        "schedule.power: not read by schedule 'warmup_cosine' (only by warmup_polynomial); drop it or "
        "change schedule.name")


def test_a_key_of_another_strategy_type_is_an_error(tmp_path):
    assert error_of(tmp_path, overrides=["strategy.num_cpu_replicas=2"]) == (
        "strategy.num_cpu_replicas: not read by strategy 'one_device' (only by mirrored); drop it or change "
        "strategy.type")
    assert error_of(tmp_path, overrides=["strategy.type=mirrored", "strategy.tpu_zone=us-central1-a"]).startswith(
        "strategy.tpu_zone: not read by strategy 'mirrored' (only by tpu)")
    # An empty TPU name (a TPU VM in configs of earlier releases) reads as unset.
    config.load_config(write(tmp_path, base_raw()), overrides=["strategy.type=mirrored", "strategy.tpu=''",
                                                               "strategy.num_cpu_replicas=2"])
    assert error_of(tmp_path, overrides=["schedule.name=warmup_cosinus"]).startswith(
        "schedule.name: unknown schedule 'warmup_cosinus' (did you mean 'warmup_cosine'?)")


def test_keras_accumulation_over_known_mirrored_replicas_is_refused_when_loaded(tmp_path):
    overrides = ["optimizer.name=SGD", "training.gradient_accumulation_steps=2", "strategy.type=mirrored",
                 "strategy.num_cpu_replicas=2"]
    assert error_of(tmp_path, overrides=overrides).startswith(
        "training.gradient_accumulation_steps: Keras's SGD cannot accumulate gradients over 2 MirroredStrategy "
        "replicas")
    # One replica, or an optimizer of this package, is fine.
    config.load_config(write(tmp_path, base_raw()), overrides=overrides[:2])
    config.load_config(write(tmp_path, base_raw()), overrides=overrides[1:])


def test_the_key_table_of_configs_md_lists_every_key_of_the_schema():
    """docs/configs.md's "Config format" table against the dataclasses: every key a
    file may give is in its section's row; internal keys and renamed keys are not."""
    import dataclasses
    import pathlib
    import re

    from tf_largebatch.config import schema

    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "configs.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        match = re.match(r"\| `(\w+)`(?:, `\w+`)* \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = line
    top_level = {f.name for f in dataclasses.fields(schema.ExperimentConfig)} - set(
        schema.ExperimentConfig.INTERNAL_KEYS)
    for key in (*top_level, *schema.ExperimentConfig.FILE_KEYS):
        assert any(f"`{key}`" in row.split(" | ")[0] for row in rows.values()), f"no row for {key!r}"
    missing = {}
    for field in dataclasses.fields(schema.ExperimentConfig):
        if not dataclasses.is_dataclass(field.default_factory if field.default_factory is not dataclasses.MISSING
                                        else None):
            continue
        row = rows[field.name]
        absent = [f.name for f in dataclasses.fields(field.default_factory) if f"`{f.name}`" not in row]
        if absent:
            missing[field.name] = absent
    assert missing == {}
    for old, new in schema.RENAMED_KEYS.items():
        section, key = old.split(".")
        assert f"`{new.split('.')[1]}`" in rows[section]


def test_keras_accumulation_over_the_workers_of_tf_config_is_refused_by_the_machine_check(tmp_path, monkeypatch):
    import json

    workers = {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(workers))
    configs = config.load_config(write(tmp_path, base_raw()), overrides=[
        "optimizer.name=SGD", "training.gradient_accumulation_steps=2", "strategy.type=multi_worker",
        f"training.model_dir={tmp_path}/run"])
    with pytest.raises(config.ConfigError, match=r"^training.gradient_accumulation_steps: Keras's SGD cannot "
                                                 r"accumulate gradients over 2 MirroredStrategy replicas"):
        config.check_environment(configs)
