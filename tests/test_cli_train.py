"""The ``tf-largebatch`` command: help, config errors before training, the
manual-download message, and resuming an interrupted run from its backup."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from tf_largebatch import cli, config
from tf_largebatch.pipelines import train
from tf_largebatch.pipelines.callbacks import restore_loop_checkpoint
from distribute_utils import free_ports, release_interrupted_fit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR = os.path.join(ROOT, "tpu_configs", "resnet20_sngm_1024_v3-8.yaml")
RESNET50 = os.path.join(ROOT, "tpu_configs", "resnet50_sngm_32k_v3-512.yaml")


def test_help_lists_the_subcommands():
    result = subprocess.run([sys.executable, "-m", "tf_largebatch.cli", "--help"], capture_output=True,
                            text=True, check=True)
    assert "train" in result.stdout and "demo" in result.stdout
    train_help = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for flag in ("--config", "--set", "--smoke", "--dry-run"):
        assert flag in train_help


def test_demo_subcommand_hands_over_to_the_study_module():
    from tf_largebatch.study import cli as study_cli

    assert callable(study_cli.add_arguments) and callable(study_cli.run)
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--help"])
    assert info.value.code == 0


def test_config_errors_exit_2_before_anything_is_built(tmp_path, capsys):
    model_dir = tmp_path / "run"
    code = cli.main(["train", "--config", CIFAR, "--set", "optimizer.args.momentum=abc",
                     "--set", f"training.model_dir={model_dir}"])
    assert code == 2
    assert "config error: optimizer.args.momentum: expected a number, got 'abc'" in capsys.readouterr().err
    # A missing input is found before training: no run directory is written.
    code = cli.main(["train", "--config", CIFAR, "--smoke", "--set", f"data.train_files={tmp_path}/none-*.tfrecord",
                     "--set", f"training.model_dir={model_dir}"])
    assert code == 2
    assert f"config error: data.train_files: no files match '{tmp_path}/none-*.tfrecord'" in capsys.readouterr().err
    assert not model_dir.exists()


def test_dry_run_prints_the_resolved_config(capsys):
    assert cli.main(["train", "--config", CIFAR, "--smoke", "--dry-run", "--set", "training.steps=3"]) == 0
    out = capsys.readouterr().out
    assert "steps: 3" in out and "name: resnet20_sngm_1024_v3-8" in out


def test_imagenet_without_the_manual_download_says_where_the_tars_go(tmp_path, capsys):
    code = cli.main(["train", "--config", RESNET50, "--smoke", "--set", f"data.data_dir={tmp_path}/tfds",
                     "--set", f"training.model_dir={tmp_path}/run"])
    assert code == 2
    err = capsys.readouterr().err
    assert "data.name: 'imagenet2012' needs a manual download" in err
    assert f"ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in {tmp_path}/tfds/downloads/manual/" in err


class Preempt(keras.callbacks.Callback):
    """Raises (like a preemption) at the first batch of loop ``at_loop``."""

    def __init__(self, at_loop):
        super().__init__()
        self.at_loop = at_loop
        self.weights_before = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch == self.at_loop:
            self.weights_before = [w.copy() for w in self.model.get_weights()]
            raise RuntimeError("preempted")


def test_an_interrupted_run_resumes_from_its_backup_with_the_same_command(tmp_path, capsys):
    model_dir = tmp_path / "run"
    argv = ["train", "--config", CIFAR, "--smoke", "--set", "data.synthetic=false", "--set", "training.steps=4",
            "--set", f"training.model_dir={model_dir}", "--set", "callbacks.tensorboard=false"]
    args = cli.build_parser().parse_args(argv)
    configs = config.load_config(args.config, overrides=args.overrides, smoke=args.smoke)
    preempt = Preempt(at_loop=2)
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(RuntimeError, match="preempted"):
            train.run(configs, callbacks=[preempt])
        release_interrupted_fit()
        assert not (model_dir / "summary.json").exists()
        assert (model_dir / "backup").exists()
        # The same command again: it restores loop 2's state and runs loops 3 and 4 only.
        assert cli.main(argv) == 0
    capsys.readouterr()
    with open(model_dir / "summary.json") as f:
        summary = json.load(f)
    assert summary["started_at_loop"] == 2
    assert summary["optimizer_steps"] == 4  # 2 restored + 2 new, not 2 (fresh) or 6 (replayed)
    # The backup was the state at the interruption: loop 2's checkpoint equals the
    # weights the interrupted run was about to train on.
    model = train.build_model(configs[0])
    assert restore_loop_checkpoint(model, str(model_dir / "checkpoints" / "ckpt-2")) == 2
    for saved, live in zip(model.get_weights(), preempt.weights_before):
        np.testing.assert_array_equal(saved, live)
    # The backup is removed once the phase's final files are written.
    assert not (model_dir / "backup").exists() or not os.listdir(model_dir / "backup")


WORKER = """
import sys
import tensorflow_datasets as tfds
from tf_largebatch import cli
with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_multi_worker_run_from_tf_config(tmp_path):
    # Two worker processes, one command, the cluster from TF_CONFIG: both train
    # the same steps in sync (same losses); the chief writes the summary and final
    # weights, the other worker its backups and checkpoints under workers/task-1.
    # Also covers the strategy's reduce() workaround for Keras 3.15's fit.
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workers = [f"localhost:{p}" for p in free_ports(2)]
    argv = ["train", "--config", CIFAR, "--smoke", "--set", "data.synthetic=false", "--set", "strategy.type=multi_worker",
            "--set", "strategy.num_cpu_replicas=null", "--set", f"training.model_dir={tmp_path}/run",
            "--set", "callbacks.tensorboard=false"]
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                                     "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen([sys.executable, str(script), *argv], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    with open(tmp_path / "run" / "summary.json") as f:
        summary = json.load(f)
    assert summary["replicas"] == 2 and summary["optimizer_steps"] == 2
    finals = [line for output in outputs for line in output.splitlines()
              if line.startswith("tf-largebatch: resnet20_sngm_1024_v3-8: final logs after 2 optimizer updates")]
    assert len(finals) == 2 and finals[0] == finals[1]
    assert (tmp_path / "run" / "final.weights.h5").exists()
    written = os.listdir(tmp_path / "run" / "workers" / "task-1" / "checkpoints")
    assert "best.weights.h5" in written and "checkpoint" in written  # the CheckpointManager's state file
    assert sorted({n.split(".")[0] for n in written if n.startswith("ckpt-")}) == ["ckpt-1", "ckpt-2"]


