"""The optimizer section in Keras's own ``{class_name, config}`` form: what
``keras.optimizers.serialize`` / ``optimizer.get_config()`` write loads, builds
through ``keras.optimizers.get`` and gives the same ``get_config()`` back; bad
arguments get the same key-path errors as the package's ``{name, args}`` form."""

import json

import keras
import pytest
import tensorflow_datasets as tfds
import yaml

import tf_largebatch as tlb
from tf_largebatch import cli, config


def raw_with(optimizer, learning_rate=0.1, accumulation=1):
    return {
        "name": "t", "task": "cifar10", "data": {"name": "cifar10"},
        "model": {"name": "resnet20", "args": {"depth": 8}},
        "optimizer": optimizer,
        "schedule": {"learning_rate": learning_rate},
        "training": {"global_batch_size": 8, "steps": 2, "gradient_accumulation_steps": accumulation},
    }


def load(tmp_path, raw, overrides=()):
    """Through a YAML file, as a user would paste it."""
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    (cfg,) = config.load_config(str(path), overrides=overrides)
    return cfg


def error_of(tmp_path, raw, overrides=()):
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, raw, overrides)
    return str(info.value)


ORIGINALS = {
    "LAMB": lambda: tlb.LAMB(0.1, beta_1=0.85, weight_decay=0.01, exclude_from_weight_decay=["bias"]),
    "VRAdam": lambda: tlb.VRAdam(0.1, beta_2=0.99, gamma=0.2),
    "SNGM": lambda: tlb.SNGM(0.1, momentum=0.95, weight_decay=1e-4),
    "LARS": lambda: tlb.LARS(0.1, momentum=0.9, nesterov=True),
    "VRLARS": lambda: tlb.VRLARS(0.1, gamma=0.3),
    "SGD": lambda: keras.optimizers.SGD(0.1, momentum=0.8, clipnorm=1.0),
    "AdamW": lambda: keras.optimizers.AdamW(0.1, weight_decay=0.02, beta_1=0.8),
}


@pytest.mark.parametrize("name", sorted(ORIGINALS))
def test_serialized_optimizer_round_trips(tmp_path, name):
    original = ORIGINALS[name]()
    cfg = load(tmp_path, raw_with(keras.optimizers.serialize(original)))
    assert cfg.optimizer.keras_form and cfg.optimizer.name == cfg.optimizer.class_name == name  # name always names the class
    built = config.build_optimizer(cfg.optimizer, learning_rate=0.1)
    assert type(built) is type(original)
    assert built.get_config() == original.get_config()


@pytest.mark.parametrize("name", ["LAMB", "SGD", "VRAdam"])
def test_bare_get_config_round_trips(tmp_path, name):
    original = ORIGINALS[name]()
    cfg = load(tmp_path, raw_with({"class_name": name, "config": original.get_config()}))
    assert config.build_optimizer(cfg.optimizer, learning_rate=0.1).get_config() == original.get_config()


def test_runner_values_replace_the_configs_learning_rate_and_accumulation(tmp_path):
    original = tlb.LAMB(0.25)
    cfg = load(tmp_path, raw_with({"class_name": "LAMB", "config": original.get_config()}, learning_rate=0.25,
                                  accumulation=2))
    schedule = keras.optimizers.schedules.ExponentialDecay(0.25, 10, 0.5)
    built = config.build_optimizer(cfg.optimizer, learning_rate=schedule, gradient_accumulation_steps=2)
    assert built.gradient_accumulation_steps == 2
    assert built.get_config()["learning_rate"]["class_name"] == "ExponentialDecay"


def test_keras_form_errors_name_the_key(tmp_path):
    lamb = {"class_name": "LAMB", "config": {"beta_1": 0.9}}
    assert error_of(tmp_path, raw_with(lamb), ["optimizer.config.beta_11=0.9"]).startswith(
        "optimizer.config.beta_11: unknown argument of LAMB; expected one of:")
    assert error_of(tmp_path, raw_with(lamb), ["optimizer.config.beta_1=abc"]) == (
        "optimizer.config.beta_1: expected a number, got 'abc'")
    assert error_of(tmp_path, raw_with(lamb), ["optimizer.config.beta_1=1.5"]).startswith(
        "optimizer.config: rejected by LAMB:")
    assert error_of(tmp_path, raw_with(lamb), ["optimizer.class_name=LAMMB"]).startswith(
        "optimizer.class_name: unknown optimizer 'LAMMB'")
    assert error_of(tmp_path, raw_with(lamb), ["optimizer.name=SGD"]).startswith(
        "optimizer: expected either this package's form (name, args) or Keras's (class_name, config)")
    assert error_of(tmp_path, raw_with({"config": {"beta_1": 0.9}})) == (
        "optimizer.class_name: required with optimizer.config")
    assert error_of(tmp_path, raw_with({})) == (
        "optimizer.name: required (or Keras's form: optimizer.class_name and optimizer.config)")


def test_learning_rate_and_accumulation_must_agree_with_the_runners(tmp_path):
    message = error_of(tmp_path, raw_with({"class_name": "SGD", "config": {"learning_rate": 0.5}}))
    assert message.startswith("optimizer.config.learning_rate: 0.5 differs from schedule.learning_rate (0.1)")
    message = error_of(tmp_path, raw_with({"class_name": "SGD", "config": {"gradient_accumulation_steps": 4}}))
    assert message.startswith("optimizer.config.gradient_accumulation_steps: 4 differs from "
                              "training.gradient_accumulation_steps (1)")
    serialized_schedule = keras.optimizers.schedules.serialize(keras.optimizers.schedules.ExponentialDecay(0.1, 1, 1))
    message = error_of(tmp_path, raw_with({"class_name": "SGD", "config": {"learning_rate": serialized_schedule}}))
    assert message.startswith("optimizer.config.learning_rate: the runner builds the learning rate from 'schedule'")


@pytest.mark.slow
def test_keras_form_trains_through_the_cli(tmp_path, capsys):
    """A real ``fit`` of two steps from a config whose optimizer is a pasted ``get_config()``."""
    # get_config() holds learning_rate 0.1; --smoke sets the rate, so it is dropped there.
    raw = raw_with({"class_name": "VRLAMB", "config": tlb.VRLAMB(0.1, gamma=0.2).get_config()})
    raw["schedule"]["warmup_steps"] = 1
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        code = cli.main(["train", "--config", str(path), "--smoke", "--set", f"training.model_dir={run}",
                         "--set", "callbacks.tensorboard=false"])
    assert code == 0, capsys.readouterr().err
    with open(run / "summary.json") as f:
        summary = json.load(f)
    assert summary["optimizer"] == "VRLAMB" and summary["optimizer_steps"] == 2
