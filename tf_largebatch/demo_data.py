"""Data for ``tf-largebatch demo``: an offline teacher-student task, or CIFAR-10 from TFDS.

The default task needs no download: a fixed, seeded random *teacher* network
defines class probabilities for Gaussian inputs, and a student network learns
from labels sampled from them. Training and test labels come from the same
noisy distribution, so the teacher's own arg-max is the Bayes-optimal classifier
(its test accuracy is the ceiling), and a student that memorises the noise in
its training labels shows a generalisation gap, the quantity of the batch-size
studies (SNGM paper, Table 2).
""" 

import dataclasses

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
    """A classification task: training and test splits plus a description."""

    name: str
    train: Split
    test: Split
    num_classes: int
    description: str
    bayes_test_accuracy: float = float("nan")


def teacher_student_task(
    num_train=16384,
    num_test=4096,
    input_dim=32,
    teacher_width=64,
    num_classes=10,
    temperature=0.2,
    seed=0,
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

    Returns:
        A :class:`Task` whose ``bayes_test_accuracy`` is the teacher's arg-max
        accuracy on the test labels.
    """
    num_train = validation.check_positive_int("num_train", num_train)
    num_test = validation.check_positive_int("num_test", num_test)
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
        bayes_test_accuracy=bayes,
    )


class DatasetNotAvailableError(RuntimeError):
    """The requested TFDS dataset is not prepared locally (the demo never downloads)."""


def cifar10_task(data_dir=None, num_train=None, num_test=None):
    """CIFAR-10 from a locally prepared tensorflow-datasets copy; never downloads.

    Images are scaled to [0, 1] floats. ``num_train`` / ``num_test`` keep the
    first examples of each split (useful to stay within a few minutes on a CPU).

    Args:
        data_dir: TFDS data directory (default: TFDS's own, ``~/tensorflow_datasets``
            or ``$TFDS_DATA_DIR``).
        num_train: optional positive int, keep only this many training examples.
        num_test: optional positive int, keep only this many test examples.

    Raises:
        DatasetNotAvailableError: CIFAR-10 is not prepared in ``data_dir``.
    """
    import tensorflow_datasets as tfds

    if num_train is not None:
        num_train = validation.check_positive_int("num_train", num_train)
    if num_test is not None:
        num_test = validation.check_positive_int("num_test", num_test)

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
    )
