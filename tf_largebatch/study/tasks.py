"""Tasks of the batch-size study: data, a model builder and targets.

A :class:`Task` is what the study trains: in-memory training, validation and
test splits, a ``model_fn`` that builds a fresh Keras model, and the accuracies
every run must reach (``targets``: a loose and a tight one). The validation
split is carved from the training data: the study selects learning rates and
schedule lengths on it and reports on the test split only. Three come with the
package:

* :func:`digits_task` (the default, offline): the UCI handwritten digits
  (scikit-learn's bundled ``load_digits``: 1,797 real 8x8 images, no download)
  with a small MLP;
* :func:`teacher_student_task` (offline, synthetic): a fixed, seeded random
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
        name: short name, e.g. ``"digits"``.
        train: the training :class:`Split` (minibatches are drawn from it).
        validation: the validation :class:`Split`, carved from the training data
            (selection only).
        test: the test :class:`Split` (reporting only).
        num_classes: number of classes (labels are ``0 .. num_classes - 1``).
        description: one line for the outputs.
        model_fn: ``model_fn() -> keras.Model``, a fresh model (logits output);
            the study seeds Keras before each call.
        targets: increasing accuracies in (0, 1] that "steps to target" counts
            to (a loose and a tight one), on the validation split for selection
            and on the test split for reporting.
        bayes_test_accuracy: the best achievable test accuracy, if known.
    """

    name: str
    train: Split
    validation: Split
    test: Split
    num_classes: int
    description: str
    model_fn: object = None
    targets: tuple = None
    bayes_test_accuracy: float = float("nan")


#: Loose and tight target accuracies of the digits task with :func:`mlp`.
DIGITS_TARGETS = (0.85, 0.93)
#: ... of the teacher-student task.
TEACHER_STUDENT_TARGETS = (0.70, 0.75)
#: ... of CIFAR-10 with :func:`small_cnn`.
CIFAR10_TARGETS = (0.45, 0.5)
#: Fraction of the training data the built-in tasks and :func:`make_task` keep apart for validation.
VALIDATION_FRACTION = 0.2
#: Training examples of :func:`digits_task` (1,797 images: 359 test, 288 validation).
DIGITS_TRAIN_SIZE = 1150


def carve_validation(split, fraction=VALIDATION_FRACTION, seed=0):
    """``(train, validation)``: a seeded random ``fraction`` of ``split`` kept apart for selection.

    Args:
        split: a :class:`Split` of at least 2 examples.
        fraction: in (0, 1), the share that becomes the validation split (at least one example each side).
        seed: seed of the permutation.
    """
    fraction = validation.check_number("validation_fraction", fraction, low=0.0, high=1.0, low_inclusive=False,
                                       high_inclusive=False)
    if len(split) < 2:
        raise ValueError(f"the training data must hold at least 2 examples to carve a validation split, got "
                         f"{len(split)}.")
    order = np.random.default_rng(seed).permutation(len(split))
    count = min(max(1, int(round(fraction * len(split)))), len(split) - 1)
    held, kept = np.sort(order[:count]), np.sort(order[count:])
    return Split(split.x[kept], split.y[kept]), Split(split.x[held], split.y[held])


def check_targets(targets):
    """One accuracy or an increasing pair (loose, tight), each in (0, 1]; returned as a tuple."""
    values = (targets,) if isinstance(targets, (int, float)) else tuple(targets)
    if not 1 <= len(values) <= 2:
        raise ValueError(f"`target` must be one accuracy or a (loose, tight) pair, got {targets!r}.")
    values = tuple(check_target(v) for v in values)
    if len(values) == 2 and not values[0] < values[1]:
        raise ValueError(f"`target`: a (loose, tight) pair must increase, got {targets!r}.")
    return values


