"""``tf-largebatch demo``: a tiny real run (MirroredStrategy, Keras fit) and its outputs.

The run trains SNGM and VRAdam at two batch sizes on 2 logical CPU replicas;
the tests check that the table, CSVs, JSON and PNG are written and hold the
numbers the run measured (consistent with each other and with the training
curves), that an interrupted demo keeps its finished runs, and that the
CIFAR-10 path runs on ``tfds.testing.mock_data`` and fails clearly when the data
is not there.
"""

import csv
import json
import math

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tf_largebatch import demo, demo_data

TINY = [
    "--optimizers", "SNGM,VRAdam",
    "--batch-sizes", "32,128",
    "--replicas", "2",
    "--epochs", "2",
    "--train-size", "512",
    "--test-size", "256",
    "--no-progress",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demo")
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = demo.main([*TINY, "--output-dir", str(output_dir)])
    return code, output_dir, printed.getvalue()


def read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.mark.slow  # shares one ~20-30 s demo run (module fixture)
def test_tiny_run_writes_every_output(tiny_run):
    code, output_dir, printed = tiny_run
    assert code == 0
    for name in ("results.csv", "curves.csv", "gsnr.csv", "results.json", "table.txt", "demo.png"):
        assert (output_dir / name).stat().st_size > 0, name
    assert (output_dir / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(output_dir.resolve()) in printed


@pytest.mark.slow  # shares one ~20-30 s demo run (module fixture)
def test_results_agree_across_csv_json_table_and_curves(tiny_run):
    _, output_dir, printed = tiny_run
    rows = read_csv(output_dir / "results.csv")
    runs = json.loads((output_dir / "results.json").read_text())["runs"]
    assert [(r["optimizer"], int(r["batch_size"])) for r in rows] == [
        ("SNGM", 32), ("VRAdam", 32), ("SNGM", 128), ("VRAdam", 128)
    ]
    table = (output_dir / "table.txt").read_text()
    assert table in printed
    for row, run in zip(rows, runs):
        batch_size = run["batch_size"]
        # Same epochs for both batch sizes: the large batch takes fewer steps.
        assert run["steps"] == int(row["steps"]) == 2 * (512 // batch_size)
        for key in ("test_accuracy", "train_loss", "generalization_gap", "peak_learning_rate"):
            assert float(row[key]) == pytest.approx(run[key], rel=1e-12)
        assert 0.0 <= run["test_accuracy"] <= 1.0 and math.isfinite(run["train_loss"])
        assert run["generalization_gap"] == pytest.approx(run["train_accuracy"] - run["test_accuracy"])
        # The final evaluation on the test set repeats the last epoch's validation.
        assert run["history"]["test_accuracy"][-1] == pytest.approx(run["test_accuracy"], abs=1e-6)
        assert run["history"]["test_loss"][-1] == pytest.approx(run["test_loss"], rel=1e-5)
        # The schedule: peak lr scaled from batch 128 by the optimizer's rule (sqrt for both).
        assert run["peak_learning_rate"] == pytest.approx(
            demo.RECIPES[run["optimizer"]].base_learning_rate * math.sqrt(batch_size / 128)
        )
        assert f"{100 * run['test_accuracy']:.2f}" in table
        assert f"{run['train_loss']:.4f}" in table
    curves = read_csv(output_dir / "curves.csv")
    assert len(curves) == 4 * 2
    sngm_32 = [c for c in curves if c["optimizer"] == "SNGM" and c["batch_size"] == "32"]
    assert [float(c["train_loss"]) for c in sngm_32] == pytest.approx(runs[0]["history"]["train_loss"])
    assert [int(c["step"]) for c in sngm_32] == [16, 32]


@pytest.mark.slow  # shares one ~20-30 s demo run (module fixture)
def test_vr_runs_report_gsnr_statistics(tiny_run):
    _, output_dir, printed = tiny_run
    runs = json.loads((output_dir / "results.json").read_text())["runs"]
    gsnr_rows = read_csv(output_dir / "gsnr.csv")
    for run in runs:
        if run["optimizer"] == "SNGM":
            assert run["gsnr"] is None
            continue
        assert run["num_gradient_samples"] == 2  # 2 replicas, no accumulation
        assert {path.split("/", 1)[1] for path in run["gsnr"]} == {
            "dense_1/kernel", "dense_1/bias", "dense_2/kernel", "dense_2/bias", "logits/kernel", "logits/bias"
        }
        for path, stats in run["gsnr"].items():
            expected_size = {"dense_1/kernel": 32 * 128, "logits/bias": 10}.get(path.split("/", 1)[1])
            assert expected_size is None or stats["size"] == expected_size
            assert stats["variance"] >= 0.0 and stats["mean_square"] >= 0.0
            assert 0.0 <= stats["fraction_at_lower"] <= 1.0 and 0.0 <= stats["fraction_at_upper"] <= 1.0
        assert len([r for r in gsnr_rows if int(r["batch_size"]) == run["batch_size"]]) == 6
    assert "GSNR of the VR runs" in printed


def test_interrupted_demo_keeps_finished_runs(tmp_path, monkeypatch):
    """Ctrl-C during the third run: the first two are on disk, the exit code says interrupted."""
    real_train_one = demo.train_one
    calls = []

    def interrupt_third_run(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_train_one(*args, **kwargs)

    monkeypatch.setattr(demo, "train_one", interrupt_third_run)
    code = demo.main(
        ["--optimizers", "VRSGD,SNGM,MSGD", "--batch-sizes", "64", "--replicas", "1", "--epochs", "1",
         "--train-size", "256", "--test-size", "64", "--no-progress", "--output-dir", str(tmp_path)]
    )
    assert code == 130
    rows = read_csv(tmp_path / "results.csv")
    assert [r["optimizer"] for r in rows] == ["VRSGD", "SNGM"]
    # One replica: the VR optimizer gets its k = 2 samples from gradient accumulation;
    # SNGM needs no samples and gets none.
    assert rows[0]["gradient_accumulation_steps"] == "2" and rows[0]["num_gradient_samples"] == "2"
    assert rows[1]["gradient_accumulation_steps"] == "1" and rows[1]["num_gradient_samples"] == ""
    assert rows[0]["steps"] == rows[1]["steps"] == str(256 // 64)
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [run["optimizer"] for run in runs] == ["VRSGD", "SNGM"] and runs[1]["gsnr"] is None
    assert (tmp_path / "demo.png").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--optimizers", "SNGM,Nope"], "unknown optimizer 'Nope'"),
        (["--batch-sizes", "30"], "multiple of --replicas"),
        (["--batch-sizes", "a,b"], "--batch-sizes"),
        (["--epochs", "0"], "--epochs"),
        (["--lr-multiplier", "-1"], "--lr-multiplier"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(flags, message, tmp_path, capsys):
    assert demo.main([*flags, "--replicas", "4", "--output-dir", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_optimizer_class_is_a_clear_error():
    with pytest.raises(ValueError, match="has no 'NotAnOptimizer'"):
        demo.resolve_optimizer_class(demo.Recipe("tf_largebatch", "NotAnOptimizer", 0.1, "sqrt"))


def test_peak_learning_rate_scaling_rules():
    linear = demo.Recipe("keras", "SGD", 0.1, "linear")
    square_root = demo.Recipe("keras", "SGD", 0.1, "sqrt")
    assert linear.peak_learning_rate(128) == pytest.approx(0.1)
    assert linear.peak_learning_rate(4096) == pytest.approx(3.2)
    assert square_root.peak_learning_rate(4096) == pytest.approx(0.1 * math.sqrt(32))


def test_teacher_student_task_is_seeded_and_its_bayes_accuracy_is_the_teachers():
    a = demo_data.teacher_student_task(num_train=2000, num_test=1000, seed=3)
    b = demo_data.teacher_student_task(num_train=2000, num_test=1000, seed=3)
    c = demo_data.teacher_student_task(num_train=2000, num_test=1000, seed=4)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.test.y, b.test.y)
    assert not np.array_equal(a.train.y, c.train.y)
    assert a.train.x.shape == (2000, 32) and a.test.y.shape == (1000,)
    assert set(np.unique(a.train.y)) == set(range(10))
    # Lower temperature, less label noise: the teacher's own accuracy rises towards 1.
    sharp = demo_data.teacher_student_task(num_train=100, num_test=4000, temperature=0.01)
    noisy = demo_data.teacher_student_task(num_train=100, num_test=4000, temperature=1.0)
    assert sharp.bayes_test_accuracy > 0.97 > 0.5 > noisy.bayes_test_accuracy > 0.1
    with pytest.raises(ValueError, match="temperature"):
        demo_data.teacher_student_task(temperature=0)


def test_cifar10_task_reads_tfds_and_never_downloads(tmp_path):
    with pytest.raises(demo_data.DatasetNotAvailableError, match="never downloads"):
        demo_data.cifar10_task(data_dir=str(tmp_path), num_train=8)
    with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
        task = demo_data.cifar10_task(num_train=32, num_test=16)
    assert task.train.x.shape == (32, 32, 32, 3) and task.test.x.shape == (16, 32, 32, 3)
    assert task.train.x.dtype == np.float32 and 0.0 <= task.train.x.min() and task.train.x.max() <= 1.0
    assert task.train.y.dtype == np.int32 and set(np.unique(task.train.y)) <= set(range(10))


def test_cifar10_demo_runs_on_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
        code = demo.main(
            ["--dataset", "cifar10", "--optimizers", "SNGM", "--batch-sizes", "32", "--replicas", "2",
             "--epochs", "1", "--train-size", "64", "--test-size", "32", "--no-progress",
             "--output-dir", str(tmp_path)]
        )
    assert code == 0
    (run,) = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert run["steps"] == 2 and "CIFAR-10" in json.loads((tmp_path / "results.json").read_text())["task"]


def test_cifar10_demo_without_data_exits_2(tmp_path, capsys):
    code = demo.main(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--replicas", "2",
                      "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert "never downloads" in capsys.readouterr().err
