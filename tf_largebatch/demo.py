"""tf-largebatch demo: a miniature of the papers' batch-size studies, offline, on a CPU.

Trains every requested optimizer at a small and at a large batch size for the
same number of *epochs* (so the large batch takes far fewer steps), under
``tf.distribute.MirroredStrategy`` over several logical CPU replicas, with the
papers' kind of schedule: linear warm-up, cosine decay, and a peak learning
rate scaled with the batch size (linearly for SGD with momentum, Goyal et al.;
with the square root for the normalised and adaptive methods, as SNGM's
Corollary 1 and the LAMB/limit-of-batch-size papers do). Then it prints a
table in the style of the SNGM paper's Table 2 (test accuracy, final training
loss and generalisation gap per optimizer and batch size) and the GSNR
statistics of the VR runs, and writes a PNG of the curves and a CSV/JSON of
every number. Each finished run is written at once, so an interrupted demo
keeps what it finished.

Run it as ``tf-largebatch demo`` or ``python -m tf_largebatch.demo``.
"""

import argparse
import csv
import dataclasses
import datetime
import json
import math
import os
import pathlib
import sys
import time

DEFAULT_OPTIMIZERS = ("MSGD", "LARS", "LAMB", "SNGM", "VRSGD", "VRMomentum", "VRAdam", "VRLAMB", "VRLARS")
DEFAULT_BATCH_SIZES = (128, 4096)
BASE_BATCH_SIZE = 128


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the demo builds one optimizer.

    Attributes:
        source: ``"keras"`` (``keras.optimizers.<class_name>``) or ``"tf_largebatch"``
            (``tf_largebatch.optimizers.<class_name>``, looked up when the run starts).
        class_name: the optimizer class.
        base_learning_rate: peak learning rate at ``BASE_BATCH_SIZE``.
        scaling: ``"linear"`` or ``"sqrt"``: how the peak grows with the batch size.
        kwargs: further constructor arguments.
    """

    source: str
    class_name: str
    base_learning_rate: float
    scaling: str
    kwargs: tuple = ()

    def peak_learning_rate(self, batch_size):
        from tf_largebatch.scaling import scale_learning_rate

        return scale_learning_rate(self.base_learning_rate, BASE_BATCH_SIZE, batch_size, rule=self.scaling)


# Base learning rates: a x1/4, x1, x4 sweep at batch size 128 on the default
# task (README, "demo"); the large batch gets them through the scaling rule only.
RECIPES = {
    "MSGD": Recipe("keras", "SGD", 0.0125, "linear", (("momentum", 0.9),)),
    "SGD": Recipe("keras", "SGD", 0.125, "linear"),
    "Adam": Recipe("keras", "Adam", 2e-3, "sqrt"),
    "LARS": Recipe("tf_largebatch", "LARS", 1.0, "sqrt"),
    "LAMB": Recipe("tf_largebatch", "LAMB", 8e-3, "sqrt"),
    "SNGM": Recipe("tf_largebatch", "SNGM", 0.0125, "sqrt"),
    # A VR variant uses its base optimizer's learning rate (not tuned separately), so the
    # comparison isolates the GSNR factor.
    "VRSGD": Recipe("tf_largebatch", "VRSGD", 0.125, "linear"),
    "VRMomentum": Recipe("tf_largebatch", "VRMomentum", 0.0125, "linear"),
    "VRAdam": Recipe("tf_largebatch", "VRAdam", 2e-3, "sqrt"),
    "VRLAMB": Recipe("tf_largebatch", "VRLAMB", 8e-3, "sqrt"),
    "VRLARS": Recipe("tf_largebatch", "VRLARS", 1.0, "sqrt"),
}

SUMMARY_FIELDS = (
    "optimizer",
    "batch_size",
    "replicas",
    "gradient_accumulation_steps",
    "epochs",
    "steps",
    "peak_learning_rate",
    "scaling",
    "warmup_steps",
    "test_accuracy",
    "test_loss",
    "train_accuracy",
    "train_loss",
    "generalization_gap",
    "last_epoch_train_loss",
    "num_gradient_samples",
    "seconds",
)
CURVE_FIELDS = (
    "optimizer",
    "batch_size",
    "epoch",
    "step",
    "learning_rate",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
)
GSNR_FIELDS = (
    "optimizer",
    "batch_size",
    "num_gradient_samples",
    "variable",
    "size",
    "mean_square",
    "variance",
    "gsnr_mean",
    "fraction_at_lower",
    "fraction_at_upper",
)


# --------------------------------------------------------------------- CLI
def add_arguments(parser):
    """Adds the demo's flags to ``parser`` (an ``argparse.ArgumentParser``)."""
    parser.add_argument(
        "--optimizers",
        default=",".join(DEFAULT_OPTIMIZERS),
        help="comma-separated optimizer names (default: %(default)s; also SGD, Adam). "
        "MSGD, SGD and Adam are Keras's own; the rest are tf_largebatch.optimizers classes.",
    )
    parser.add_argument(
        "--batch-sizes",
        default=",".join(str(b) for b in DEFAULT_BATCH_SIZES),
        help="comma-separated global batch sizes, each divisible by the replicas (default: %(default)s)",
    )
    parser.add_argument("--replicas", type=int, default=4, help="logical CPU replicas (default: %(default)s)")
    parser.add_argument(
        "--epochs",
        type=int,
        default=8,
        help="passes over the training set, the same for every batch size as in the papers "
        "(so a larger batch takes fewer steps; default: %(default)s)",
    )
    parser.add_argument(
        "--lr-multiplier",
        type=float,
        default=1.0,
        help="multiplies every optimizer's base learning rate, e.g. for a learning-rate sweep (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup-fraction",
        type=float,
        default=0.1,
        help="fraction of the steps spent in linear warm-up before the cosine decay (default: %(default)s)",
    )
    parser.add_argument(
        "--dataset",
        choices=("teacher_student", "cifar10"),
        default="teacher_student",
        help="offline synthetic task (default) or CIFAR-10 from a local TFDS copy (never downloaded)",
    )
    parser.add_argument("--data-dir", default=None, help="TFDS data directory for --dataset cifar10")
    parser.add_argument(
        "--train-size", type=int, default=None, help="training examples (default: 16384, or all of CIFAR-10)"
    )
    parser.add_argument(
        "--test-size", type=int, default=None, help="test examples (default: 4096, or all of CIFAR-10)"
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where to write results.csv/json, curves.csv, gsnr.csv, table.txt and demo.png "
        "(default: ./tf-largebatch-demo-<date>-<time>)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the data and of every model (default: %(default)s)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (one line per finished run)")
    return parser


