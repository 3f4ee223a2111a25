"""The config layer's parts: the registry, the one signature checker, the
shipped experiments by name (package data), and the import structure."""

import ast
import fnmatch
import glob
import inspect
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

from tf_largebatch import cli, config
from tf_largebatch.config import arguments, registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_PACKAGE = os.path.join(ROOT, "tf_largebatch", "config")
SHIPPED = os.path.join(ROOT, "tf_largebatch", "tpu_configs")


# ----------------------------------------------------------------- registry


def test_every_task_names_an_input_module_and_registered_models():
    assert registry.TASKS.names() == ["bert_pretraining", "cifar10", "imagenet"]
    for name in registry.TASKS.names():
        task = registry.TASKS.get(name, "task")
        assert callable(task.load_inputs().make_datasets), name
        for model in task.models:
            builder = registry.MODELS.get(model, "model.name").load()
            # The data keys the runner hands over are real builder arguments.
            assert set(task.model_inputs) <= set(inspect.signature(builder).parameters), (name, model)


def test_unknown_names_list_the_registered_ones_with_a_close_match():
    with pytest.raises(config.ConfigError) as info:
        registry.TASKS.get("cifar100", "task")
    assert str(info.value) == ("task: unknown task 'cifar100' (did you mean 'cifar10'?); expected one of: "
                               "bert_pretraining, cifar10, imagenet")
    with pytest.raises(config.ConfigError, match=r"^model.name: unknown model 'resnet'"):
        registry.MODELS.get("resnet", "model.name")


def test_a_name_is_registered_once():
    models = registry.Registry("model")
    models.register(registry.ModelSpec("m", "tf_largebatch.pipelines.models:resnet20"))
    with pytest.raises(ValueError, match="model 'm' is already registered"):
        models.register(registry.ModelSpec("m", "tf_largebatch.pipelines.models:resnet50"))


def test_an_unknown_task_in_a_config_is_a_key_path_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: t\ntask: cifar100\ndata: {name: cifar10}\nmodel: {name: resnet20}\n"
                    "optimizer: {name: SGD}\nschedule: {learning_rate: 0.1}\ntraining: {global_batch_size: 8, steps: 2}\n")
    with pytest.raises(config.ConfigError, match=r"^task: unknown task 'cifar100' \(did you mean 'cifar10'\?\)"):
        config.load_config(str(path))
    # --smoke of an unknown task reports the same error, not a missing override.
    with pytest.raises(config.ConfigError, match=r"^task: unknown task 'cifar100'"):
        config.load_config(str(path), smoke=True)


def test_model_arguments_add_the_tasks_data_keys(tmp_path):
    (cfg,) = config.load_config(os.path.join(SHIPPED, "bert_large_vrlamb_16k_v3-256.yaml"))[:1]
    args = config.model_arguments(cfg)
    assert args["seq_length"] == cfg.data.seq_length == 128
    assert args["max_predictions_per_seq"] == cfg.data.max_predictions_per_seq
    assert args["num_layers"] == cfg.model.args["num_layers"]


def test_build_model_hands_the_data_keys_to_the_registered_builder(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: t\ntask: cifar10\ndata: {name: cifar10, image_size: 16}\n"
                    "model: {name: resnet20, args: {depth: 8, width: 4, num_classes: 7}}\n"
                    "optimizer: {name: SGD}\nschedule: {learning_rate: 0.1}\ntraining: {global_batch_size: 8, steps: 2}\n")
    (cfg,) = config.load_config(str(path))
    model = config.build_model(cfg)
    assert model.name == "resnet8"
    assert tuple(model.input_shape) == (None, 16, 16, 3) and tuple(model.output_shape) == (None, 7)


# ----------------------------------------------------- the signature checker


def builder(depth=20, width=16, bias=True, name="m", image_size=32):
    return depth, width, bias, name, image_size


def check(args, **kwargs):
    arguments.check_arguments(args, builder, "model.args", "model 'b'", **kwargs)


def test_signature_checker_accepts_what_the_signature_takes():
    check({"depth": 32, "width": 8.0, "bias": False, "name": "x"})


@pytest.mark.parametrize("args, message", [
    ({"dpth": 3}, "model.args.dpth: unknown argument of model 'b'; expected one of: bias, depth, width"),
    ({"depth": "deep"}, "model.args.depth: expected a number, got 'deep'"),
    ({"depth": True}, "model.args.depth: expected a number, got True (bool)"),
    ({"depth": None}, "model.args.depth: expected a number, got None (NoneType)"),
    ({"bias": 1}, "model.args.bias: expected true or false, got 1 (int)"),
    ({"image_size": 64}, "model.args.image_size: set by the runner; put it in data.image_size"),
])
def test_signature_checker_errors(args, message):
    with pytest.raises(config.ConfigError) as info:
        check(args, set_elsewhere={"image_size": "data.image_size"})
    assert str(info.value) == message


