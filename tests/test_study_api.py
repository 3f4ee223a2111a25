"""``tf_largebatch.study.run``: a study of a user's own model and ``tf.data`` pipeline from Python.

Tiny real studies on a separable 3-class problem give the same statistics as the
demo: every cell's reporting seeds with a t interval, paired comparisons, the
fit with its diagnostics, an untuned-transfer contender that reuses its base's
smallest-batch setting everywhere; two identical optimizers give "no significant
difference"; a second call resumes without training anything.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_largebatch.study import grid, recipes, run, statistics


def three_blobs(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    centres = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]])
    return (centres[y] + rng.normal(scale=0.9, size=(n, 2))).astype(np.float32), y.astype(np.int64)


def model_fn():
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])


TINY = dict(batch_sizes=(16, 64), progress=False, num_learning_rates=2, schedule_lengths=2, budget_examples=512,
            min_steps=8, max_steps=32, eval_spacing=0.25, seeds=2, sensitivity_steps=1, max_widening=1)


def test_run_on_a_users_model_and_tf_data(tmp_path, monkeypatch):
    x, y = three_blobs(640, 0)
    x_test, y_test = three_blobs(128, 1)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)  # a batched pipeline is fine
    settings = dict(target=(0.7, 0.8), output_dir=tmp_path, optimizers=("SNGM", "RMSprop", "SNGM-untuned"),
                    name="blobs", **TINY)
    outcome = run(model_fn, train, (x_test, y_test), **settings)
    assert not outcome.interrupted
    for name in ("results.csv", "summary.csv", "results.json", "steps_to_target.png", "accuracy.png",
                 "lr_sensitivity.png"):
        assert outcome.paths[name].exists()
    assert "blobs" in outcome.paths["results.json"].read_text()
    runs, result = outcome.runs, outcome.result
    # RMSprop is Keras's own (not a study recipe): its default learning rate, square-root scaled from B = 128,
    # the grid's two values a factor 2 apart around it.
    centre = 0.001 * (16 / 128) ** 0.5
    rmsprop_rates = {r["learning_rate"] for r in runs if r["optimizer"] == "RMSprop" and r["batch_size"] == 16}
    assert any(rate == pytest.approx(centre / 2 ** 0.5) for rate in rmsprop_rates)
    cells = {(c["optimizer"], c["batch_size"], c["target"]): c for c in result["summary"]}
    for (name, batch_size, target), cell in cells.items():
        assert cell["n"] in (0, 2)
        reached = [s for s in cell["steps_by_seed"] if s is not None]
        if len(reached) >= 2:
            interval = statistics.t_interval(reached)
            assert (cell["low_steps"], cell["high_steps"]) == pytest.approx((interval["low"], interval["high"]))
    # The untuned contender runs SNGM's smallest-batch setting at every batch size, never tuned.
    for target in (0.7, 0.8):
        base = cells[("SNGM", 16, target)]
        for batch_size in (16, 64):
            untuned = cells[("SNGM-untuned", batch_size, target)]
            assert (untuned["learning_rate"], untuned["length"]) == (base["learning_rate"], base["length"])
            assert untuned["trials"] == 0 and not untuned["tuned"]
    assert not [r for r in runs if r["optimizer"] == "SNGM-untuned" and r["seed_offset"] == 0]
    assert "SNGM-untuned" in {c["optimizer"] for c in result["paired_comparisons"]} <= {"RMSprop", "SNGM-untuned"}
    assert {"SNGM@0.8", "RMSprop@0.8", "SNGM-untuned@0.8"} <= set(result["fits"])
    # The same call again resumes: nothing is trained.
    calls = []
    monkeypatch.setattr(grid, "train_run", lambda *args, **kwargs: calls.append(args))
    again = run(model_fn, train, (x_test, y_test), **settings)
    assert calls == [] and len(again.runs) == len(runs)


def test_identical_optimizers_give_no_significant_difference(tmp_path):
    x, y = three_blobs(640, 2)
    same = dict(source="keras", class_name="SGD", base_learning_rate=0.1, rule="linear", kwargs=(("momentum", 0.9),))
    outcome = run(model_fn, (x, y), three_blobs(128, 3), target=0.8, output_dir=tmp_path,
                  optimizers=(recipes.Recipe("A", **same), recipes.Recipe("B", **same)), **TINY)
    comparisons = outcome.result["paired_comparisons"]
    assert comparisons and all(not c["significant"] and c["percent"] == 0 for c in comparisons)
    assert "no significant difference" in outcome.table


def test_run_rejects_bad_arguments_before_training(tmp_path):
    x, y = three_blobs(64, 0)
    with pytest.raises(ValueError, match="unknown optimizer 'Nope'"):
        run(model_fn, (x, y), (x, y), target=0.5, output_dir=tmp_path / "a", optimizers=("Nope",))
    with pytest.raises(ValueError, match="larger than the training set"):
        run(model_fn, (x, y), (x, y), target=0.5, output_dir=tmp_path / "b", batch_sizes=(16, 128))
    with pytest.raises(ValueError, match="`target`"):
        run(model_fn, (x, y), (x, y), target=2.0, output_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="must return a keras.Model"):
        run(lambda: "no model", (x, y), (x, y), target=0.5, output_dir=tmp_path / "d", batch_sizes=(16,),
            optimizers=("SNGM",), seeds=1)
    with pytest.raises(ValueError, match="must be in the study too"):
        run(model_fn, (x, y), (x, y), target=0.5, output_dir=tmp_path / "e", batch_sizes=(16,),
            optimizers=("SNGM-untuned",))
    assert not any((tmp_path / name).exists() for name in "abcde")
