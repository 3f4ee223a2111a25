"""``tf_largebatch.study.run``: a study of a user's own model and ``tf.data`` pipeline from Python.

A tiny real study on a separable 3-class problem: the outputs exist, every run of the
grid is recorded at its budget, the best learning rates come from the recorded runs,
and a second call resumes without training anything.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_largebatch.study import grid, run


def three_blobs(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    centres = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]])
    return (centres[y] + rng.normal(scale=0.7, size=(n, 2))).astype(np.float32), y.astype(np.int64)


def model_fn():
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])


def test_run_on_a_users_model_and_tf_data(tmp_path, monkeypatch):
    x, y = three_blobs(512, 0)
    x_test, y_test = three_blobs(128, 1)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)  # a batched pipeline is fine
    settings = dict(target=0.8, output_dir=tmp_path, optimizers=("SNGM", "RMSprop"), batch_sizes=(16, 64),
                    progress=False, num_learning_rates=2, budget_examples=512, min_steps=8, max_steps=32,
                    evaluations=4, seeds=1, sensitivity_steps=1, max_widening=1, name="blobs")
    outcome = run(model_fn, train, (x_test, y_test), **settings)
    assert not outcome.interrupted
    for name in ("results.csv", "summary.csv", "results.json", "steps_to_target.png", "accuracy.png",
                 "lr_sensitivity.png"):
        assert outcome.paths[name].exists()
    assert "blobs" in outcome.paths["results.json"].read_text()
    runs = outcome.runs
    assert {r["steps"] for r in runs if r["batch_size"] == 16} == {32}  # 512 / 16
    assert {r["steps"] for r in runs if r["batch_size"] == 64} == {8}   # 512 / 64
    # RMSprop is Keras's own (not a study recipe): its default learning rate, square-root scaled from B = 128.
    rmsprop_rates = sorted(r["learning_rate"] for r in runs if r["optimizer"] == "RMSprop" and r["batch_size"] == 16)
    centre = 0.001 * (16 / 128) ** 0.5
    assert any(rate == pytest.approx(centre / 2 ** 0.5) for rate in rmsprop_rates)
    for cell in outcome.result["summary"]:
        group = [r for r in runs if (r["optimizer"], r["batch_size"]) == (cell["optimizer"], cell["batch_size"])]
        assert cell["runs"] == len(group) >= 2
        if cell["best_learning_rate"] is not None:
            assert cell["best_learning_rate"] in [r["learning_rate"] for r in group if not r["diverged"]]
    # The same call again resumes: nothing is trained.
    calls = []
    monkeypatch.setattr(grid, "train_run", lambda *args, **kwargs: calls.append(args))
    again = run(model_fn, train, (x_test, y_test), **settings)
    assert calls == [] and len(again.runs) == len(runs)


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
    assert not any((tmp_path / name).exists() for name in "abcd")