def test_signature_of_a_class_includes_its_bases_and_a_vr_optimizers_base_class():
    from tf_largebatch import optimizers

    vr_adam = arguments.parameters_of(optimizers.VRAdam)
    # Its own, Keras's base optimizer's, and Adam's (the inner class) arguments.
    assert {"gamma", "gsnr_momentum", "clipnorm", "use_ema", "beta_1", "amsgrad"} <= set(vr_adam)
    # Not a base class's required plumbing (VR's inner optimizer) nor **kwargs.
    assert not {"kwargs", "self", "inner_optimizer", "inner_arguments"} & set(vr_adam)
    assert set(arguments.parameters_of(builder)) == {"depth", "width", "bias", "name", "image_size"}


CIFAR_SGD = ("name: t\ntask: cifar10\ndata: {name: cifar10}\nmodel: {name: resnet20}\n"
             "optimizer: {name: VRSGD}\nschedule: {learning_rate: 0.1}\ntraining: {global_batch_size: 8, steps: 2}\n")


@pytest.mark.parametrize("override, message", [
    ("optimizer.args.depth=1", "optimizer.args.depth: unknown argument of VRSGD; expected one of: "),
    ("model.args.gamma=1", "model.args.gamma: unknown argument of model 'resnet20'; expected one of: "),
    ("callbacks.gsnr_monitor={depth: 1}", "callbacks.gsnr_monitor.depth: unknown argument of GSNRMonitor; "
                                          "expected one of: "),
    ("optimizer.args.nesterov=1", "optimizer.args.nesterov: expected true or false, got 1 (int)"),
    ("model.args.width=wide", "model.args.width: expected a number, got 'wide'"),
    ("callbacks.gsnr_monitor={update_freq: often}", "callbacks.gsnr_monitor.update_freq: expected a number"),
    ("optimizer.args.gradient_accumulation_steps=2",
     "optimizer.args.gradient_accumulation_steps: set by the runner; put it in training.gradient_accumulation_steps"),
    ("model.args.image_size=64", "model.args.image_size: set by the runner; put it in data.image_size"),
    ("callbacks.gsnr_monitor={global_batch_size: 8}",
     "callbacks.gsnr_monitor.global_batch_size: set by the runner; put it in training.global_batch_size"),
])
def test_optimizer_model_and_callback_arguments_get_the_same_errors(tmp_path, override, message):
    path = tmp_path / "c.yaml"
    path.write_text(CIFAR_SGD)
    with pytest.raises(config.ConfigError) as info:
        config.load_config(str(path), overrides=[override])
    assert str(info.value).startswith(message)


def test_keras_optimizers_accept_weight_decay_exclusions(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: t\ntask: cifar10\ndata: {name: cifar10}\nmodel: {name: resnet20}\n"
                    "optimizer: {name: SGD, args: {weight_decay: 1.0e-4, exclude_from_weight_decay: [gamma]}}\n"
                    "schedule: {learning_rate: 0.1}\ntraining: {global_batch_size: 8, steps: 2}\n")
    (cfg,) = config.load_config(str(path))
    assert cfg.optimizer.args["exclude_from_weight_decay"] == ["gamma"]
    with pytest.raises(config.ConfigError, match=r"^optimizer.args.exclude_from_weight_decay: expected a list "
                                                 r"of strings, got 5 \(int\)"):
        config.load_config(str(path), overrides=["optimizer.args.exclude_from_weight_decay=5"])


# --------------------------------------------------------- import structure


def _top_level_imports(path):
    tree = ast.parse(open(path).read())
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


def test_the_config_package_does_not_import_pipelines_or_tensorflow_at_import_time():
    for path in glob.glob(os.path.join(CONFIG_PACKAGE, "*.py")):
        for name in _top_level_imports(path):
            assert not name.startswith(("tf_largebatch.pipelines", "tensorflow", "keras", "yaml")), (path, name)
    for name in _top_level_imports(os.path.join(ROOT, "tf_largebatch", "pipelines", "__init__.py")):
        assert not name.startswith("tf_largebatch.config"), name