def test_the_synthetic_throughput_command_of_the_pipelines_page_validates_as_written(capsys):
    """docs/pipelines.md's input-free throughput command for a pod config (validated only)."""
    import re
    import shlex

    text = open(os.path.join(ROOT, "docs", "pipelines.md"), encoding="utf-8").read()
    (command,) = re.findall(r"`(tf-largebatch train --experiment resnet50_vrlars_32k_v3-512 [^`]*)`", text)
    argv = shlex.split(command)[1:]
    assert cli.main([*argv, "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "synthetic: true" in out and "steps_per_loop: 50" in out


def test_dry_run_of_a_two_phase_config_prints_one_yaml_document_per_phase(capsys):
    import yaml

    path = os.path.join(ROOT, "tpu_configs", "bert_large_vrlamb_32k_v3-512.yaml")
    assert cli.main(["train", "--config", path, "--smoke", "--dry-run"]) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["phase"] for d in documents] == [c.phase for c in config.load_config(path, smoke=True)]
    assert len(documents) == 2


def test_dry_run_reports_keras_accumulation_over_mirrored_replicas(capsys):
    msgd = os.path.join(ROOT, "tpu_configs", "resnet20_msgd_2048_v3-8.yaml")
    code = cli.main(["train", "--config", msgd, "--smoke", "--dry-run", "--set", "training.global_batch_size=8",
                     "--set", "training.gradient_accumulation_steps=2"])
    assert code == 2
    assert "config error: training.gradient_accumulation_steps: Keras's SGD cannot accumulate" in \
        capsys.readouterr().err
