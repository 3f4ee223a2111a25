"""Bad input fails early with a message naming what is wrong and how to fix it,
and leaves no partial output behind.

``test_validation.py`` checks out-of-range values of every argument of every
optimizer; ``test_config.py`` the config loader's messages. This file adds wrong
*types*, what VR cannot work with (one gradient sample, a wrapped
LossScaleOptimizer), and the ``tf-largebatch train`` command end to end:
unreadable or malformed config files, unknown optimizer names, corrupt TFRecord
input, each leaving the run directory absent (or empty).
"""

import contextlib
import io
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_largebatch as tlb
from optimizer_zoo import ZOO
from tf_largebatch import cli, schedules, validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR = os.path.join(ROOT, "tpu_configs", "resnet20_sngm_1024_v3-8.yaml")


# ------------------------------------------------------------- wrong types
WRONG_TYPES = [
    ("SNGM", lambda: tlb.SNGM(learning_rate="0.1"), "learning_rate", "'0.1'"),
    ("LARS", lambda: tlb.LARS(learning_rate=[0.1]), "learning_rate", "[0.1]"),
    ("SNGM", lambda: tlb.SNGM(learning_rate=None), "learning_rate", "None"),
    ("LAMB", lambda: tlb.LAMB(0.01, beta_1="0.9"), "beta_1", "'0.9'"),
    ("LARS", lambda: tlb.LARS(0.1, trust_ratio_bounds=("a", 1.0)), "trust_ratio_bounds[0]", "'a'"),
    ("LARS", lambda: tlb.LARS(0.1, momentum="0.9"), "momentum", "'0.9'"),
    ("VRSGD", lambda: tlb.VRSGD(0.1, gamma="0.1"), "gamma", "'0.1'"),
    ("VR", lambda: tlb.optimizers.VR(keras.optimizers.SGD(0.1), gsnr_momentum=None), "gsnr_momentum", "None"),
    ("VR", lambda: tlb.optimizers.VR("sgd"), "inner_optimizer", "'sgd'"),
    ("WarmupCosineDecay", lambda: schedules.WarmupCosineDecay("0.1", 5, 100), "peak_learning_rate", "'0.1'"),
    ("WarmupCosineDecay", lambda: schedules.WarmupCosineDecay(0.1, "5", 100), "warmup_steps", "'5'"),
    ("WarmupStepDecay", lambda: schedules.WarmupStepDecay(0.1, 5, boundaries="10,20"), "boundaries", "'10,20'"),
]


@pytest.mark.parametrize("what,make,argument,received", WRONG_TYPES,
                         ids=[f"{w}-{a}-{r}" for w, _, a, r in WRONG_TYPES])
def test_wrong_types_name_the_argument_and_the_value(what, make, argument, received):
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert argument in message and received in message, message
    assert "must be" in message, message  # says what is expected, not only what is wrong


