"""Tasks of the batch-size study: data, a model builder and a target.

A :class:`Task` is what the study trains: in-memory training and test splits, a
``model_fn`` that builds a fresh Keras model, and the test accuracy every run
must reach (``target``). Two come with the package:

* :func:`teacher_student_task` (the default, offline): a fixed, seeded random
  *teacher* network defines class probabilities for Gaussian inputs, and a
  small MLP student learns from labels sampled from them. The teacher's own
  arg-max is the Bayes-optimal classifier, so its test accuracy is the ceiling.
* :func:`cifar10_task`: CIFAR-10 from a locally prepared tensorflow-datasets
  copy (never downloaded) with a small CNN.

:func:`make_task` wraps a user's own model builder and data.
"""

import dataclasses
import functools

import numpy as np

from tf_largebatch import validation


@dataclasses.dataclass(frozen=True)
class Split:
    """Inputs ``x`` (float32, shape ``(n, ...)``) and integer labels ``y`` (shape ``(n,)``)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self):
        return len(self.y)


@dataclasses.dataclass(frozen=True)
class Task:
    """A classification task of the study.

    Attributes:
        name: short name, e.g. ``"teacher_student"``.
        train: the training :class:`Split`.
        test: the test :class:`Split`.
        num_classes: number of classes (labels are ``0 .. num_classes - 1``).
        description: one line for the outputs.
        model_fn: ``model_fn() -> keras.Model``, a fresh model (logits output);
            the study seeds Keras before each call.
        target: test accuracy in (0, 1] that "steps to target" counts to.
        bayes_test_accuracy: the best achievable test accuracy, if known.
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    description: str
    model_fn: object = None
    target: float = None
    bayes_test_accuracy: float = float("nan")


#: Test accuracy that "steps to target" counts to on the default teacher-student task.
TEACHER_STUDENT_TARGET = 0.75
#: ... and on CIFAR-10 with :func:`small_cnn`.
CIFAR10_TARGET = 0.5


def mlp(input_shape, num_classes, width=128):
    """The teacher-student student: two ReLU layers of ``width`` units, then logits."""
    import keras

    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Dense(width, activation="relu", name="dense_1"),
            keras.layers.Dense(width, activation="relu", name="dense_2"),
            keras.layers.Dense(num_classes, name="logits"),
        ],
        name="mlp",
    )


def small_cnn(input_shape, num_classes):
    """A small CNN for images: two conv + pooling blocks, one hidden dense layer, logits."""
    import keras

    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(32, 3, activation="relu", name="conv_1"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu", name="conv_2"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu", name="dense_1"),
            keras.layers.Dense(num_classes, name="logits"),
        ],
        name="small_cnn",
    )


def teacher_student_task(
    num_train=131072,
    num_test=8192,
    input_dim=32,
    teacher_width=256,
    num_classes=10,
    temperature=0.02,
    seed=0,
    target=TEACHER_STUDENT_TARGET,
):
    """Synthetic teacher-student classification, generated in memory.

    ``x ~ N(0, I_d)``; the teacher is a two-layer tanh network with Gaussian
    weights fixed by ``seed``. Its logits are standardised per class (so the
    classes are roughly balanced), divided by ``temperature``, and every label,
    training and test alike, is *sampled* from the resulting softmax. The
    teacher's arg-max label is returned too: its accuracy on the sampled test
    labels is the best any model can expect.

    Args:
        num_train: number of training examples.
        num_test: number of held-out test examples.
        input_dim: input dimension ``d``.
        teacher_width: hidden units of the teacher.
        num_classes: number of classes (>= 2).
        temperature: float > 0; smaller means less label noise.
        seed: integer seed; the same seed gives the same task.
        target: test accuracy that "steps to target" counts to.

    Returns:
        A :class:`Task` (student: :func:`mlp`) whose ``bayes_test_accuracy`` is the teacher's arg-max
        accuracy on the test labels.
    """
    num_train = validation.check_positive_int("num_train", num_train)
    num_test = validation.check_positive_int("num_test", num_test)
    target = check_target(target)
    input_dim = validation.check_positive_int("input_dim", input_dim)
    teacher_width = validation.check_positive_int("teacher_width", teacher_width)
    num_classes = validation.check_positive_int("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be >= 2, got {num_classes!r}.")
    if not float(temperature) > 0.0:
        raise ValueError(f"`temperature` must be > 0, got {temperature!r}.")

    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(input_dim, teacher_width)) / np.sqrt(input_dim)
    b1 = rng.normal(size=teacher_width) * 0.1
    w2 = rng.normal(size=(teacher_width, num_classes)) / np.sqrt(teacher_width)

    x = rng.normal(size=(num_train + num_test, input_dim))
    logits = np.tanh(x @ w1 + b1) @ w2
    logits = (logits - logits.mean(axis=0)) / logits.std(axis=0) / float(temperature)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    cumulative = probabilities.cumsum(axis=1)
    y = (rng.random((len(x), 1)) > cumulative).sum(axis=1).clip(max=num_classes - 1)
    teacher_label = logits.argmax(axis=1)

    bayes = float(np.mean(teacher_label[num_train:] == y[num_train:]))
    description = (
        f"teacher-student: {num_train} train / {num_test} test Gaussian inputs (d={input_dim}), "
        f"{num_classes} classes sampled from a random tanh teacher ({teacher_width} hidden, "
        f"temperature {temperature}), seed {seed}; the teacher itself scores {bayes:.2%} on the test set"
    )
    return Task(
        name="teacher_student",
        train=Split(x[:num_train].astype(np.float32), y[:num_train].astype(np.int32)),
        test=Split(x[num_train:].astype(np.float32), y[num_train:].astype(np.int32)),
        num_classes=num_classes,
        description=description,
        model_fn=functools.partial(mlp, (input_dim,), num_classes),
        target=target,
        bayes_test_accuracy=bayes,
    )


