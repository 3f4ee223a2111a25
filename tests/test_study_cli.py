"""``tf-largebatch demo``: tiny real studies through the CLI entry point.

A two-optimizer, two-batch-size study writes every output, and the numbers in
them agree with the recorded curves (steps to target recomputed here by hand,
best learning rates re-selected here); an interrupted study resumes without
redoing finished runs; a grid where every run diverges still finishes and plots;
every bad flag exits 2 naming the flag before any directory exists.
"""

import csv
import json
import math

import pytest
import tensorflow_datasets as tfds

from tf_largebatch import cli
from tf_largebatch.study import grid

TINY = [
    "--optimizers", "SNGM,VRMomentum",
    "--batch-sizes", "16,64",
    "--train-size", "1024",
    "--test-size", "256",
    "--budget-examples", "1024",
    "--min-steps", "8",
    "--max-steps", "64",
    "--evaluations", "4",
    "--learning-rates", "3",
    "--target", "0.25",
    "--seeds", "2",
    "--no-progress",
]


def read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def number(text):
    return None if text in ("", "None") else float(text)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    import contextlib
    import io

    output_dir = tmp_path_factory.mktemp("study")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["demo", *TINY, "--output-dir", str(output_dir)])
    return code, output_dir, printed.getvalue()


def hand_steps_to_target(points, target):
    """First crossing of ``target``, linear between evaluations (written out again here)."""
    if points[0][1] >= target:
        return points[0][0]
    for (s0, a0), (s1, a1) in zip(points, points[1:]):
        if a1 >= target:
            return s0 + (s1 - s0) * (target - a0) / (a1 - a0)
    return None