def _parse_list(name, text, convert=str):
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise ValueError(f"`{name}` must name at least one value, got {text!r}.")
    try:
        return [convert(item) for item in items]
    except ValueError:
        raise ValueError(f"`{name}` must be a comma-separated list of {convert.__name__}, got {text!r}.") from None


@dataclasses.dataclass(frozen=True)
class Settings:
    """The demo's validated flags."""

    optimizers: tuple
    batch_sizes: tuple
    replicas: int
    epochs: int
    lr_multiplier: float
    warmup_fraction: float
    dataset: str
    data_dir: object
    train_size: object
    test_size: object
    output_dir: pathlib.Path
    seed: int
    progress: bool


def settings_from_args(args):
    """Validates parsed flags; bad values raise ValueError naming the flag and the value."""
    optimizers = tuple(_parse_list("--optimizers", args.optimizers))
    for name in optimizers:
        if name not in RECIPES:
            raise ValueError(
                f"`--optimizers`: unknown optimizer {name!r}; choose from {', '.join(RECIPES)}."
            )
    batch_sizes = tuple(_parse_list("--batch-sizes", args.batch_sizes, int))
    if args.replicas < 1:
        raise ValueError(f"`--replicas` must be >= 1, got {args.replicas!r}.")
    for batch_size in batch_sizes:
        if batch_size < 1 or batch_size % args.replicas:
            raise ValueError(
                f"`--batch-sizes`: {batch_size} must be a positive multiple of --replicas ({args.replicas})."
            )
    if args.epochs < 1:
        raise ValueError(f"`--epochs` must be >= 1, got {args.epochs!r}.")
    if not args.lr_multiplier > 0.0:
        raise ValueError(f"`--lr-multiplier` must be > 0, got {args.lr_multiplier!r}.")
    if not 0.0 <= args.warmup_fraction < 1.0:
        raise ValueError(f"`--warmup-fraction` must be in [0, 1), got {args.warmup_fraction!r}.")
    for flag, value in (("--train-size", args.train_size), ("--test-size", args.test_size)):
        if value is not None and value < 1:
            raise ValueError(f"`{flag}` must be >= 1, got {value!r}.")
    output_dir = args.output_dir or f"tf-largebatch-demo-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    return Settings(
        optimizers=optimizers,
        batch_sizes=batch_sizes,
        replicas=args.replicas,
        epochs=args.epochs,
        lr_multiplier=args.lr_multiplier,
        warmup_fraction=args.warmup_fraction,
        dataset=args.dataset,
        data_dir=args.data_dir,
        train_size=args.train_size,
        test_size=args.test_size,
        output_dir=pathlib.Path(output_dir),
        seed=args.seed,
        progress=not args.no_progress,
    )


