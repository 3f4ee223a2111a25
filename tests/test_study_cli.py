"""``tf-largebatch demo``: tiny real studies through the CLI entry point.

A two-optimizer, two-batch-size study on the digits writes every output, and the
numbers in them agree with the recorded curves: steps to each target on each
split recomputed here by hand, the selection re-made here from the validation
steps of the tuning runs (the same number for every optimizer), the reporting
seeds the same for every optimizer, each cell's mean and t interval recomputed
from them. An interrupted study resumes without redoing finished runs; a grid
where every run diverges still finishes and plots; every bad flag exits 2
naming the flag before any directory exists, and before TensorFlow starts.
"""

import csv
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tf_largebatch import cli
from tf_largebatch.study import grid

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGETS = (0.3, 0.5)
TINY = [
    "--optimizers", "SNGM,VRMomentum",
    "--batch-sizes", "16,64",
    "--budget-examples", "512",
    "--min-steps", "8",
    "--max-steps", "64",
    "--eval-spacing", "0.25",
    "--learning-rates", "2",
    "--schedule-lengths", "2",
    "--target", "0.3,0.5",
    "--seeds", "2",
    "--no-progress",
]
T_975_DF1 = 12.706204736174707  # Student t, 97.5 % quantile, 1 degree of freedom (tables)


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
    points = [(s, a) for s, a in points if a is not None]
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
    assert "Headline" in printed and "B_simple" in printed and str(output_dir.resolve()) in printed
    assert "UCI digits" in printed


def test_results_agree_with_the_curves_and_the_summary(tiny_study):
    _, output_dir, _ = tiny_study
    rows = read_csv(output_dir / "results.csv")
    curves = read_csv(output_dir / "curves.csv")
    for column in ("optimizer", "batch_size", "learning_rate", "length", "seed", "role", "diverged",
                   "validation_steps_to_0.5", "test_steps_to_0.3"):
        assert column in rows[0]
    run_id = ("optimizer", "batch_size", "learning_rate", "length", "seed")
    by_run = {}
    for c in curves:
        by_run.setdefault(tuple(c[k] for k in run_id), []).append(c)
    for row in rows:
        points = by_run[tuple(row[k] for k in run_id)]
        steps = [int(c["step"]) for c in points]
        assert steps[0] == 0 and steps == sorted(steps)
        assert all(b - a <= max(1, 0.25 * a) for a, b in zip(steps, steps[1:]))  # --eval-spacing 0.25
        assert int(row["gradient_samples"]) == (4 if row["optimizer"] == "VRMomentum" else 1)
        for split in ("validation", "test"):
            for target in TARGETS:
                expected = hand_steps_to_target([(int(c["step"]), number(c[f"{split}_accuracy"])) for c in points],
                                                target)
                got = number(row[f"{split}_steps_to_{target:g}"])
                assert (got is None and expected is None) or got == pytest.approx(expected)
        if row["diverged"] == "False" and steps[-1] < int(row["length"]):  # stopped early: every target reached
            assert all(number(row[f"{s}_steps_to_0.5"]) is not None for s in ("validation", "test"))
    summary = read_csv(output_dir / "summary.csv")
    tuning = [r for r in rows if "tuning" in r["role"]]
    for batch_size in ("16", "64"):
        trials = {o: len([r for r in tuning if (r["optimizer"], r["batch_size"]) == (o, batch_size)])
                  for o in ("SNGM", "VRMomentum")}
        assert trials["SNGM"] == trials["VRMomentum"] >= 8  # equal tuning for everyone
        assert {r["seed"] for r in tuning} == {"0", "1000"}  # two tuning seeds, apart from the reporting ones
    for cell in summary:
        target = float(cell["target"])
        group = [r for r in tuning if (r["optimizer"], r["batch_size"]) == (cell["optimizer"], cell["batch_size"])]
        settings = {}
        for r in group:
            settings.setdefault((float(r["learning_rate"]), int(r["length"])), []).append(
                number(r[f"validation_steps_to_{target:g}"]))
        assert all(len(v) == 2 for v in settings.values())
        reached = {k: np.mean(v) for k, v in settings.items() if None not in v}  # both tuning seeds reach it
        if not reached:
            assert cell["learning_rate"] == "" and cell["n"] == "0"
            continue
        best = min(reached, key=reached.get)  # selection on the mean validation steps
        assert float(cell["learning_rate"]) == pytest.approx(best[0])
        assert int(cell["length"]) == best[1] and int(cell["trials"]) == len(group)
        reporting = [r for r in rows if "reporting" in r["role"] and (r["optimizer"], r["batch_size"]) == (
            cell["optimizer"], cell["batch_size"]) and float(r["learning_rate"]) == float(cell["learning_rate"])
            and r["length"] == cell["length"]]
        assert sorted(r["seed"] for r in reporting) == ["1", "2"]  # the same seeds for every optimizer
        steps = [number(r[f"test_steps_to_{target:g}"]) for r in reporting]
        steps = [s for s in steps if s is not None]
        assert int(cell["n"]) == 2 and int(cell["reached"]) == len(steps)
        if len(steps) == 2:
            mean, half = np.mean(steps), T_975_DF1 * np.std(steps, ddof=1) / math.sqrt(2)
            assert float(cell["mean_steps"]) == pytest.approx(mean)
            assert (float(cell["low_steps"]), float(cell["high_steps"])) == pytest.approx((mean - half, mean + half))
    document = json.loads((output_dir / "results.json").read_text())
    assert document["targets"] == list(TARGETS)
    for key in ("fits", "paired_comparisons", "noise_scale", "sensitivity", "interval", "evaluation_bound"):
        assert key in document
    fit = document["fits"]["SNGM@0.5"]
    for key in ("residuals", "does_not_fit", "b_crit_low", "b_crit_high", "threshold"):
        assert key in fit
    # Noise probes ran along the smallest batch's reporting runs only.
    noisy = [r for r in document["runs"] if r["noise"]]
    assert noisy and all(r["batch_size"] == 16 and r["seed"] in (1, 2) for r in noisy)
    # Sensitivity at the largest batch: the selected rate times 2^-2 .. 2^2, never part of the selection.
    for name, by_target in document["sensitivity"].items():
        assert set(by_target) == {"0.3", "0.5"}
        for sensitivity in by_target.values():
            assert [p["factor"] for p in sensitivity["points"]] == pytest.approx([0.25, 0.5, 1, 2, 4])


