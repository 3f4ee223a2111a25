"""The study's scaling analysis against hand computations.

Steps-to-target interpolation (on either split; a target reached before a
divergence counts) and the selection of the best run. The fit, the intervals and
the noise scale are in ``test_study_statistics.py``.
"""

import pytest

from tf_largebatch.study import analysis


def make_run(optimizer="A", batch_size=32, learning_rate=0.1, steps=(0, 10, 20, 30), accuracy=(0.1, 0.5, 0.7, 0.8),
             diverged=False, seed_offset=0):
    return {
        "optimizer": optimizer, "batch_size": batch_size, "learning_rate": learning_rate, "diverged": diverged,
        "seed_offset": seed_offset,
        "curve": {"step": list(steps), "test_accuracy": list(accuracy), "validation_accuracy": list(accuracy)},
        "best_test_accuracy": max(a for a in accuracy if a is not None),
        "best_validation_accuracy": max(a for a in accuracy if a is not None),
    }


def test_steps_to_target_interpolates_linearly_between_evaluations():
    # 0.5 at step 10, 0.7 at step 20: 0.6 is half-way, 0.65 three quarters.
    assert analysis.steps_to_target([0, 10, 20], [0.1, 0.5, 0.7], 0.6) == pytest.approx(15.0)
    assert analysis.steps_to_target([0, 10, 20], [0.1, 0.5, 0.7], 0.65) == pytest.approx(17.5)
    # Uneven spacing: 0.2 at 100, 0.6 at 300 -> 0.3 at 100 + 200 * 0.1 / 0.4 = 150.
    assert analysis.steps_to_target([0, 100, 300], [0.0, 0.2, 0.6], 0.3) == pytest.approx(150.0)
    # Reached exactly at an evaluation; reached before any training; never reached.
    assert analysis.steps_to_target([0, 10, 20], [0.1, 0.5, 0.7], 0.5) == pytest.approx(10.0)
    assert analysis.steps_to_target([0, 10], [0.9, 0.95], 0.5) == 0.0
    assert analysis.steps_to_target([0, 10, 20], [0.1, 0.5, 0.7], 0.71) is None
    # The first crossing counts, even if the curve falls back afterwards.
    assert analysis.steps_to_target([0, 10, 20, 30], [0.1, 0.8, 0.2, 0.9], 0.7) == pytest.approx(10 * 0.6 / 0.7)
    # A missing (diverged) evaluation is no crossing.
    assert analysis.steps_to_target([0, 10, 20], [0.1, None, float("nan")], 0.05) == 0.0
    assert analysis.steps_to_target([0, 10, 20], [0.0, None, 0.9], 0.5) == 20.0
    with pytest.raises(ValueError, match="differ in length"):
        analysis.steps_to_target([0, 1], [0.1], 0.5)


def test_a_target_reached_before_a_divergence_counts():
    run = make_run(accuracy=(0.1, 0.9, None, None), diverged=True)
    assert analysis.run_steps_to_target(run, 0.5) == pytest.approx(5.0)
    assert analysis.run_steps_to_target(run, 0.95) is None
    # Each split has its own curve.
    split = {**make_run(), "curve": {"step": [0, 10], "test_accuracy": [0.0, 1.0], "validation_accuracy": [0.0, 0.5]}}
    assert analysis.run_steps_to_target(split, 0.5, "test") == pytest.approx(5.0)
    assert analysis.run_steps_to_target(split, 0.5, "validation") == pytest.approx(10.0)


def test_best_run_is_fewest_steps_then_best_accuracy():
    slow = make_run(learning_rate=0.1, accuracy=(0.1, 0.3, 0.6, 0.9))        # 0.5 at step 16.7
    fast = make_run(learning_rate=0.2, accuracy=(0.1, 0.6, 0.7, 0.75))       # 0.5 at step 8.3
    crashed = make_run(learning_rate=0.4, accuracy=(0.1, 0.45, None, None), diverged=True)
    assert analysis.best_run([slow, fast, crashed], 0.5) is fast
    # Nobody reaches 0.95: the highest best accuracy among the runs that did not diverge wins.
    assert analysis.best_run([slow, fast, crashed], 0.95) is slow
    assert analysis.best_run([crashed], 0.5) is None
    assert analysis.best_run([], 0.5) is None
    # A run that reached the target first and diverged later is a fair selection.
    early = make_run(learning_rate=0.8, accuracy=(0.1, 0.9, None, None), diverged=True)
    assert analysis.best_run([slow, fast, early], 0.5) is early




def test_best_setting_needs_every_tuning_seed_and_ranks_by_the_mean():
    lucky = [make_run(accuracy=(0.1, 0.6, 0.7, 0.8)), make_run(accuracy=(0.1, 0.2, 0.3, 0.4))]   # one seed misses
    steady = [make_run(accuracy=(0.1, 0.3, 0.6, 0.9)), make_run(accuracy=(0.1, 0.4, 0.6, 0.9))]  # 16.7 and 15
    assert analysis.best_setting({"lucky": lucky, "steady": steady}, 0.5) == ("steady", True)
    faster = [make_run(accuracy=(0.1, 0.5, 0.7, 0.8)), make_run(accuracy=(0.1, 0.3, 0.9, 0.9))]  # 10 and 13.3
    assert analysis.best_setting({"steady": steady, "faster": faster}, 0.5) == ("faster", True)
    # Nobody reaches 0.95 on every seed: the highest mean best accuracy, marked as not reached.
    assert analysis.best_setting({"lucky": lucky, "steady": steady}, 0.95) == ("steady", False)
    crashed = [make_run(accuracy=(0.1, 0.2, None, None), diverged=True)]
    assert analysis.best_setting({"crashed": crashed}, 0.5) == (None, False)