# ------------------------------------------------------------ TF plumbing
_STRATEGIES = {}


def mirrored_strategy(devices):
    """One MirroredStrategy per device list and process, reducing through one device.

    CPU collectives are keyed by group: strategies of different sizes built in
    one process (repeated runs, a test session) collide, and between logical
    CPUs of one host they gain nothing; ``tf_largebatch.strategy`` does the same.
    """
    key = tuple(devices)
    if key not in _STRATEGIES:
        import tensorflow as tf

        _STRATEGIES[key] = tf.distribute.MirroredStrategy(
            list(devices), cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    return _STRATEGIES[key]


def resolve_optimizer_class(recipe):
    """The optimizer class a recipe names; a clear error if it does not exist."""
    if recipe.source == "keras":
        import keras

        return getattr(keras.optimizers, recipe.class_name)
    import tf_largebatch.optimizers

    cls = getattr(tf_largebatch.optimizers, recipe.class_name, None)
    if cls is None:
        available = sorted(
            name for name, value in vars(tf_largebatch.optimizers).items() if isinstance(value, type)
        )
        raise ValueError(
            f"`--optimizers`: tf_largebatch.optimizers has no {recipe.class_name!r} in this installation "
            f"(it has {', '.join(available)})."
        )
    return cls


def is_vr_optimizer(optimizer_class):
    """True for the VR optimizers: their GSNR needs >= 2 gradient samples per step, and they record it."""
    from tf_largebatch.optimizers import VR

    return isinstance(optimizer_class, type) and issubclass(optimizer_class, VR)


def learning_rate_schedule(peak, total_steps, warmup_steps):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to 0."""
    import keras

    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=peak,
        warmup_steps=warmup_steps,
    )


def build_model(task, seed):
    """A small MLP for the synthetic task, a small CNN for images."""
    import keras

    initializer = keras.initializers.GlorotUniform
    x_shape = task.train.x.shape[1:]
    if len(x_shape) == 1:
        layers = [
            keras.layers.Dense(128, activation="relu", kernel_initializer=initializer(seed), name="dense_1"),
            keras.layers.Dense(128, activation="relu", kernel_initializer=initializer(seed + 1), name="dense_2"),
        ]
    else:
        layers = [
            keras.layers.Conv2D(32, 3, activation="relu", kernel_initializer=initializer(seed), name="conv_1"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu", kernel_initializer=initializer(seed + 1), name="conv_2"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu", kernel_initializer=initializer(seed + 2), name="dense_1"),
        ]
    outputs = keras.layers.Dense(task.num_classes, kernel_initializer=initializer(seed + 3), name="logits")
    return keras.Sequential([keras.Input(x_shape), *layers, outputs], name=f"{task.name}_model")


def load_task(settings):
    from tf_largebatch import demo_data

    if settings.dataset == "cifar10":
        return demo_data.cifar10_task(settings.data_dir, settings.train_size, settings.test_size)
    return demo_data.teacher_student_task(
        num_train=settings.train_size or 16384, num_test=settings.test_size or 4096, seed=settings.seed
    )


# ------------------------------------------------------------- one run
def epoch_recorder(description, epochs, progress):
    """A Keras callback that records step and learning rate per epoch and drives a progress bar."""
    import keras
    from tqdm.auto import tqdm

    class EpochRecorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.learning_rates = []
            self.steps = []
            self.bar = tqdm(total=epochs, desc=description, unit="epoch", disable=not progress, leave=False)

        def on_epoch_end(self, epoch, logs=None):
            optimizer = self.model.optimizer
            self.steps.append(int(optimizer.iterations.numpy()))
            self.learning_rates.append(float(optimizer.learning_rate.numpy()))
            logs = logs or {}
            self.bar.set_postfix(
                loss=f"{logs.get('loss', float('nan')):.3f}",
                test_acc=f"{logs.get('val_accuracy', float('nan')):.3f}",
            )
            self.bar.update(1)

        def on_train_end(self, logs=None):
            self.bar.close()

    return EpochRecorder()


def _to_float(value):
    import numpy as np

    return float(np.asarray(value))


def gradient_statistics_of(optimizer, model):
    """Per-variable GSNR statistics of a VR optimizer as plain floats, with variable sizes."""
    statistics = optimizer.gradient_statistics()
    sizes = {variable.path: int(math.prod(variable.shape)) for variable in model.trainable_variables}
    return {
        path: {"size": sizes.get(path), **{key: _to_float(value) for key, value in values.items()}}
        for path, values in statistics.items()
    }


def train_one(task, optimizer_name, batch_size, settings, strategy):
    """Trains one model with one optimizer at one global batch size; returns its record."""
    import keras
    import tensorflow as tf

    recipe = RECIPES[optimizer_name]
    optimizer_class = resolve_optimizer_class(recipe)
    accumulation = 2 if settings.replicas == 1 and is_vr_optimizer(optimizer_class) else 1
    micro_batch = batch_size // accumulation
    steps_per_epoch = len(task.train) // batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"`--batch-sizes`: {batch_size} is larger than the training set ({len(task.train)} examples)."
        )
    total_steps = steps_per_epoch * settings.epochs
    warmup_steps = int(round(settings.warmup_fraction * total_steps))
    peak = recipe.peak_learning_rate(batch_size) * settings.lr_multiplier

    keras.utils.set_random_seed(settings.seed)
    kwargs = dict(recipe.kwargs)
    if accumulation > 1:
        kwargs["gradient_accumulation_steps"] = accumulation
    with strategy.scope():
        model = build_model(task, settings.seed)
        optimizer = optimizer_class(learning_rate=learning_rate_schedule(peak, total_steps, warmup_steps), **kwargs)
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    train_data = (
        tf.data.Dataset.from_tensor_slices((task.train.x, task.train.y))
        .shuffle(len(task.train), seed=settings.seed, reshuffle_each_iteration=True)
        .batch(micro_batch, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    eval_batch = 2048 - 2048 % settings.replicas

    def evaluation_data(split):
        return tf.data.Dataset.from_tensor_slices((split.x, split.y)).batch(eval_batch).prefetch(tf.data.AUTOTUNE)

    recorder = epoch_recorder(f"{optimizer_name:>10} B={batch_size}", settings.epochs, settings.progress)
    start = time.perf_counter()
    history = model.fit(
        train_data,
        epochs=settings.epochs,
        steps_per_epoch=steps_per_epoch * accumulation,
        validation_data=evaluation_data(task.test),
        callbacks=[recorder],
        shuffle=False,  # the dataset reshuffles itself each epoch
        verbose=0,
    ).history
    seconds = time.perf_counter() - start
    train_loss, train_accuracy = model.evaluate(evaluation_data(task.train), verbose=0)
    test_loss, test_accuracy = model.evaluate(evaluation_data(task.test), verbose=0)

    record = {
        "optimizer": optimizer_name,
        "optimizer_class": f"{recipe.source}.optimizers.{recipe.class_name}",
        "optimizer_kwargs": kwargs,
        "batch_size": batch_size,
        "replicas": settings.replicas,
        "gradient_accumulation_steps": accumulation,
        "epochs": settings.epochs,
        "steps": int(optimizer.iterations.numpy()),
        "peak_learning_rate": peak,
        "scaling": recipe.scaling,
        "warmup_steps": warmup_steps,
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "train_accuracy": float(train_accuracy),
        "train_loss": float(train_loss),
        "generalization_gap": float(train_accuracy - test_accuracy),
        "last_epoch_train_loss": float(history["loss"][-1]),
        "num_gradient_samples": None,
        "seconds": seconds,
        "history": {
            "epoch": list(range(1, settings.epochs + 1)),
            "step": recorder.steps,
            "learning_rate": recorder.learning_rates,
            "train_loss": [float(v) for v in history["loss"]],
            "train_accuracy": [float(v) for v in history["accuracy"]],
            "test_loss": [float(v) for v in history["val_loss"]],
            "test_accuracy": [float(v) for v in history["val_accuracy"]],
        },
        "gsnr": None,
    }
    if is_vr_optimizer(optimizer_class):
        record["num_gradient_samples"] = int(optimizer.num_gradient_samples)
        record["gsnr"] = gradient_statistics_of(optimizer, model)
    return record


# ------------------------------------------------------------ results
class ResultsWriter:
    """Writes each finished run at once: rows appended to CSVs, JSON replaced atomically."""

    def __init__(self, output_dir, header):
        self.output_dir = pathlib.Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.header = header
        self.runs = []
        self.paths = {
            "results_csv": self.output_dir / "results.csv",
            "curves_csv": self.output_dir / "curves.csv",
            "gsnr_csv": self.output_dir / "gsnr.csv",
            "results_json": self.output_dir / "results.json",
            "table": self.output_dir / "table.txt",
            "plot": self.output_dir / "demo.png",
        }
        for key, fields in (("results_csv", SUMMARY_FIELDS), ("curves_csv", CURVE_FIELDS), ("gsnr_csv", GSNR_FIELDS)):
            with open(self.paths[key], "w", newline="") as stream:
                csv.writer(stream).writerow(fields)
        self._write_json()

    def _append_rows(self, key, fields, rows):
        with open(self.paths[key], "a", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=fields, extrasaction="ignore")
            writer.writerows(rows)

    def _write_json(self):
        temporary = self.paths["results_json"].with_suffix(".json.tmp")
        with open(temporary, "w") as stream:
            json.dump({**self.header, "runs": self.runs}, stream, indent=1)
        os.replace(temporary, self.paths["results_json"])

    def add(self, record):
        self.runs.append(record)
        self._append_rows("results_csv", SUMMARY_FIELDS, [record])
        history = record["history"]
        self._append_rows(
            "curves_csv",
            CURVE_FIELDS,
            [
                {
                    "optimizer": record["optimizer"],
                    "batch_size": record["batch_size"],
                    **{key: values[i] for key, values in history.items()},
                }
                for i in range(len(history["epoch"]))
            ],
        )
        if record["gsnr"]:
            self._append_rows(
                "gsnr_csv",
                GSNR_FIELDS,
                [
                    {
                        "optimizer": record["optimizer"],
                        "batch_size": record["batch_size"],
                        "num_gradient_samples": record["num_gradient_samples"],
                        "variable": path,
                        **values,
                    }
                    for path, values in record["gsnr"].items()
                ],
            )
        self._write_json()

    def finish(self, table_text, title):
        self.paths["table"].write_text(table_text)
        if self.runs:
            from tf_largebatch import plotting

            plotting.plot_runs(self.runs, self.paths["plot"], title=title)


def results_table(runs, batch_sizes):
    """The SNGM paper's Table 2 layout: one row per optimizer, a column group per batch size."""
    optimizers = list(dict.fromkeys(run["optimizer"] for run in runs))
    by_key = {(run["optimizer"], run["batch_size"]): run for run in runs}
    group = "{:>9} {:>10} {:>7}"
    lines = [
        "Test accuracy (%), final training loss and generalization gap "
        "(train acc - test acc, points), same epochs for every batch size",
        f"{'':<11}" + " | ".join(f"{f'B = {b}':^28}" for b in batch_sizes),
        f"{'optimizer':<11}" + " | ".join(group.format("test acc", "train loss", "gap") for _ in batch_sizes),
    ]
    for name in optimizers:
        cells = []
        for batch_size in batch_sizes:
            run = by_key.get((name, batch_size))
            if run is None:
                cells.append(group.format("-", "-", "-"))
            else:
                cells.append(
                    group.format(
                        f"{100 * run['test_accuracy']:.2f}",
                        f"{run['train_loss']:.4f}",
                        f"{100 * run['generalization_gap']:+.2f}",
                    )
                )
        lines.append(f"{name:<11}" + " | ".join(cells))
    return "\n".join(lines)


def gsnr_table(runs):
    """GSNR statistics of the VR runs: size-weighted means over the model's variables."""
    vr_runs = [run for run in runs if run["gsnr"]]
    if not vr_runs:
        return ""
    lines = [
        "GSNR of the VR runs at the last step: k = gradient samples per step; mean raw GSNR (before",
        "normalisation) size-weighted over variables, and its min/max over variables; fractions of",
        "elements clipped at the lower bound gamma / the upper bound",
        f"{'optimizer':<11}{'B':>6}{'k':>4}{'GSNR mean':>11}{'min layer':>11}{'max layer':>11}"
        f"{'at lower':>10}{'at upper':>10}",
    ]
    for run in vr_runs:
        stats = list(run["gsnr"].values())
        sizes = [s["size"] or 1 for s in stats]
        total = sum(sizes)

        def weighted(key):
            return sum(s[key] * n for s, n in zip(stats, sizes)) / total

        gsnr_means = [s["gsnr_mean"] for s in stats]
        lines.append(
            f"{run['optimizer']:<11}{run['batch_size']:>6}{run['num_gradient_samples']:>4}"
            f"{weighted('gsnr_mean'):>11.4g}{min(gsnr_means):>11.3g}{max(gsnr_means):>11.3g}"
            f"{weighted('fraction_at_lower'):>10.1%}{weighted('fraction_at_upper'):>10.1%}"
        )
    return "\n".join(lines)


def _run_line(record):
    return (
        f"done {record['optimizer']:>10} B={record['batch_size']:<6} {record['steps']:>5} steps "
        f"peak lr {record['peak_learning_rate']:.4g}: test acc {100 * record['test_accuracy']:.2f}%, "
        f"train loss {record['train_loss']:.4f} ({record['seconds']:.1f} s)"
    )


# ------------------------------------------------------------------ main
def run(args):
    """Runs the demo from parsed flags; returns the exit code."""
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        print(f"tf-largebatch demo: error: {error}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tf_largebatch.strategy import logical_cpus

    try:
        devices = logical_cpus(settings.replicas)
    except ValueError as error:
        print(f"tf-largebatch demo: error: --replicas {settings.replicas}: {error} Run the demo in a fresh process.",
              file=sys.stderr)
        return 2

    from tf_largebatch import demo_data

    try:
        # Fail on a missing optimizer class before spending minutes on the others.
        for name in settings.optimizers:
            resolve_optimizer_class(RECIPES[name])
        task = load_task(settings)
    except (ValueError, demo_data.DatasetNotAvailableError) as error:
        print(f"tf-largebatch demo: error: {error}", file=sys.stderr)
        return 2

    strategy = mirrored_strategy(devices)
    header = {
        "task": task.description,
        "bayes_test_accuracy": task.bayes_test_accuracy,
        "settings": {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in dataclasses.asdict(settings).items()},
        "base_batch_size": BASE_BATCH_SIZE,
    }
    writer = ResultsWriter(settings.output_dir, header)
    title = (
        f"{task.name}: {settings.epochs} epochs, {settings.replicas} replicas "
        "(dashed: a VR variant, in its base optimizer's colour)"
    )
    print(f"Task: {task.description}")
    print(
        f"{len(settings.optimizers)} optimizers x {len(settings.batch_sizes)} batch sizes, {settings.epochs} epochs "
        f"each, MirroredStrategy over {settings.replicas} logical CPUs; writing to {settings.output_dir}"
    )
    interrupted = False
    start = time.perf_counter()
    try:
        for batch_size in settings.batch_sizes:
            for name in settings.optimizers:
                record = train_one(task, name, batch_size, settings, strategy)
                writer.add(record)
                print(_run_line(record), flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print(f"\nInterrupted: keeping the {len(writer.runs)} finished runs.", file=sys.stderr)

    table = results_table(writer.runs, settings.batch_sizes)
    gsnr = gsnr_table(writer.runs)
    if math.isfinite(task.bayes_test_accuracy):
        table += f"\n(the teacher itself scores {100 * task.bayes_test_accuracy:.2f}% test accuracy)"
    text = table + ("\n\n" + gsnr if gsnr else "") + "\n"
    writer.finish(text, title)
    print()
    print(text)
    print(f"Total {time.perf_counter() - start:.0f} s. Results in {settings.output_dir.resolve()}:")
    for key in ("table", "results_csv", "curves_csv", "gsnr_csv", "results_json", "plot"):
        path = writer.paths[key]
        if path.exists():
            print(f"  {path}")
    return 130 if interrupted else 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tf_largebatch.demo", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