def mlp(input_shape, num_classes, width=128):
    """The MLP of the digits and teacher-student tasks: two ReLU layers of ``width`` units, then logits."""
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
    target=TEACHER_STUDENT_TARGETS,
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
        target: one accuracy or a (loose, tight) pair that "steps to target" counts to.

    Returns:
        A :class:`Task` (student: :func:`mlp`) whose ``bayes_test_accuracy`` is the teacher's arg-max
        accuracy on the test labels; its validation split is a fifth of the ``num_train`` examples.
    """
    num_train = validation.check_positive_int("num_train", num_train)
    num_test = validation.check_positive_int("num_test", num_test)
    targets = check_targets(target)
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
        f"teacher-student: {num_train} train (a fifth kept for validation) / {num_test} test Gaussian inputs "
        f"(d={input_dim}), "
        f"{num_classes} classes sampled from a random tanh teacher ({teacher_width} hidden, "
        f"temperature {temperature}), seed {seed}; the teacher itself scores {bayes:.2%} on the test set"
    )
    train, held_out = carve_validation(Split(x[:num_train].astype(np.float32), y[:num_train].astype(np.int32)),
                                       seed=seed)
    return Task(
        name="teacher_student",
        train=train,
        validation=held_out,
        test=Split(x[num_train:].astype(np.float32), y[num_train:].astype(np.int32)),
        num_classes=num_classes,
        description=description,
        model_fn=functools.partial(mlp, (input_dim,), num_classes),
        targets=targets,
        bayes_test_accuracy=bayes,
    )


class DatasetNotAvailableError(RuntimeError):
    """The requested TFDS dataset is not prepared locally (the demo never downloads)."""


def cifar10_task(data_dir=None, num_train=None, num_test=None, target=CIFAR10_TARGETS):
    """CIFAR-10 from a locally prepared tensorflow-datasets copy; never downloads.

    Images are scaled to [0, 1] floats; the model is :func:`small_cnn`. ``num_train`` / ``num_test`` keep the
    first examples of each split (useful to stay within a few minutes on a CPU).

    Args:
        data_dir: TFDS data directory (default: TFDS's own, ``~/tensorflow_datasets``
            or ``$TFDS_DATA_DIR``).
        num_train: optional positive int, keep only this many training examples.
        num_test: optional positive int, keep only this many test examples.
        target: one accuracy or a (loose, tight) pair that "steps to target" counts to.

    Raises:
        DatasetNotAvailableError: CIFAR-10 is not prepared in ``data_dir``.
    """
    import tensorflow_datasets as tfds

    if num_train is not None:
        num_train = validation.check_positive_int("num_train", num_train)
    if num_test is not None:
        num_test = validation.check_positive_int("num_test", num_test)
    targets = check_targets(target)

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

    train, held_out = carve_validation(as_split(train_data, num_train))
    test = as_split(test_data, num_test)
    return Task(
        name="cifar10",
        train=train,
        validation=held_out,
        test=test,
        num_classes=10,
        description=f"CIFAR-10 (TFDS, {len(train)} train / {len(held_out)} validation / {len(test)} test images)",
        model_fn=functools.partial(small_cnn, train.x.shape[1:], 10),
        targets=targets,
    )


def digits_task(seed=0, target=DIGITS_TARGETS, width=64):
    """The UCI handwritten digits, bundled with scikit-learn (no download), with a small MLP.

    1,797 real 8x8 grey-level images of the digits 0-9 (Alpaydin and Kaynak,
    UCI ML repository), pixels scaled to [0, 1]. A seeded fifth becomes the
    test split (359 images), a fifth of the rest the validation split (288),
    the remaining 1,150 the training split. Model: :func:`mlp` 64 -> ``width``
    -> ``width`` -> 10.

    Args:
        seed: seed of the split.
        target: one accuracy or a (loose, tight) pair.
        width: hidden units per layer.

    Raises:
        ImportError: scikit-learn is missing (``pip install tf_largebatch[demo]``).

    References:
        Alpaydin and Kaynak, "Optical Recognition of Handwritten Digits", UCI
        Machine Learning Repository, 1998 (``sklearn.datasets.load_digits``).
    """
    from sklearn.datasets import load_digits

    targets = check_targets(target)
    width = validation.check_positive_int("width", width)
    data = load_digits()
    everything = Split((data.data / 16.0).astype(np.float32), data.target.astype(np.int32))
    rest, test = carve_validation(everything, seed=seed)
    train, held_out = carve_validation(rest, seed=seed + 1)
    return Task(
        name="digits",
        train=train,
        validation=held_out,
        test=test,
        num_classes=10,
        description=(f"UCI digits (scikit-learn load_digits, 8x8 images): {len(train)} train / {len(held_out)} "
                     f"validation / {len(test)} test, split seed {seed}; MLP 64-{width}-{width}-10"),
        model_fn=functools.partial(mlp, (64,), 10, width),
        targets=targets,
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


def make_task(model_fn, train, test, target, name="custom", description=None, validation_data=None):
    """A :class:`Task` from a user's own model builder and data.

    Args:
        model_fn: ``model_fn() -> keras.Model`` returning a fresh, built model
            whose output is one logit per class (the loss is sparse categorical
            cross-entropy from logits).
        train: ``(x, y)`` arrays with integer labels, or a finite
            ``tf.data.Dataset`` of ``(x, y)`` (examples or batches); the study
            keeps it in memory and draws its minibatches itself.
        test: the same for the test set.
        target: one accuracy in (0, 1], or an increasing (loose, tight) pair,
            that "steps to target" counts to.
        name: short name for the outputs.
        description: one line for the outputs (default: the sizes).
        validation_data: the selection split, like ``train``; default: a
            seeded fifth of ``train`` (:func:`carve_validation`).
    """
    if not callable(model_fn):
        raise ValueError(f"`model_fn` must be callable (returning a keras.Model). Received: {model_fn!r}")
    targets = check_targets(target)
    train_split, test_split = _as_split("train", train), _as_split("test", test)
    if validation_data is None:
        train_split, held_out = carve_validation(train_split)
    else:
        held_out = _as_split("validation_data", validation_data)
    num_classes = int(max(train_split.y.max(), test_split.y.max(), held_out.y.max())) + 1
    return Task(
        name=str(name),
        train=train_split,
        validation=held_out,
        test=test_split,
        num_classes=num_classes,
        description=description or (f"{name}: {len(train_split)} train / {len(held_out)} validation / "
                                    f"{len(test_split)} test examples"),
        model_fn=model_fn,
        targets=targets,
    )
