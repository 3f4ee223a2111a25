"""``tf-largebatch train`` input errors (issue #11): each is exit 2 with the key
path or flag, raised before any strategy, dataset or directory is created.

Every case runs the real ``cli.main``; the runner is replaced by a function
that fails the test if it is reached, so "before anything is built" is checked
directly, and the run directory is checked to be absent afterwards.
"""

import os

import pytest
import yaml

from tf_largebatch import cli, config
from tf_largebatch.pipelines import train

import test_config


def base_raw(model_dir):
    raw = test_config.base_raw()
    raw["training"]["model_dir"] = str(model_dir)
    return raw


@pytest.fixture
def run_cli(tmp_path, monkeypatch, capsys):
    """``run_cli(argv) -> (exit code, stderr)``; fails if the runner is reached."""

    def runner_reached(*args, **kwargs):
        raise AssertionError("train.run was reached: the error came after the strategy/data were built")

    monkeypatch.setattr(train, "run", runner_reached)
    for name in ("TF_CONFIG", "TPU_NAME", "TPU_ACCELERATOR_TYPE"):
        monkeypatch.delenv(name, raising=False)

    def run(argv):
        code = cli.main(["train", *argv])
        return code, capsys.readouterr().err

    return run


@pytest.fixture
def run_dir(tmp_path):
    return tmp_path / "run"


@pytest.fixture
def write_config(tmp_path, run_dir):
    def write(raw=None, text=None, name="cfg.yaml"):
        path = tmp_path / name
        if text is None:
            text = yaml.safe_dump(raw or base_raw(run_dir))
        path.write_text(text)
        return str(path)

    return write


def assert_config_error(outcome, expected, run_dir):
    code, stderr = outcome
    assert code == 2, stderr
    assert f"tf-largebatch: config error: {expected}" in stderr, stderr
    assert not run_dir.exists()


def test_config_pointing_at_a_directory(run_cli, tmp_path, run_dir):
    assert_config_error(run_cli(["--config", str(tmp_path)]), f"--config: {tmp_path} is a directory", run_dir)


def test_config_that_is_not_utf8(run_cli, tmp_path, run_dir):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    assert_config_error(run_cli(["--config", str(path)]), f"--config: {path} is not UTF-8 text (byte 0xe9",
                        run_dir)


@pytest.mark.parametrize("batch, replicas, accumulation", [(5, 2, 1), (1, 2, 1), (6, 2, 2), (12, 4, 2)])
def test_global_batch_not_divisible_by_the_replicas(run_cli, write_config, run_dir, batch, replicas, accumulation):
    outcome = run_cli(["--config", write_config(), "--set", "strategy.type=mirrored",
                       "--set", f"strategy.num_cpu_replicas={replicas}",
                       "--set", f"training.global_batch_size={batch}",
                       "--set", f"training.gradient_accumulation_steps={accumulation}"])
    assert_config_error(outcome, f"training.global_batch_size: {batch} examples in {accumulation} micro-step(s)",
                        run_dir)
    assert f"expected a multiple of {replicas * accumulation}" in outcome[1]


def test_global_batch_divisible_over_listed_devices_is_checked_too(run_cli, write_config, run_dir):
    outcome = run_cli(["--config", write_config(), "--set", "strategy.type=mirrored",
                       "--set", "strategy.devices=[/cpu:0, /cpu:1, /cpu:2]"])
    assert_config_error(outcome, "training.global_batch_size: 8 examples", run_dir)
    assert "over the 3 replicas" in outcome[1]


@pytest.mark.parametrize("value, expected", [
    ("100000000000000000000", "training.global_batch_size: expected at most 2**31 - 1"),
    ("1e20", "training.global_batch_size: expected an integer, got 1e+20"),
])
def test_absurd_global_batch_size(run_cli, write_config, run_dir, value, expected):
    outcome = run_cli(["--config", write_config(), "--set", f"training.global_batch_size={value}"])
    assert_config_error(outcome, expected, run_dir)


def test_model_dir_that_cannot_be_created(run_cli, write_config, run_dir):
    outcome = run_cli(["--config", write_config(), "--set", "training.model_dir=/proc/tf_largebatch_x"])
    assert_config_error(outcome, "training.model_dir: '/proc/tf_largebatch_x' cannot be created", run_dir)
    assert not os.path.exists("/proc/tf_largebatch_x")


