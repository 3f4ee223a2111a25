"""The study's tasks and optimizer recipes.

The teacher-student task is seeded and its Bayes accuracy is the teacher's; the
CIFAR-10 task reads TFDS (``tfds.testing.mock_data``) and never downloads; a
user's own model and data (arrays or ``tf.data``) become a task with clear
errors for bad input; optimizer names resolve to this package's or Keras's
classes, centred on their scaling rule.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_largebatch.study import grid, recipes, tasks


def test_teacher_student_task_is_seeded_and_its_bayes_accuracy_is_the_teachers():
    a = tasks.teacher_student_task(num_train=2000, num_test=1000, seed=3)
    b = tasks.teacher_student_task(num_train=2000, num_test=1000, seed=3)
    c = tasks.teacher_student_task(num_train=2000, num_test=1000, seed=4)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.test.y, b.test.y)
    assert not np.array_equal(a.train.y, c.train.y)
    assert a.train.x.shape == (2000, 32) and a.test.y.shape == (1000,)
    assert set(np.unique(a.train.y)) == set(range(10))
    # Lower temperature, less label noise: the teacher's own accuracy rises towards 1.
    sharp = tasks.teacher_student_task(num_train=100, num_test=4000, temperature=0.01)
    noisy = tasks.teacher_student_task(num_train=100, num_test=4000, temperature=1.0)
    assert sharp.bayes_test_accuracy > 0.97 > 0.5 > noisy.bayes_test_accuracy > 0.1
    with pytest.raises(ValueError, match="temperature"):
        tasks.teacher_student_task(temperature=0)
    with pytest.raises(ValueError, match="target"):
        tasks.teacher_student_task(num_train=10, target=1.5)
    # The task carries its model and its fixed target.
    model = a.model_fn()
    assert model.output_shape == (None, 10) and a.target == tasks.TEACHER_STUDENT_TARGET


def test_cifar10_task_reads_tfds_and_never_downloads(tmp_path):
    with pytest.raises(tasks.DatasetNotAvailableError, match="never downloads"):
        tasks.cifar10_task(data_dir=str(tmp_path), num_train=8)
    with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
        task = tasks.cifar10_task(num_train=32, num_test=16)
    assert task.train.x.shape == (32, 32, 32, 3) and task.test.x.shape == (16, 32, 32, 3)
    assert task.train.x.dtype == np.float32 and 0.0 <= task.train.x.min() and task.train.x.max() <= 1.0
    assert task.train.y.dtype == np.int32 and set(np.unique(task.train.y)) <= set(range(10))
    assert task.model_fn().output_shape == (None, 10) and task.target == tasks.CIFAR10_TARGET


def test_make_task_takes_arrays_or_tf_data_and_checks_them():
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    y = np.arange(40) % 4

    def model_fn():
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])

    from_arrays = tasks.make_task(model_fn, (x, y), (x[:8], y[:8]), target=0.5, name="mine")
    examples = tf.data.Dataset.from_tensor_slices((x, y))
    from_examples = tasks.make_task(model_fn, examples, examples.take(8), target=0.5)
    from_batches = tasks.make_task(model_fn, examples.batch(16), examples.take(8).batch(3), target=0.5)
    for task in (from_examples, from_batches):
        np.testing.assert_array_equal(task.train.x, from_arrays.train.x)
        np.testing.assert_array_equal(task.test.y, from_arrays.test.y)
    assert from_arrays.num_classes == 4 and from_arrays.train.y.dtype == np.int32
    assert "mine" in from_arrays.description
    with pytest.raises(ValueError, match="infinite"):
        tasks.make_task(model_fn, examples.repeat(), (x, y), target=0.5)
    with pytest.raises(ValueError, match="integer class indices"):
        tasks.make_task(model_fn, (x, y.astype(np.float32)), (x, y), target=0.5)
    with pytest.raises(ValueError, match="same, non-zero number"):
        tasks.make_task(model_fn, (x, y[:5]), (x, y), target=0.5)
    with pytest.raises(ValueError, match="`target`"):
        tasks.make_task(model_fn, (x, y), (x, y), target=0.0)
    with pytest.raises(ValueError, match="model_fn"):
        tasks.make_task("not a function", (x, y), (x, y), target=0.5)


def test_recipes_resolve_package_keras_and_study_names():
    assert recipes.resolve("MSGD").class_name == "SGD" and dict(recipes.resolve("MSGD").kwargs) == {"momentum": 0.9}
    assert recipes.resolve("sngm") is recipes.RECIPES["SNGM"]
    lion = recipes.resolve("Lion")
    assert (lion.source, lion.class_name, lion.rule) == ("keras", "Lion", "sqrt")
    assert lion.base_learning_rate == pytest.approx(keras.optimizers.Lion().learning_rate.numpy())
    layerwise = recipes.resolve("LayerwiseAdam")
    assert layerwise.source == "tf_largebatch" and layerwise.optimizer_class().__name__ == "LayerwiseAdam"
    assert recipes.resolve("VRLAMB").needs_gradient_samples() and not recipes.resolve("LAMB").needs_gradient_samples()
    with pytest.raises(ValueError, match="unknown optimizer 'Nope'.*MSGD"):
        recipes.resolve("Nope")


def test_learning_rate_grid_is_centred_on_the_scaling_rule():
    linear = recipes.Recipe("x", "keras", "SGD", 0.1, "linear")
    square_root = recipes.Recipe("y", "keras", "SGD", 0.1, "sqrt")
    assert linear.centre_learning_rate(128) == pytest.approx(0.1)
    assert linear.centre_learning_rate(4096) == pytest.approx(3.2)
    assert square_root.centre_learning_rate(4096) == pytest.approx(0.1 * math.sqrt(32))
    config = grid.StudyConfig(optimizers=("x",), batch_sizes=(32, 512), num_learning_rates=4,
                              learning_rate_factor=2.0, lr_multiplier=3.0)
    rates = config.initial_learning_rates(linear, 512)
    # Geometric centre 0.4 * 3 (rule x multiplier), neighbours a factor 2 apart.
    assert math.sqrt(rates[1] * rates[2]) == pytest.approx(1.2)
    assert [b / a for a, b in zip(rates, rates[1:])] == pytest.approx([2.0, 2.0, 2.0])
    assert config.steps(32) == 1024 and config.steps(512) == 512 and grid.StudyConfig().steps(8192) == 64


def test_study_config_rejects_bad_values_naming_them():
    for kwargs, name in (
        (dict(batch_sizes=(64, 32)), "batch_sizes"),
        (dict(num_learning_rates=1), "num_learning_rates"),
        (dict(learning_rate_factor=1.0), "learning_rate_factor"),
        (dict(lr_multiplier=float("inf")), "lr_multiplier"),
        (dict(batch_sizes=(30,)), "gradient_samples"),
        (dict(seed=-1), "seed"),
        (dict(max_steps=10, min_steps=20), "max_steps"),
    ):
        with pytest.raises(ValueError, match=name):
            grid.StudyConfig(**kwargs)