def test_tiny_study_writes_every_output(tiny_study):
    code, output_dir, printed = tiny_study
    assert code == 0
    for name in ("results.csv", "summary.csv", "curves.csv", "results.json", "table.txt", "steps_to_target.png",
                 "accuracy.png", "lr_sensitivity.png"):
        assert (output_dir / name).stat().st_size > 0, name
    for name in ("steps_to_target.png", "accuracy.png", "lr_sensitivity.png"):
        assert (output_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (output_dir / "table.txt").read_text().strip() in printed
    assert "B_noise" in printed and str(output_dir.resolve()) in printed


def test_results_agree_with_the_curves_and_the_summary(tiny_study):
    _, output_dir, _ = tiny_study
    rows = read_csv(output_dir / "results.csv")
    for column in ("optimizer", "batch_size", "learning_rate", "steps", "steps_to_target", "final_test_accuracy",
                   "best_test_accuracy", "diverged"):
        assert column in rows[0]
    document = json.loads((output_dir / "results.json").read_text())
    assert document["target_test_accuracy"] == 0.25
    noise_keys = [key for key in document if "noise" in key]
    assert noise_keys and document[noise_keys[0]]["b_noise"] > 0
    assert document[noise_keys[0]]["gradient_samples"] == 4
    curves = read_csv(output_dir / "curves.csv")
    # Budgets: clip(1024 / B, 8, 64) steps, each run evaluated at 0 and 4 more points.
    budget = {16: 64, 64: 16}
    main_rows = [r for r in rows if r["seed"] == "0"]
    assert {(r["optimizer"], int(r["batch_size"])) for r in main_rows} == {
        (o, b) for o in ("SNGM", "VRMomentum") for b in (16, 64)}
    for row in rows:
        batch_size = int(row["batch_size"])
        assert int(row["steps"]) == budget[batch_size]
        assert int(row["gradient_samples"]) == (4 if row["optimizer"] == "VRMomentum" else 1)
        points = [(int(c["step"]), number(c["test_accuracy"])) for c in curves
                  if (c["optimizer"], c["batch_size"], c["learning_rate"], c["seed"])
                  == (row["optimizer"], row["batch_size"], row["learning_rate"], row["seed"])]
        checkpoints = sorted({round(i * budget[batch_size] / 4) for i in range(5)})
        if row["diverged"] == "True":  # stopped at its first bad evaluation
            assert [s for s, _ in points] == checkpoints[:len(points)]
            assert points[-1][0] == int(row["diverged_at_step"]) == int(row["steps_run"]) < budget[batch_size]
        else:
            assert [s for s, _ in points] == checkpoints
        assert number(row["best_test_accuracy"]) == pytest.approx(max(a for s, a in points[1:] if a is not None))
        expected = None if row["diverged"] == "True" else hand_steps_to_target(points, 0.25)
        if expected is None:
            assert row["steps_to_target"] == ""
        else:
            assert number(row["steps_to_target"]) == pytest.approx(expected)
    summary = read_csv(output_dir / "summary.csv")
    for cell in summary:
        group = [r for r in main_rows if (r["optimizer"], r["batch_size"]) == (cell["optimizer"], cell["batch_size"])
                 and r["diverged"] == "False"]
        reached = [r for r in group if r["steps_to_target"] != ""]
        if reached:
            best = min(reached, key=lambda r: float(r["steps_to_target"]))
        else:
            best = max(group, key=lambda r: float(r["best_test_accuracy"]))
        assert float(cell["best_learning_rate"]) == pytest.approx(float(best["learning_rate"]))
        assert len(group) == int(cell["runs"]) - int(cell["diverged_runs"]) >= 3 - int(cell["diverged_runs"])
    # Sensitivity: at the largest batch the grid grows upwards until a run diverges (at most 3 more).
    for optimizer in ("SNGM", "VRMomentum"):
        largest = sorted((r for r in main_rows if r["optimizer"] == optimizer and r["batch_size"] == "64"),
                         key=lambda r: float(r["learning_rate"]))
        smallest_batch = [r for r in main_rows if r["optimizer"] == optimizer and r["batch_size"] == "16"]
        assert largest[-1]["diverged"] == "True" or len(largest) >= 3 + 3
        assert len(largest) > len(smallest_batch) - 2 * 2  # more than the small batch's grid minus its widening
    # Seed spread: the best learning rate at the largest batch, run again with seed 1.
    for optimizer in ("SNGM", "VRMomentum"):
        cell = next(c for c in summary if c["optimizer"] == optimizer and c["batch_size"] == "64")
        again = [r for r in rows if r["optimizer"] == optimizer and r["seed"] == "1"]
        assert [float(r["learning_rate"]) for r in again] == pytest.approx([float(cell["best_learning_rate"])])
        assert int(again[0]["batch_size"]) == 64


def test_interrupted_study_resumes_without_redoing_finished_runs(tmp_path, monkeypatch, capsys):
    real_train_run = grid.train_run
    calls = []

    def interrupt_third(*args, **kwargs):
        calls.append((args[0].batch_size, args[2]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_train_run(*args, **kwargs)

    flags = ["demo", *TINY, "--optimizers", "SNGM", "--seeds", "1", "--output-dir", str(tmp_path)]
    monkeypatch.setattr(grid, "train_run", interrupt_third)
    assert cli.main(flags) == 130
    stored = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(stored) == 2
    assert len(read_csv(tmp_path / "results.csv")) == 2
    assert "Interrupted" in capsys.readouterr().err
    # A kill in the middle of writing leaves half a line: ignored, never fatal.
    with open(tmp_path / "runs.jsonl", "a") as stream:
        stream.write('{"optimizer": "SNGM", "batch_si')
    calls.clear()
    monkeypatch.setattr(grid, "train_run",
                        lambda *a, **k: calls.append((a[0].batch_size, a[2])) or real_train_run(*a, **k))
    assert cli.main(flags) == 0
    rows = read_csv(tmp_path / "results.csv")
    assert len(rows) == len(calls) + 2
    first_two = {(json.loads(line)["batch_size"], json.loads(line)["learning_rate"]) for line in stored}
    assert not first_two & {(b, float(f"{lr:.10g}")) for b, lr in calls}  # stored runs not trained again
    assert "already done" in capsys.readouterr().out
    # The same command once more trains nothing.
    calls.clear()
    assert cli.main(flags) == 0 and calls == []
    # Other settings in the same directory: a clear error, nothing mixed.
    assert cli.main([*flags, "--evaluations", "3"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_a_grid_where_every_run_diverges_finishes_and_plots(tmp_path, capsys):
    code = cli.main(["demo", *TINY, "--optimizers", "MSGD,SNGM", "--lr-multiplier", "1e9", "--seeds", "1",
                     "--output-dir", str(tmp_path)])
    assert code == 0
    rows = read_csv(tmp_path / "results.csv")
    assert rows and all(r["diverged"] == "True" and r["steps_to_target"] == "" for r in rows)
    assert all(int(r["steps_run"]) < int(r["steps"]) for r in rows)  # stopped early
    summary = read_csv(tmp_path / "summary.csv")
    assert all(c["best_learning_rate"] == "" and c["runs"] == c["diverged_runs"] for c in summary)
    # Every run diverged, so the grid widened downwards (twice) at every cell.
    assert all(int(c["runs"]) == 3 + 2 for c in summary)
    for name in ("steps_to_target.png", "accuracy.png", "lr_sensitivity.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "not reached" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch-sizes", "64,4096", "--train-size", "1024"], "--train-size"),
        (["--batch-sizes", "262144"], "--batch-sizes"),
        (["--train-size", "1"], "--train-size"),
        (["--lr-multiplier", "inf"], "--lr-multiplier"),
        (["--lr-multiplier", "nan"], "--lr-multiplier"),
        (["--lr-multiplier", "-1"], "--lr-multiplier"),
        (["--seed", "-1"], "--seed"),
        (["--optimizers", "SNGM,Nope"], "unknown optimizer 'Nope'"),
        (["--optimizers", "SNGM,SNGM"], "--optimizers"),
        (["--batch-sizes", "30"], "--gradient-samples"),
        (["--batch-sizes", "a,b"], "--batch-sizes"),
        (["--target", "1.5"], "--target"),
        (["--learning-rates", "1"], "--learning-rates"),
        (["--lr-factor", "1"], "--lr-factor"),
        (["--seeds", "0"], "--seeds"),
        (["--max-steps", "4", "--min-steps", "8"], "--max-steps"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag_and_create_nothing(flags, message, tmp_path, capsys):
    assert cli.main(["demo", *flags, "--output-dir", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_output_dirs_exit_2_naming_the_flag(tmp_path, capsys):
    existing_file = tmp_path / "file"
    existing_file.write_text("x")
    for output_dir in (existing_file, existing_file / "below"):
        assert cli.main(["demo", *TINY, "--output-dir", str(output_dir)]) == 2
        assert "--output-dir" in capsys.readouterr().err
        assert existing_file.read_text() == "x"
    # Not creatable (a pseudo file system): found when creating it, still exit 2.
    assert cli.main(["demo", *TINY, "--output-dir", "/proc/tf-largebatch-study-test"]) == 2
    assert "--output-dir" in capsys.readouterr().err


def test_cifar10_study_runs_on_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
        code = cli.main(["demo", "--dataset", "cifar10", "--optimizers", "SNGM", "--batch-sizes", "16,32",
                         "--train-size", "64", "--test-size", "32", "--budget-examples", "64", "--min-steps", "2",
                         "--max-steps", "4",
                         "--evaluations", "2", "--learning-rates", "2", "--seeds", "1", "--target", "0.1",
                         "--no-progress", "--output-dir", str(tmp_path)])
    assert code == 0
    document = json.loads((tmp_path / "results.json").read_text())
    assert "CIFAR-10" in document["task"]
    assert {run["steps"] for run in document["runs"]} == {4, 2}
    assert all(math.isfinite(run["best_test_accuracy"]) for run in document["runs"])


def test_cifar10_without_data_exits_2_and_creates_nothing(tmp_path, capsys):
    code = cli.main(["demo", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--output-dir",
                     str(tmp_path / "out")])
    assert code == 2
    assert "never downloads" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