def test_importing_config_loads_no_pipeline_module():
    code = ("import sys, tf_largebatch.config; "
            "print(sorted(m for m in sys.modules if m.startswith('tf_largebatch.pipelines') or m == 'yaml'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.stdout.strip() == "[]"


# ------------------------------------------------------ shipped experiments


def test_experiment_names_are_the_shipped_files():
    files = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(SHIPPED, "*.yaml")))
    assert config.experiment_names() == files and len(files) >= 30
    assert os.path.realpath(config.experiment_path(files[0])) == os.path.join(SHIPPED, files[0] + ".yaml")
    assert config.experiment_path(files[0] + ".yaml") == config.experiment_path(files[0])


def test_unknown_experiment_lists_the_names(capsys):
    assert cli.main(["train", "--experiment", "resnet20_sngm_1024"]) == 2
    err = capsys.readouterr().err
    assert ("tf-largebatch: config error: --experiment: unknown experiment 'resnet20_sngm_1024' "
            "(did you mean 'resnet20_sngm_1024_v3-8'?); expected one of: bert_large_vrlamb_128k-64k_v3-1024") in err
    assert "resnet50_vrlars_32k_v3-512" in err


def test_help_lists_the_experiments_and_config_or_experiment_is_required(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0
    train_help = capsys.readouterr().out
    assert "--experiment NAME" in train_help and "resnet50_vrlars_32k_v3-512" in train_help
    for argv in (["train"], ["train", "--config", "x.yaml", "--experiment", "y"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    assert "one of the arguments --config --experiment is required" in capsys.readouterr().err


def test_experiment_by_name_from_another_directory(tmp_path):
    """The package's own copy is found, not ./tpu_configs of a clone."""
    result = subprocess.run(
        [sys.executable, "-m", "tf_largebatch.cli", "train", "--experiment", "resnet50_vrlars_32k_v3-512",
         "--dry-run", "--set", "training.epochs=80"],
        capture_output=True, text=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "name: resnet50_vrlars_32k_v3-512" in result.stdout and "epochs: 80" in result.stdout


def _package_data():
    """``[tool.setuptools.package-data] tf_largebatch`` of pyproject.toml
    (read without tomllib, which is Python 3.11+; the package supports 3.10)."""
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        section = f.read().split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    return ast.literal_eval(re.search(r"^tf_largebatch = (\[.*\])$", section, re.M).group(1))


def test_configs_are_package_data_and_the_clone_keeps_its_path():
    package_data = _package_data()
    for path in glob.glob(os.path.join(SHIPPED, "*")):
        relative = os.path.relpath(path, os.path.join(ROOT, "tf_largebatch"))
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in package_data), relative
    assert os.path.islink(os.path.join(ROOT, "tpu_configs"))
    assert os.path.realpath(os.path.join(ROOT, "tpu_configs")) == SHIPPED


def test_setuptools_build_copies_every_shipped_config(tmp_path, monkeypatch):
    """setuptools' own ``build_py`` (what a wheel build runs) with the pyproject's
    package list and package data, offline."""
    import setuptools

    monkeypatch.chdir(ROOT)
    distribution = setuptools.Distribution({
        "name": "tf_largebatch", "script_name": "setup.py", "package_data": {"tf_largebatch": _package_data()},
        "packages": setuptools.find_packages(include=["tf_largebatch", "tf_largebatch.*"]),
    })
    build_py = distribution.get_command_obj("build_py")
    build_py.build_lib = str(tmp_path)
    build_py.ensure_finalized()
    build_py.run()
    built = sorted(os.path.basename(p)[:-5] for p in glob.glob(str(tmp_path / "tf_largebatch" / "tpu_configs" / "*")))
    assert built == config.experiment_names()
    assert os.path.exists(tmp_path / "tf_largebatch" / "config" / "experiments.py")


def _offline_build_backend():
    """setuptools recent enough for this pyproject (PEP 639 license), so the
    wheel builds without fetching a build backend."""
    try:
        import setuptools
    except ImportError:
        return False
    return tuple(int(p) for p in setuptools.__version__.split(".")[:2]) >= (77, 0)


@pytest.mark.slow
@pytest.mark.skipif(not _offline_build_backend(), reason="building the wheel offline needs setuptools>=77 in "
                    "this environment (the test never downloads a build backend)")
def test_a_built_wheel_carries_the_shipped_configs(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    str(source), "-w", str(tmp_path / "wheel")], check=True, capture_output=True, timeout=600)
    (wheel,) = glob.glob(str(tmp_path / "wheel" / "*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(f"tf_largebatch/tpu_configs/{n}.yaml" for n in config.experiment_names())
    assert sorted(n for n in names if n.startswith("tf_largebatch/tpu_configs/")) == shipped