class DatasetNotAvailableError(RuntimeError):
    """The requested TFDS dataset is not prepared locally (the demo never downloads)."""


def cifar10_task(data_dir=None, num_train=None, num_test=None, target=CIFAR10_TARGET):
    """CIFAR-10 from a locally prepared tensorflow-datasets copy; never downloads.

    Images are scaled to [0, 1] floats; the model is :func:`small_cnn`. ``num_train`` / ``num_test`` keep the
    first examples of each split (useful to stay within a few minutes on a CPU).

    Args:
        data_dir: TFDS data directory (default: TFDS's own, ``~/tensorflow_datasets``
            or ``$TFDS_DATA_DIR``).
        num_train: optional positive int, keep only this many training examples.
        num_test: optional positive int, keep only this many test examples.
        target: test accuracy that "steps to target" counts to.

    Raises:
        DatasetNotAvailableError: CIFAR-10 is not prepared in ``data_dir``.
    """
    import tensorflow_datasets as tfds

    if num_train is not None:
        num_train = validation.check_positive_int("num_train", num_train)
    if num_test is not None:
        num_test = validation.check_positive_int("num_test", num_test)
    target = check_target(target)

    def spec(split, limit):
        return split if limit is None else f"{split}[:{limit}]"

    try:
        # download=False: TFDS reads only what is prepared in data_dir.
        train_data, test_data = tfds.load(
            "cifar10",
            split=[spec("train", num_train), spec("test", num_test)],
            data_dir=data_dir,
            as_supervised=True,
            download=False,
        )
    except AssertionError as error:  # how TFDS reports "not prepared" when download=False
        raise DatasetNotAvailableError(
            f"CIFAR-10 is not prepared in the TFDS data directory ({data_dir or 'the TFDS default'}), and the "
            "demo never downloads. Prepare it once where you have network access (`python -c \"import "
            "tensorflow_datasets as tfds; tfds.builder('cifar10').download_and_prepare()\"`), copy it here and "
            f"pass --data-dir, or run the default offline task. (TFDS said: {error})"
        ) from error

    def as_split(dataset, limit):
        batches = list(tfds.as_numpy(dataset.take(-1 if limit is None else limit).batch(4096)))
        images = np.concatenate([images for images, _ in batches])
        labels = np.concatenate([labels for _, labels in batches])
        return Split(images.astype(np.float32) / 255.0, labels.astype(np.int32))

    train = as_split(train_data, num_train)
    test = as_split(test_data, num_test)
    return Task(
        name="cifar10",
        train=train,
        test=test,
        num_classes=10,
        description=f"CIFAR-10 (TFDS, {len(train)} train / {len(test)} test images)",
        model_fn=functools.partial(small_cnn, train.x.shape[1:], 10),
        target=target,
    )


def check_target(target):
    """A target test accuracy must be a number in (0, 1]."""
    return validation.check_number("target", target, low=0.0, high=1.0, low_inclusive=False)


def _as_split(name, data):
    """``(x, y)`` arrays, or a finite ``tf.data.Dataset`` of ``(x, y)``, as a :class:`Split`."""
    if hasattr(data, "as_numpy_iterator"):
        import tensorflow as tf

        spec = data.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise ValueError(f"`{name}` must yield (x, y) pairs. Received element_spec={spec!r}")
        if data.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError(f"`{name}` is an infinite tf.data.Dataset; the study needs a finite one.")
        batched = len(spec[1].shape) >= 1  # a label per example is a scalar class index
        parts = list(data.as_numpy_iterator()) if batched else list(data.batch(4096).as_numpy_iterator())
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
    else:
        try:
            x, y = data
        except (TypeError, ValueError):
            raise ValueError(f"`{name}` must be an (x, y) pair of arrays or a tf.data.Dataset. "
                             f"Received: {type(data).__name__}") from None
        x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"`{name}`: x and y must hold the same, non-zero number of examples; got {len(x)} and "
                         f"{len(y)}.")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"`{name}`: labels must be integer class indices, got dtype {y.dtype}.")
    return Split(x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x, y.astype(np.int32))


def make_task(model_fn, train, test, target, name="custom", description=None):
    """A :class:`Task` from a user's own model builder and data.

    Args:
        model_fn: ``model_fn() -> keras.Model`` returning a fresh, built model
            whose output is one logit per class (the loss is sparse categorical
            cross-entropy from logits).
        train: ``(x, y)`` arrays with integer labels, or a finite
            ``tf.data.Dataset`` of ``(x, y)`` (examples or batches); the study
            keeps it in memory and draws its minibatches itself.
        test: the same for the test set.
        target: test accuracy in (0, 1] that "steps to target" counts to.
        name: short name for the outputs.
        description: one line for the outputs (default: the sizes).
    """
    if not callable(model_fn):
        raise ValueError(f"`model_fn` must be callable (returning a keras.Model). Received: {model_fn!r}")
    train_split, test_split = _as_split("train", train), _as_split("test", test)
    num_classes = int(max(train_split.y.max(), test_split.y.max())) + 1
    return Task(
        name=str(name),
        train=train_split,
        test=test_split,
        num_classes=num_classes,
        description=description or f"{name}: {len(train_split)} train / {len(test_split)} test examples",
        model_fn=model_fn,
        target=check_target(target),
    )