@pytest.mark.parametrize("make,argument", [
    (lambda: tlb.LARS(0.1, nesterov="no"), "nesterov"),
    (lambda: tlb.SNGM(0.1, layerwise="yes"), "layerwise"),
])
def test_boolean_switches_reject_strings(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


# ------------------------------------------------------- Keras base keywords
# Keras accepts each of these and then does something else than what was written
# (ascent for a negative loss_scale_factor, clipping silently off, EMA on for
# "yes", a raw TensorFlow error at the first step for strings). One shared check
# (validation.check_base_keywords) refuses them at construction, for every class.
BASE_KEYWORD_ROWS = [
    ("loss_scale_factor", -2.0), ("loss_scale_factor", 0.0), ("loss_scale_factor", "2"),
    ("loss_scale_factor", float("nan")), ("loss_scale_factor", float("inf")),
    ("clipnorm", -1.0), ("clipnorm", float("nan")), ("clipnorm", "1"), ("clipnorm", 0.0),
    ("global_clipnorm", -1.0), ("global_clipnorm", float("nan")), ("global_clipnorm", [1.0]),
    ("clipvalue", -1.0), ("clipvalue", float("nan")), ("clipvalue", "0.5"),
    ("use_ema", "yes"), ("use_ema", 1),
    ("ema_momentum", 1.0), ("ema_momentum", -0.1), ("ema_momentum", "0.99"),
    ("ema_overwrite_frequency", 0), ("ema_overwrite_frequency", 2.5),
    ("gradient_accumulation_steps", 1), ("gradient_accumulation_steps", 2.5), ("gradient_accumulation_steps", 0),
    ("weight_decay", -1e-4), ("weight_decay", "0.01"), ("weight_decay", float("nan")),
]
def _base_keyword_cases():
    # The VR classes hand clipnorm, global_clipnorm, clipvalue and weight_decay to
    # their inner optimizer; the same check covers them there.
    for param in ZOO:
        entry = param.values[0]
        for argument, value in BASE_KEYWORD_ROWS:
            if argument == "weight_decay" and not entry.accepts("weight_decay"):
                continue
            yield pytest.param(entry, argument, value, id=f"{entry.id}-{argument}={value!r}")


@pytest.mark.parametrize("entry,argument,value", list(_base_keyword_cases()))
def test_bad_base_keywords_are_refused_at_construction(entry, argument, value):
    overrides = {argument: value}
    if entry.min_samples > 1 and argument != "gradient_accumulation_steps":
        overrides["gradient_accumulation_steps"] = 2
    with pytest.raises(ValueError) as info:
        entry.make(**overrides)
    message = str(info.value)
    assert f"`{argument}`" in message and f"{argument}={value!r}" in message, message


@pytest.mark.parametrize("entry", [p for p in ZOO if p.values[0].accepts("exclude_from_weight_decay")])
@pytest.mark.parametrize("value", [5, 1.5, True])
def test_exclusion_list_of_the_wrong_type_names_the_argument(entry, value):
    with pytest.raises(ValueError) as info:
        entry.make(exclude_from_weight_decay=value)
    message = str(info.value)
    assert "`exclude_from_weight_decay`" in message and f"exclude_from_weight_decay={value!r}" in message


def test_check_base_keywords_accepts_good_values_and_ignores_other_keys():
    good = dict(loss_scale_factor=128.0, clipnorm=1.0, clipvalue=0.5, use_ema=True, ema_momentum=0.0,
                ema_overwrite_frequency=3, gradient_accumulation_steps=4, weight_decay=0.0, momentum="anything")
    assert validation.check_base_keywords(good) is good
    assert validation.check_base_keywords({"global_clipnorm": None, "loss_scale_factor": None}) is not None


# --------------------------------------------------- apply() and variables
def _two_variables():
    return [keras.Variable(np.ones((2, 3), np.float32), name="kernel"),
            keras.Variable(np.ones(3, np.float32), name="bias")]


@pytest.mark.parametrize("grads,match", [
    (lambda: [tf.ones((2, 3))], r"1 gradient\(s\) for 2 variable\(s\) \(no gradient for \['bias'\]\)"),
    (lambda: [tf.ones((2, 3)), tf.ones(3), tf.ones(3)], r"3 gradient\(s\) for 2 .*beyond the last variable 'bias'"),
    (lambda: [tf.ones((2, 3)), tf.ones(4)], r"variable 'bias' has shape \[4\], but the variable has shape \[3\]"),
    (lambda: [tf.ones((3, 2)), tf.ones(3)], r"variable 'kernel' has shape \[3, 2\]"),
], ids=["fewer", "more", "bias-shape", "kernel-shape"])
@pytest.mark.parametrize("entry", ZOO)
def test_apply_with_mismatched_gradients_names_the_variable(entry, grads, match):
    optimizer = entry.single_device()
    variables = _two_variables()
    with pytest.raises(ValueError, match=match):
        optimizer.apply(grads(), variables)
    optimizer.build(variables)
    if len(grads()) != 2:  # also when the optimizer is already built and the variables are implied
        with pytest.raises(ValueError, match=match.split(" \\(")[0]):
            optimizer.apply(grads())
    assert np.array_equal(variables[0].numpy(), np.ones((2, 3)))


@pytest.mark.parametrize("entry", ZOO)
def test_integer_variables_are_refused_at_build_by_path(entry):
    variables = [keras.Variable(np.ones(3, np.float32), name="weights"),
                 keras.Variable(np.ones(3, np.int32), name="counts")]
    with pytest.raises(ValueError, match=r"variable 'counts' has dtype int32"):
        entry.single_device().build(variables)


@pytest.mark.parametrize("entry", ZOO)
def test_empty_variables_are_left_alone(entry):
    """A 0-size variable takes no step and breaks nothing (MCLR's median is the curvature module's)."""
    variables = [keras.Variable(np.ones((2, 3), np.float32), name="kernel"),
                 keras.Variable(np.ones((0, 3), np.float32), name="empty")]
    optimizer = entry.single_device()
    rng = np.random.default_rng(0)
    for _ in range(entry.accumulation_for(1) or 1):
        optimizer.apply([tf.constant(rng.normal(size=(2, 3)), tf.float32), tf.zeros((0, 3))], variables)
    assert optimizer.skipped_updates == 0
    assert np.all(np.isfinite(variables[0].numpy()))
    assert not np.array_equal(variables[0].numpy(), np.ones((2, 3)))
    assert variables[1].shape == (0, 3)


# ------------------------------------------------------- what VR cannot do
@pytest.mark.parametrize("inner", [
    lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)),
    lambda: tlb.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.1)),
], ids=["keras", "tf_largebatch"])
def test_vr_wrapping_a_loss_scale_optimizer_says_to_wrap_the_other_way(inner):
    with pytest.raises(ValueError, match=r"inner_optimizer.*LossScaleOptimizer.*wrap the VR optimizer"):
        tlb.optimizers.VR(inner())
    # ... and the suggested order works.
    tlb.optimizers.LossScaleOptimizer(tlb.optimizers.VR(keras.optimizers.SGD(0.1), gradient_accumulation_steps=2))


