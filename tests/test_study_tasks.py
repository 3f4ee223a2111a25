"""The study's tasks and optimizer recipes.

The digits task is the real UCI data, split into disjoint train / validation /
test parts; the teacher-student task is seeded and its Bayes accuracy is the
teacher's; the CIFAR-10 task reads TFDS (``tfds.testing.mock_data``) and never
downloads; a user's own model and data (arrays or ``tf.data``) become a task
with a validation split and clear errors for bad input; optimizer names resolve
to this package's or Keras's classes, centred on their scaling rule, and the
unknown-name message offers only what the study can build.
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
    assert a.train.x.shape == (1600, 32) and a.test.y.shape == (1000,)
    assert set(np.unique(a.train.y)) == set(range(10))
    # Lower temperature, less label noise: the teacher's own accuracy rises towards 1.
    sharp = tasks.teacher_student_task(num_train=100, num_test=4000, temperature=0.01)
    noisy = tasks.teacher_student_task(num_train=100, num_test=4000, temperature=1.0)
    assert sharp.bayes_test_accuracy > 0.97 > 0.5 > noisy.bayes_test_accuracy > 0.1
    with pytest.raises(ValueError, match="temperature"):
        tasks.teacher_student_task(temperature=0)
    with pytest.raises(ValueError, match="target"):
        tasks.teacher_student_task(num_train=10, target=1.5)
    with pytest.raises(ValueError, match="increase"):
        tasks.teacher_student_task(num_train=10, target=(0.8, 0.7))
    # The task carries its model, its targets and a validation fifth of num_train.
    model = a.model_fn()
    assert model.output_shape == (None, 10) and a.targets == tasks.TEACHER_STUDENT_TARGETS
    assert (len(a.train), len(a.validation)) == (1600, 400)


def test_digits_task_is_the_real_uci_data_in_disjoint_splits():
    from sklearn.datasets import load_digits

    task = tasks.digits_task()
    assert (len(task.train), len(task.validation), len(task.test)) == (tasks.DIGITS_TRAIN_SIZE, 288, 359)
    # Together the three splits are the 1,797 images, each once, with their labels.
    x = np.concatenate([task.train.x, task.validation.x, task.test.x])
    y = np.concatenate([task.train.y, task.validation.y, task.test.y])
    everything = load_digits()
    order, expected = np.lexsort(np.c_[x, y].T), np.lexsort(np.c_[everything.data / 16.0, everything.target].T)
    np.testing.assert_allclose(x[order], everything.data[expected] / 16.0, rtol=1e-6)
    np.testing.assert_array_equal(y[order], everything.target[expected])
    assert task.train.x.dtype == np.float32 and task.train.x.max() == 1.0
    assert task.targets == tasks.DIGITS_TARGETS and task.model_fn().output_shape == (None, 10)
    assert not np.array_equal(tasks.digits_task(seed=1).test.y, task.test.y)


def test_carve_validation_keeps_a_seeded_disjoint_fraction():
    split = tasks.Split(np.arange(50, dtype=np.float32)[:, None], np.arange(50) % 3)
    train, held = tasks.carve_validation(split, 0.2, seed=4)
    assert (len(train), len(held)) == (40, 10)
    assert sorted(np.concatenate([train.x[:, 0], held.x[:, 0]])) == list(range(50))
    again, _ = tasks.carve_validation(split, 0.2, seed=4)
    np.testing.assert_array_equal(train.x, again.x)
    with pytest.raises(ValueError, match="at least 2"):
        tasks.carve_validation(tasks.Split(split.x[:1], split.y[:1]))


def test_cifar10_task_reads_tfds_and_never_downloads(tmp_path):
    with pytest.raises(tasks.DatasetNotAvailableError, match="never downloads"):
        tasks.cifar10_task(data_dir=str(tmp_path), num_train=8)
    with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
        task = tasks.cifar10_task(num_train=32, num_test=16)
    assert task.train.x.shape == (26, 32, 32, 3) and task.test.x.shape == (16, 32, 32, 3)
    assert task.train.x.dtype == np.float32 and 0.0 <= task.train.x.min() and task.train.x.max() <= 1.0
    assert task.train.y.dtype == np.int32 and set(np.unique(task.train.y)) <= set(range(10))
    assert task.model_fn().output_shape == (None, 10) and task.targets == tasks.CIFAR10_TARGETS
    assert len(task.validation) == 6 and len(task.train) == 26  # a fifth of the 32 training images


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
        np.testing.assert_array_equal(task.validation.x, from_arrays.validation.x)
        np.testing.assert_array_equal(task.test.y, from_arrays.test.y)
    assert (len(from_arrays.train), len(from_arrays.validation)) == (32, 8) and from_arrays.targets == (0.5,)
    given = tasks.make_task(model_fn, (x, y), (x, y), target=(0.4, 0.6), validation_data=(x[:5], y[:5]))
    assert len(given.train) == 40 and len(given.validation) == 5 and given.targets == (0.4, 0.6)
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
    with pytest.raises(ValueError, match="unknown optimizer 'Nope'.*MSGD") as error:
        recipes.resolve("Nope")
    # Only what the study can build from a learning rate: no wrappers or base classes.
    for refused in ("LossScaleOptimizer", "LargeBatchOptimizer", "MultiOptimizer", "Optimizer", " VR,"):
        assert refused not in str(error.value)
    assert "LayerwiseAdam" in str(error.value) and "Lion" in str(error.value)
    # An untuned-transfer contender: the base's class, never tuned, pointing at its base.
    untuned = recipes.resolve("MSGD-untuned")
    assert (untuned.name, untuned.class_name, untuned.transfer_from) == ("MSGD-untuned", "SGD", "MSGD")
    assert recipes.resolve("Lion-untuned").transfer_from == "Lion"
    assert recipes.builtin("LAMB") is recipes.RECIPES["LAMB"] and recipes.builtin("Lion") is None
    # The opt-in bfloat16 second moment, as its own contender: VRMomentum's recipe but for that argument.
    bf16 = recipes.resolve("VRMomentum(bf16)")
    assert (bf16.class_name, bf16.base_learning_rate, bf16.rule) == ("VRMomentum", 0.0125, "linear")
    assert bf16.needs_gradient_samples() and bf16.build(0.1, 2).second_moment_dtype == "bfloat16"


def test_a_recipe_with_a_factory_builds_a_wrapper_and_declares_its_samples():
    """The slot an optimizer that wraps another (e.g. AdaScale around MSGD) fills as one recipe entry."""
    built = []

    def factory(learning_rate, **kwargs):
        built.append(kwargs)
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9, **kwargs)

    wrapped = recipes.Recipe("Wrapped(MSGD)", "keras", "SGD", 0.0125, "linear", factory=factory,
                             gradient_samples=True, transfer_from="MSGD")
    optimizer = wrapped.build(0.5, gradient_accumulation_steps=4)
    assert float(optimizer.learning_rate) == 0.5 and optimizer.gradient_accumulation_steps == 4
    assert built == [{"gradient_accumulation_steps": 4}] and wrapped.needs_gradient_samples()
    assert recipes.resolve(wrapped) is wrapped


def test_learning_rate_grid_is_centred_on_the_scaling_rule():
    linear = recipes.Recipe("x", "keras", "SGD", 0.1, "linear")
    square_root = recipes.Recipe("y", "keras", "SGD", 0.1, "sqrt")
    assert linear.centre_learning_rate(128) == pytest.approx(0.1)
    assert linear.centre_learning_rate(4096) == pytest.approx(3.2)
    assert square_root.centre_learning_rate(4096) == pytest.approx(0.1 * math.sqrt(32))
    config = grid.StudyConfig(optimizers=("x",), batch_sizes=(32, 512), num_learning_rates=4,
                              learning_rate_factor=2.0, lr_multiplier=3.0, budget_examples=2**18, min_steps=64,
                              max_steps=1024)
    rates = [config.learning_rate(linear, 512, i) for i in range(4)]
    # Geometric centre 0.4 * 3 (rule x multiplier), neighbours a factor 2 apart.
    assert math.sqrt(rates[1] * rates[2]) == pytest.approx(1.2)
    assert [b / a for a, b in zip(rates, rates[1:])] == pytest.approx([2.0, 2.0, 2.0])
    assert config.learning_rate(linear, 512, 4) == pytest.approx(2 * rates[3])  # widening continues the grid
    # Schedule lengths: the budget clip(2^18 / B, 64, 1024), halved or doubled per index.
    assert config.budget(32) == 1024 and config.budget(512) == 512 and config.budget(8192) == 64
    assert [config.length(512, j) for j in (-2, -1, 0, 1)] == [128, 256, 512, 1024]


def test_study_config_rejects_bad_values_naming_them():
    for kwargs, name in (
        (dict(batch_sizes=(64, 32)), "batch_sizes"),
        (dict(num_learning_rates=1), "num_learning_rates"),
        (dict(learning_rate_factor=1.0), "learning_rate_factor"),
        (dict(lr_multiplier=float("inf")), "lr_multiplier"),
        (dict(batch_sizes=(30,)), "gradient_samples"),
        (dict(seed=-1), "seed"),
        (dict(max_steps=10, min_steps=20), "max_steps"),
        (dict(schedule_lengths=0), "schedule_lengths"),
        (dict(eval_spacing=0.0), "eval_spacing"),
        (dict(seeds=0), "seeds"),
    ):
        with pytest.raises(ValueError, match=name):
            grid.StudyConfig(**kwargs)