def test_model_dir_under_a_file(run_cli, write_config, tmp_path, run_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    outcome = run_cli(["--config", write_config(), "--set", f"training.model_dir={blocker}/run"])
    assert_config_error(outcome, f"training.model_dir: '{blocker}/run' cannot be a directory: {blocker} is a file",
                        run_dir)
    # The check leaves nothing behind in the nearest existing directory either.
    assert sorted(os.listdir(tmp_path)) == ["a_file", "cfg.yaml"]


def test_multi_worker_without_tf_config(run_cli, write_config, run_dir):
    outcome = run_cli(["--config", write_config(), "--set", "strategy.type=multi_worker"])
    assert_config_error(outcome, "strategy.type: 'multi_worker' reads the cluster from the TF_CONFIG", run_dir)


def test_multi_worker_with_a_broken_tf_config(run_cli, write_config, run_dir, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{cluster: ")
    outcome = run_cli(["--config", write_config(), "--set", "strategy.type=multi_worker"])
    assert_config_error(outcome, "strategy.type: 'multi_worker': TF_CONFIG is not valid JSON", run_dir)


@pytest.mark.skipif(config.environment.tpu_visible(), reason="this machine has a TPU")
def test_shipped_tpu_config_without_a_tpu_and_without_smoke(run_cli, run_dir):
    outcome = run_cli(["--experiment", "resnet20_sngm_1024_v3-8", "--set", f"training.model_dir={run_dir}"])
    assert_config_error(outcome, "strategy.type: 'tpu' with an empty strategy.tpu means a TPU VM, and this "
                        "machine shows no TPU", run_dir)
    assert "--smoke" in outcome[1]


def test_tpu_detection_reads_the_cloud_tpu_variable(monkeypatch):
    monkeypatch.setenv("TPU_NAME", "my-pod")
    assert config.environment.tpu_visible()


def test_missing_initial_weights(run_cli, write_config, tmp_path, run_dir):
    outcome = run_cli(["--config", write_config(), "--set", f"training.initial_weights={tmp_path}/none.weights.h5"])
    assert_config_error(outcome, f"training.initial_weights: no such file: {tmp_path}/none.weights.h5", run_dir)


@pytest.mark.parametrize("depth", [10, 4, 21])
def test_cifar_resnet_depth_not_6n_plus_2(run_cli, write_config, run_dir, depth):
    outcome = run_cli(["--config", write_config(), "--set", f"model.args.depth={depth}", "--dry-run"])
    assert_config_error(outcome, f"model.args.depth: expected 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110), "
                        f"got {depth}", run_dir)


@pytest.mark.parametrize("key", ["image_size", "seq_length", "max_predictions_per_seq", "num_train_examples"])
def test_negative_data_sizes(run_cli, write_config, run_dir, key):
    outcome = run_cli(["--config", write_config(), "--set", f"data.{key}=-32", "--dry-run"])
    assert_config_error(outcome, f"data.{key}: expected an integer >= 1, got -32", run_dir)


@pytest.mark.parametrize("key, value", [
    ("training.model_dir", "gs://YOUR_BUCKET/runs/t"),
    ("data.data_dir", "gs://YOUR_BUCKET/tensorflow_datasets"),
])
def test_placeholder_bucket_in_a_real_run_says_to_set_it(run_cli, write_config, run_dir, key, value):
    outcome = run_cli(["--config", write_config(), "--set", f"{key}={value}"])
    assert_config_error(outcome, f"{key}: '{value}' is a placeholder: set it to your own location", run_dir)


def test_shipped_placeholder_data_dir_is_named(run_cli, run_dir):
    outcome = run_cli(["--experiment", "resnet50_vrlars_32k_v3-512", "--set", "strategy.type=one_device",
                       "--set", f"training.model_dir={run_dir}"])
    assert_config_error(outcome, "data.data_dir: 'gs://YOUR_BUCKET/tensorflow_datasets' is a placeholder", run_dir)


def test_placeholder_data_paths_are_left_to_smoke_and_synthetic_runs(write_config, run_dir):
    for flags in ({"smoke": True}, {"smoke": False, "synthetic": True}):
        overrides = ["data.data_dir=gs://YOUR_BUCKET/tensorflow_datasets"]
        if flags.get("synthetic"):
            overrides.append("data.synthetic=true")
        configs = config.load_config(write_config(), overrides=overrides, smoke=flags["smoke"])
        config.check_environment(configs, smoke=flags["smoke"])  # no error
    assert not run_dir.exists()


DUPLICATE_SECTION = """\
name: t
task: cifar10
data: {name: cifar10}
model: {name: resnet20}
optimizer: {name: SNGM, args: {momentum: 0.9}}
schedule: {learning_rate: 0.1}
training: {global_batch_size: 8, steps: 4}
optimizer: {name: LARS}
"""


def test_duplicate_yaml_keys_are_rejected(run_cli, write_config, run_dir):
    outcome = run_cli(["--config", write_config(text=DUPLICATE_SECTION)])
    assert_config_error(outcome, "optimizer: given twice (lines 5 and 8)", run_dir)
    nested = DUPLICATE_SECTION.replace("{momentum: 0.9}", "{momentum: 0.9, momentum: 0.5}").replace(
        "optimizer: {name: LARS}\n", "")
    outcome = run_cli(["--config", write_config(text=nested)])
    assert_config_error(outcome, "optimizer.args.momentum: given twice", run_dir)


def test_duplicate_keys_in_a_set_value_are_rejected(run_cli, write_config, run_dir):
    outcome = run_cli(["--config", write_config(), "--set", "optimizer.args={momentum: 0.9, momentum: 0.5}"])
    assert_config_error(outcome, "optimizer.args.momentum: given twice", run_dir)


def test_home_and_environment_variables_are_expanded_in_paths(write_config, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNS", str(tmp_path / "runs"))
    (cfg,) = config.load_config(write_config(), overrides=[
        "training.model_dir=~/x", "data.data_dir=$RUNS/tfds", "training.initial_weights=${RUNS}/w.weights.h5"])
    assert cfg.training.model_dir == str(tmp_path / "home" / "x")
    assert cfg.data.data_dir == str(tmp_path / "runs" / "tfds")
    assert cfg.training.initial_weights == str(tmp_path / "runs" / "w.weights.h5")


def test_an_unset_variable_in_a_path_is_an_error(run_cli, write_config, run_dir, monkeypatch):
    monkeypatch.delenv("TF_LARGEBATCH_NO_SUCH_VARIABLE", raising=False)
    outcome = run_cli(["--config", write_config(), "--set", "training.model_dir=$TF_LARGEBATCH_NO_SUCH_VARIABLE/x"])
    assert_config_error(outcome, "training.model_dir: environment variable TF_LARGEBATCH_NO_SUCH_VARIABLE", run_dir)
    assert not os.path.exists("$TF_LARGEBATCH_NO_SUCH_VARIABLE")


@pytest.mark.parametrize("names, expected", [
    (["a", "../x"], "phases[1].name: expected a plain name"),
    (["/tmp/abs", "b"], "phases[0].name: expected a plain name"),
    (["p", "./p"], "phases[1].name: expected a plain name"),
    (["p", "sub/p"], "phases[1].name: expected a plain name"),
    ([".", "b"], "phases[0].name: expected a plain name"),
    (["p", "p"], "phases: phase names must be unique"),
])
def test_phase_names_must_be_plain_unique_names(run_cli, write_config, run_dir, names, expected):
    raw = base_raw(run_dir)
    raw["phases"] = [{"name": name} for name in names]
    outcome = run_cli(["--config", write_config(raw)])
    assert_config_error(outcome, expected, run_dir)


def test_dry_run_does_not_check_the_machine(run_cli):
    # A shipped TPU config can be inspected anywhere.
    code, stderr = run_cli(["--experiment", "resnet20_sngm_1024_v3-8", "--dry-run"])
    assert code == 0, stderr


def test_an_error_of_one_phase_names_the_phase(run_cli, run_dir):
    outcome = run_cli(["--experiment", "bert_large_vrlamb_16k_v3-256", "--set", "strategy.type=one_device",
                       "--set", f"training.model_dir={run_dir}"])
    assert_config_error(outcome, "data.train_files: 'gs://YOUR_BUCKET/bert_pretraining/seq128/*.tfrecord' is a "
                        "placeholder: set it to your own location", run_dir)
    assert "(phase 'phase1_seq128')" in outcome[1]


@pytest.mark.parametrize("value, expected", [
    ("-1", "callbacks.profile_batch: expected an integer >= 0, got -1"),
    ("5,2", "callbacks.profile_batch: expected a batch number or 'start,stop' with start <= stop, got '5,2'"),
    ("'a,b'", "callbacks.profile_batch: expected a batch number or 'start,stop'"),
])
def test_profile_batch_is_checked_when_the_config_loads(run_cli, write_config, run_dir, value, expected):
    assert_config_error(run_cli(["--config", write_config(), "--set", f"callbacks.profile_batch={value}", "--dry-run"]),
                        expected, run_dir)


def test_profiling_needs_tensorboard(write_config):
    (cfg,) = config.load_config(write_config(), overrides=["callbacks.profile_batch='2,3'"])
    assert cfg.callbacks.profile_batch == "2,3"
    with pytest.raises(config.ConfigError, match=r"^callbacks.profile_batch: needs callbacks.tensorboard: true"):
        config.load_config(write_config(), overrides=["callbacks.profile_batch=2", "callbacks.tensorboard=false"])