def test_vr_wrapping_a_vr_optimizer_says_they_do_not_nest():
    with pytest.raises(ValueError) as info:
        tlb.optimizers.VR(tlb.VRSGD(0.1))
    assert "LossScaleOptimizer" not in str(info.value), str(info.value)


def test_vr_with_one_replica_and_no_accumulation_says_how_to_get_two_samples(mirrored):
    """k = 1 replica x 1 micro-batch under a strategy: a clear error at build time,
    naming both ways out (test_vr.py checks the no-strategy case)."""
    strategy = mirrored(1)
    with strategy.scope():
        variable = keras.Variable(np.zeros(3, np.float32))
        optimizer = tlb.VRLAMB(0.01)
        with pytest.raises(ValueError) as info:
            optimizer.build([variable])
    message = str(info.value)
    assert "VRLAMB" in message and "k = 1 replica(s) x 1 accumulation step(s) = 1" in message
    assert ">= 2 replicas" in message and "gradient_accumulation_steps >= 2" in message


# -------------------------------------------------------- tf-largebatch train
def _run_cli(argv):
    """``cli.main(argv)`` in this process: (exit code or exception, stderr)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            outcome = cli.main(argv)
        except Exception as error:  # noqa: BLE001 - the test inspects it
            outcome = error
    return outcome, stderr.getvalue()


def _leftovers(directory):
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


CONFIG_FILES = {
    "missing": (None, "config error: --config: no such file: {path}"),
    "bad_yaml": ("name: t\ntraining: {steps: [1, 2\n", "config error: --config: {path} is not valid YAML"),
    "not_a_mapping": ("- name: t\n- task: cifar10\n", "config error: <top level>: expected a mapping in {path}"),
    "unknown_optimizer": (open(CIFAR).read().replace("name: SNGM", "name: SGNM", 1),
                          "config error: optimizer.name: unknown optimizer 'SGNM'"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_FILES))
def test_config_file_errors_exit_2_and_write_nothing(case, tmp_path):
    text, expected = CONFIG_FILES[case]
    path = tmp_path / "config.yaml"
    if text is not None:
        path.write_text(text)
    run_dir = tmp_path / "run"
    code, stderr = _run_cli(["train", "--config", str(path), "--set", f"training.model_dir={run_dir}"])
    assert code == 2, (code, stderr)
    assert expected.format(path=path) in stderr, stderr
    assert not run_dir.exists()


def test_unknown_optimizer_from_the_command_line_lists_the_known_ones(tmp_path):
    """The real console entry point in a fresh process (exit status, stderr)."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "tf_largebatch.cli", "train", "--config", CIFAR,
         "--set", "optimizer.name=LARSS", "--set", f"training.model_dir={run_dir}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "tf-largebatch: config error: optimizer.name: unknown optimizer 'LARSS'" in result.stderr
    assert "LARS" in result.stderr.split("unknown optimizer 'LARSS'")[1]
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()


