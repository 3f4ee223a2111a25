"""The ``tf-largebatch`` command's skeleton: fast ``--help``/``--version``, quiet TensorFlow.

Each check runs in a fresh interpreter the way the console script does: it
imports the launcher module named in ``pyproject.toml`` and calls its ``main``.
No wall-clock threshold: "fast" is checked as "TensorFlow and Keras are never
imported".
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text(encoding="utf-8")   # (tomllib is Python 3.11+; we support 3.10)
ENTRY_POINT = re.search(r'^tf-largebatch = "([^"]+)"$', PYPROJECT, re.M).group(1)
TENSORFLOW_LOG_LINE = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|oneDNN|cuInit|cpu_feature_guard", re.M)


def console_script(argv, tmp_path, extra_code="", **env):
    """Runs the console entry point with ``argv`` in a fresh process.

    Returns ``(exit code, stdout, stderr, modules)``, ``modules`` telling whether
    TensorFlow / Keras were imported by the end.
    """
    module, function = ENTRY_POINT.split(":")
    code = textwrap.dedent(f"""
        import json, sys
        from {module} import {function} as main
        try:
            code = main({argv!r})
        except SystemExit as exit:
            code = exit.code
        {extra_code}
        print("MODULES " + json.dumps({{"tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules}}))
        sys.exit(code)
    """)
    environment = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    environment.update(PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", **env)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment, capture_output=True,
                            text=True, timeout=600)
    stdout, _, modules = result.stdout.rpartition("MODULES ")
    return result.returncode, stdout, result.stderr, json.loads(modules)


def test_entry_point_is_the_launcher_beside_the_package():
    assert ENTRY_POINT == "tf_largebatch_cli:main"
    assert re.search(r'^py-modules = \["tf_largebatch_cli"\]$', PYPROJECT, re.M)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["demo", "--help"]])
def test_help_answers_without_tensorflow(argv, tmp_path):
    code, stdout, stderr, modules = console_script(argv, tmp_path)
    assert code == 0, stderr
    assert stdout.startswith("usage: tf-largebatch")
    assert modules == {"tensorflow": False, "keras": False}
    assert stderr == ""


def test_help_lists_the_subcommands_and_flags(tmp_path):
    _, stdout, _, _ = console_script(["--help"], tmp_path)
    for word in ("train", "demo", "--version", "--verbose"):
        assert word in stdout


def test_version_prints_the_package_version_without_tensorflow(tmp_path):
    code, stdout, stderr, modules = console_script(["--version"], tmp_path)
    version = re.search(r'__version__ = "([^"]+)"', (ROOT / "tf_largebatch" / "_version.py").read_text()).group(1)
    assert code == 0, stderr
    assert stdout.strip() == f"tf-largebatch {version}"
    assert modules == {"tensorflow": False, "keras": False}
    assert re.search(r'^version = \{ attr = "tf_largebatch._version.__version__" \}$', PYPROJECT, re.M)


def test_usage_errors_exit_2_naming_the_problem_without_tensorflow(tmp_path):
    for argv, expected in [([], "COMMAND"), (["fly"], "fly"), (["train", "--config", "x.yaml", "--bogus"], "--bogus")]:
        code, _, stderr, modules = console_script(argv, tmp_path)
        assert code == 2 and expected in stderr, (argv, stderr)
        assert modules == {"tensorflow": False, "keras": False}


def test_train_reports_a_config_error_with_exit_2_and_no_tensorflow_lines(tmp_path):
    (tmp_path / "bad.yaml").write_text("- not a mapping\n")
    code, _, stderr, _ = console_script(["train", "--config", "bad.yaml"], tmp_path)
    assert code == 2 and "config error" in stderr, stderr
    assert TENSORFLOW_LOG_LINE.findall(stderr) == [], stderr


def test_train_without_the_pipelines_extra_says_which_extra_to_install(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["yaml"] = None                 # as if PyYAML were not installed
        from {ENTRY_POINT.split(":")[0]} import main
        sys.exit(main(["train", "--experiment", "resnet20_sngm_128_v3-8", "--dry-run"]))
    """)
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    assert 'pip install "tf_largebatch[pipelines]"' in result.stderr and "yaml" in result.stderr


def test_train_dry_run_of_a_shipped_config_prints_no_tensorflow_lines(tmp_path):
    config = ROOT / "tf_largebatch" / "tpu_configs" / "resnet20_sngm_128_v3-8.yaml"
    code, stdout, stderr, _ = console_script(["train", "--config", str(config), "--dry-run"], tmp_path)
    assert code == 0, stderr
    assert "optimizer:" in stdout
    assert TENSORFLOW_LOG_LINE.findall(stderr) == [], stderr


START_AND_RUN_AN_OP = """
from tf_largebatch import cli
cli.start_tensorflow(verbose={verbose})
import keras, tensorflow as tf
strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
with strategy.scope():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
model.fit(tf.ones((4, 2)), tf.ones((4, 1)), verbose=0)
print("registered", keras.saving.get_registered_object("tf_largebatch>VRLAMB").__name__)
"""


def test_starting_tensorflow_for_a_subcommand_is_quiet_and_registers_every_class(tmp_path):
    code, stdout, stderr, modules = console_script(
        ["--version"], tmp_path, extra_code=START_AND_RUN_AN_OP.format(verbose=False).replace("\n", "\n        "))
    assert code == 0, stderr
    assert "registered VRLAMB" in stdout
    assert modules == {"tensorflow": True, "keras": True}
    assert TENSORFLOW_LOG_LINE.findall(stderr) == [], stderr


def test_verbose_leaves_tensorflow_logging_alone(tmp_path):
    code, stdout, stderr, _ = console_script(
        ["--version"], tmp_path,
        extra_code=("import os\nprint('level', os.environ.get('TF_CPP_MIN_LOG_LEVEL'))\n"
                    + START_AND_RUN_AN_OP.format(verbose=True)).replace("\n", "\n        "))
    assert code == 0, stderr
    assert "level None" in stdout and "registered VRLAMB" in stdout
    # Whatever TensorFlow logs on this machine reaches stderr unfiltered (here: at least its start-up lines).
    assert TENSORFLOW_LOG_LINE.search(stderr), stderr


class _Started(Exception):
    pass


@pytest.mark.parametrize("argv, verbose", [
    (["train", "--config", "c.yaml"], False), (["--verbose", "train", "--config", "c.yaml"], True),
    (["train", "--config", "c.yaml", "--verbose"], True), (["-v", "demo", "--seeds", "1"], True),
    (["demo", "--seeds", "1", "-v"], True), (["demo", "--seeds", "1"], False),
])
def test_verbose_is_accepted_before_or_after_the_subcommand(argv, verbose, monkeypatch):
    from tf_largebatch import cli, startup

    def start_tensorflow(verbose=False):
        raise _Started(verbose)

    # Both subcommands start TensorFlow through tf_largebatch.startup.
    monkeypatch.setattr(startup, "start_tensorflow", start_tensorflow)
    with pytest.raises(_Started) as started:
        cli.main(argv)
    assert started.value.args == (verbose,)


def test_package_messages_are_logged_once_with_the_command_prefix(tmp_path):
    extra = "import logging\nlogging.getLogger('tf_largebatch.pipelines').info('hello')\n" \
            "from tf_largebatch import cli\ncli._configure_logging(False)\n" \
            "logging.getLogger('tf_largebatch.pipelines').info('again')"
    code, _, stderr, _ = console_script(["--version"], tmp_path, extra_code=extra.replace("\n", "\n        "))
    assert code == 0
    assert stderr.count("tf-largebatch: again") == 1 and "hello" not in stderr, stderr


def test_the_command_and_the_study_command_do_not_import_each_other_in_a_circle():
    """``tf_largebatch.cli`` hands ``demo`` to ``tf_largebatch.study.cli``; the study's
    command starts TensorFlow through ``tf_largebatch.startup``, not through ``cli``."""
    import ast
    import pathlib

    import tf_largebatch

    package = pathlib.Path(tf_largebatch.__file__).parent

    def imported(path):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        return names

    assert "tf_largebatch.study.cli" in imported(package / "cli.py")
    assert not {"tf_largebatch.cli", "tf_largebatch.cli.start_tensorflow"} & imported(package / "study" / "cli.py")
    from tf_largebatch import cli, startup

    assert cli.start_tensorflow is startup.start_tensorflow