def test_interrupted_study_resumes_without_redoing_finished_runs(tmp_path, monkeypatch, capsys):
    real_train_run = grid.train_run
    calls = []

    def interrupt_third(*args, **kwargs):
        calls.append((args[0].batch_size, args[2], args[3]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_train_run(*args, **kwargs)

    flags = ["demo", *TINY, "--optimizers", "SNGM", "--seeds", "1", "--tuning-seeds", "1", "--output-dir",
             str(tmp_path)]
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
                        lambda *a, **k: calls.append((a[0].batch_size, a[2], a[3])) or real_train_run(*a, **k))
    assert cli.main(flags) == 0
    rows = read_csv(tmp_path / "results.csv")
    assert len(rows) == len(calls) + 2
    first_two = {(json.loads(line)["batch_size"], json.loads(line)["learning_rate"], json.loads(line)["length"])
                 for line in stored}
    assert not first_two & {(b, float(f"{lr:.10g}"), n) for b, lr, n in calls}  # stored runs not trained again
    assert "already done" in capsys.readouterr().out
    # The same command once more trains nothing.
    calls.clear()
    assert cli.main(flags) == 0 and calls == []
    # Other settings in the same directory: a clear error, nothing mixed.
    assert cli.main([*flags, "--eval-spacing", "0.5"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_a_grid_where_every_run_diverges_finishes_and_plots(tmp_path, capsys):
    code = cli.main(["demo", *TINY, "--optimizers", "MSGD,SNGM", "--lr-multiplier", "1e9", "--seeds", "1",
                     "--output-dir", str(tmp_path)])
    assert code == 0
    rows = read_csv(tmp_path / "results.csv")
    assert rows and all(r["diverged"] == "True" and r["test_steps_to_0.5"] == "" for r in rows)
    assert all(int(r["steps_run"]) < int(r["length"]) for r in rows)  # stopped early
    summary = read_csv(tmp_path / "summary.csv")
    assert all(c["learning_rate"] == "" and c["n"] == "0" for c in summary)
    # Every run diverged, so the grid widened downwards (twice) for everyone: (2 + 2) rates x 2 lengths x 2 seeds.
    assert all(int(c["trials"]) == 16 for c in summary)
    for name in ("steps_to_target.png", "accuracy.png", "lr_sensitivity.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "not reached" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dataset", "teacher_student", "--batch-sizes", "64,4096", "--train-size", "1024"], "--train-size"),
        (["--dataset", "teacher_student", "--batch-sizes", "262144"], "--batch-sizes"),
        (["--batch-sizes", "2048"], "--batch-sizes"),
        (["--dataset", "teacher_student", "--train-size", "1"], "--train-size"),
        (["--train-size", "100"], "--train-size"),
        (["--data-dir", "/tmp"], "--data-dir"),
        (["--optimizers", ""], "--optimizers"),
        (["--optimizers", "MSGD,,SNGM"], "--optimizers"),
        (["--batch-sizes", ""], "--batch-sizes"),
        (["--gradient-samples", "3"], "--gradient-samples must divide every batch size"),
        (["--optimizers", "SNGM-untuned"], "must be in --optimizers"),
        (["--target", "0.9,0.8"], "--target"),
        (["--target", "0.5,"], "--target"),
        (["--eval-spacing", "0"], "--eval-spacing"),
        (["--schedule-lengths", "0"], "--schedule-lengths"),
        (["--lr-multiplier", "inf"], "--lr-multiplier"),
        (["--lr-multiplier", "nan"], "--lr-multiplier"),
        (["--lr-multiplier", "-1"], "--lr-multiplier"),
        (["--seed", "-1"], "--seed"),
        (["--optimizers", "SNGM,Nope"], "unknown optimizer 'Nope'"),
        (["--optimizers", "SNGM,SNGM"], "--optimizers"),
        (["--optimizers", "SNGM,sngm"], "--optimizers"),
        (["--batch-sizes", "30"], "--batch-sizes"),
        (["--batch-sizes", "a,b"], "--batch-sizes"),
        (["--target", "1.5"], "--target"),
        (["--learning-rates", "1"], "--learning-rates"),
        (["--lr-factor", "1"], "--lr-factor"),
        (["--seeds", "0"], "--seeds"),
        (["--tuning-seeds", "0"], "--tuning-seeds"),
        (["--max-steps", "4", "--min-steps", "8"], "--max-steps"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag_and_create_nothing(flags, message, tmp_path, capsys):
    assert cli.main(["demo", *flags, "--output-dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert message in error and "got None" not in error
    assert not (tmp_path / "out").exists()


def test_flags_are_checked_before_tensorflow_starts(tmp_path):
    """A name that needs Keras to resolve does not start TensorFlow before another flag's error."""
    code = textwrap.dedent("""
        import sys
        from tf_largebatch_cli import main
        status = main(["demo", "--optimizers", "MCLR,Lion", "--seed", "-1", "--output-dir", "out"])
        print("MODULES", "tensorflow" in sys.modules, "keras" in sys.modules)
        sys.exit(status)
    """)
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and "--seed" in result.stderr
    assert "MODULES False False" in result.stdout
    assert not re.search(r"^[IWEF]\d{4} |absl::InitializeLog|oneDNN", result.stderr, re.M)
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
                         "--max-steps", "4", "--schedule-lengths", "1", "--eval-spacing", "0.5",
                         "--learning-rates", "2", "--seeds", "1", "--target", "0.1",
                         "--no-progress", "--output-dir", str(tmp_path)])
    assert code == 0
    document = json.loads((tmp_path / "results.json").read_text())
    assert "CIFAR-10" in document["task"]
    assert {4, 2} <= {run["length"] for run in document["runs"]}
    assert all(math.isfinite(run["best_test_accuracy"]) for run in document["runs"])


def test_cifar10_without_data_exits_2_and_creates_nothing(tmp_path, capsys):
    code = cli.main(["demo", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--output-dir",
                     str(tmp_path / "out")])
    assert code == 2
    assert "never downloads" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