def test_missing_tfrecord_files_exit_2_and_write_nothing(tmp_path):
    run_dir = tmp_path / "run"
    code, stderr = _run_cli(["train", "--config", CIFAR, "--smoke", "--set", f"training.model_dir={run_dir}",
                             "--set", f"data.train_files={tmp_path}/shards/train-*"])
    assert code == 2, (code, stderr)
    assert f"config error: data.train_files: no files match '{tmp_path}/shards/train-*'" in stderr
    assert not run_dir.exists()


@pytest.fixture(scope="module")
def corrupt_tfrecord_run(tmp_path_factory):
    """``tf-largebatch train`` on a TFRecord "file" of random bytes (eval off, so
    nothing else is read), run once for the tests below."""
    tmp_path = tmp_path_factory.mktemp("corrupt")
    shard = tmp_path / "train-00000-of-00001.tfrecord"
    shard.write_bytes(np.random.default_rng(0).bytes(512))
    run_dir = tmp_path / "run"
    outcome, stderr = _run_cli([
        "train", "--config", CIFAR, "--smoke", "--set", f"data.train_files={shard}", "--set", "data.name=null",
        "--set", "training.eval_steps=0", "--set", "training.steps=2", "--set", "callbacks.tensorboard=false",
        "--set", f"training.model_dir={run_dir}",
    ])
    return outcome, stderr, shard, run_dir


def test_corrupt_tfrecord_fails_without_partial_output(corrupt_tfrecord_run):
    outcome, stderr, shard, run_dir = corrupt_tfrecord_run
    assert outcome != 0, stderr
    # Nothing that could pass for a result or a resumable state: no weights,
    # checkpoint, backup or summary (an empty directory at most).
    assert _leftovers(run_dir) == []


def test_corrupt_tfrecord_is_a_config_error_naming_the_file(corrupt_tfrecord_run):
    outcome, stderr, shard, run_dir = corrupt_tfrecord_run
    assert outcome == 2 and "data.train_files" in stderr and str(shard) in stderr, (outcome, stderr)


def test_smoke_run_in_a_fresh_process_reports_missing_files(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "tf_largebatch.cli", "train", "--config", CIFAR, "--smoke",
         "--set", f"data.train_files={tmp_path}/none-*", "--set", f"training.model_dir={run_dir}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"config error: data.train_files: no files match '{tmp_path}/none-*'" in result.stderr
    assert not run_dir.exists()


def test_unprepared_tfds_dataset_is_a_config_error_without_downloading(tmp_path):
    """With data.download false (the default), a dataset missing from data_dir names the fix."""
    from tf_largebatch.config import ConfigError, DataConfig
    from tf_largebatch.pipelines.datasets import load_tfds

    data = DataConfig(name="cifar10", data_dir=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"data.name.*'cifar10' is not prepared in .*empty.*tfds build cifar10"):
        load_tfds(data, "train", shuffle_files=False)
