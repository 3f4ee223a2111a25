"""The study's untuned AdaScale(MSGD) contender is built and run as documented.

AdaScale around Keras SGD(momentum 0.9) with MSGD's smallest-batch setting at
every batch size, ``S`` = batch size / smallest batch size, ``k`` micro-batches
as gradient samples, the schedule on ``tau``, and a run that ends on the update
where ``tau`` reaches the schedule's length (steps counted as real steps).
Tiny problems, a few steps each.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_largebatch.optimizers import AdaScale
from tf_largebatch.study import cli, engine, grid, recipes, run

NAME = "AdaScale(MSGD)-untuned"
NUM_TRAIN, DIM, CLASSES = 96, 5, 3


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(NUM_TRAIN, DIM)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
    return x, y


def softmax_regression():
    return keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(CLASSES, name="logits")])


def trainer_for(optimizer_fn, samples, batch_size=16):
    x, y = data()
    return engine.CompiledTrainer(softmax_regression, optimizer_fn, (x, y), {"validation": (x, y), "test": (x, y)},
                                  batch_size=batch_size, warmup_fraction=0.25, gradient_samples=samples,
                                  jit_compile=False)


def test_the_recipe_is_untuned_adascale_around_momentum_sgd_transferred_from_msgd():
    recipe = recipes.resolve(NAME)
    assert recipes.builtin(NAME) is recipe and recipes.resolve(NAME.lower()) is recipe
    assert recipe.transfer_from == "MSGD" and recipe.needs_gradient_samples() and recipe.batch_scale
    optimizer = recipe.build(0.05, 4, scale=8.0)
    assert isinstance(optimizer, AdaScale) and optimizer.current_scale == 8.0
    inner = optimizer.inner_optimizer
    assert isinstance(inner, keras.optimizers.SGD) and inner.momentum == 0.9
    assert optimizer.gradient_accumulation_steps == 4
    assert "AdaScale(keras.optimizers.SGD(lr, momentum=0.9)" in recipe.describe() and "untuned" in recipe.describe()
    # The CLI takes the name (and needs MSGD beside it).
    assert cli.resolve_optimizers(["MSGD", NAME]) == ("MSGD", NAME)
    with pytest.raises(cli.UsageError, match="MSGD"):
        cli.resolve_optimizers([NAME])


def test_at_scale_1_a_run_is_momentum_sgd_on_the_same_schedule():
    """S = 1: the gain is 1, tau counts steps, and k micro-batches average to the whole batch."""
    recipe = recipes.resolve(NAME)
    adascale = trainer_for(lambda lr, accumulation: recipe.build(lr, accumulation, scale=1.0), samples=4)
    msgd = trainer_for(lambda lr, accumulation: keras.optimizers.SGD(lr, momentum=0.9), samples=1)
    initial = adascale.model.get_weights()
    results = [grid.train_run(t, initial, 0.5, 10, seed=3, targets=(1.01,), spacing=0.25) for t in (adascale, msgd)]
    assert results[0]["steps_run"] == results[1]["steps_run"] == 10
    assert adascale.optimizer.scale_invariant_steps == 10.0
    for a, b in zip(adascale.model.get_weights(), msgd.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[0]["curve"]["learning_rate"][1:], results[1]["curve"]["learning_rate"][1:],
                               rtol=1e-5)


def test_at_a_larger_scale_a_run_stops_on_the_update_where_tau_reaches_the_length():
    recipe = recipes.resolve(NAME)
    trainer = trainer_for(lambda lr, accumulation: recipe.build(lr, accumulation, scale=4.0), samples=4, batch_size=64)
    length = 40
    result = grid.train_run(trainer, trainer.model.get_weights(), 0.2, length, seed=5, targets=(1.01,), spacing=0.25)
    optimizer = trainer.optimizer
    tau, gain, steps = optimizer.scale_invariant_steps, optimizer.gain, int(optimizer.iterations.numpy())
    assert 1.0 < gain <= 4.0
    assert result["steps_run"] == steps < length  # real steps, fewer than the base run's
    assert tau >= length > tau - gain  # the last update crossed the budget, no update after it
    # The logged learning rate is the scaled one, r * eta(tau), not the schedule at the step; the last
    # update used r * eta(tau - r).
    logged = result["curve"]["learning_rate"]
    assert logged[-1] == pytest.approx(gain * float(trainer.schedule(tf.constant(tau)).numpy()), rel=1e-5, abs=1e-9)
    assert optimizer.scaled_learning_rate == pytest.approx(
        gain * float(trainer.schedule(tf.constant(tau - gain)).numpy()), rel=1e-5)


def _blobs(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    centres = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]])
    return (centres[y] + rng.normal(scale=0.9, size=(n, 2))).astype(np.float32), y.astype(np.int64)


def _blob_model():
    return keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])


def test_in_a_study_it_reuses_msgds_smallest_batch_setting_with_scale_b_over_smallest_b(tmp_path, monkeypatch):
    seen = []
    real_train_run = grid.train_run

    def spy(trainer, *args, **kwargs):
        if isinstance(trainer.optimizer, AdaScale):
            seen.append((trainer.batch_size, trainer.optimizer.current_scale, trainer.gradient_samples))
        return real_train_run(trainer, *args, **kwargs)

    monkeypatch.setattr(grid, "train_run", spy)
    outcome = run(_blob_model, _blobs(640, 0), _blobs(128, 1), target=0.8, output_dir=tmp_path,
                  optimizers=("MSGD", NAME), batch_sizes=(16, 64), progress=False, num_learning_rates=2,
                  schedule_lengths=1, budget_examples=512, min_steps=8, max_steps=32, eval_spacing=0.25, seeds=2,
                  sensitivity_steps=0, max_widening=1, gradient_samples=4)
    assert sorted(set(seen)) == [(16, 1.0, 4), (64, 4.0, 4)]
    cells = {(c["optimizer"], c["batch_size"]): c for c in outcome.result["summary"]}
    base = cells[("MSGD", 16)]
    for batch_size in (16, 64):
        cell = cells[(NAME, batch_size)]
        assert (cell["learning_rate"], cell["length"]) == (base["learning_rate"], base["length"])
        assert cell["trials"] == 0 and not cell["tuned"]
    adascale_runs = [r for r in outcome.runs if r["optimizer"] == NAME]
    assert adascale_runs and all(r["seed_offset"] > 0 for r in adascale_runs)  # reporting seeds only
    assert all(r["steps_run"] <= r["length"] for r in adascale_runs)
