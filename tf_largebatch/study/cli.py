"""``tf-largebatch demo``: a batch-size scaling study, offline, on a CPU.

For each optimizer and batch size the peak learning rate and the schedule
length are tuned on a validation split, the selected setting runs again with
several seeds (the same for every optimizer), and every run counts the optimizer
steps it needs to reach a loose and a tight test accuracy (Shallue et al., 2019).
The outputs give each cell's mean with a 95 % interval, paired comparisons
between optimizers, the fit S = S_min (1 + B_crit / B) (McCandlish et al., 2018)
with its residuals and bootstrap interval, the gradient noise scale along the
runs, and the learning-rate sensitivity at the largest batch. Re-running the
same command resumes an interrupted study.

Every flag is checked before anything runs: a bad one exits with status 2,
names the flag and creates no directory; TensorFlow starts only after that.
"""

import argparse
import math
import os
import pathlib
import sys

from tf_largebatch.study import recipes, tasks

DATASETS = ("digits", "teacher_student", "cifar10")
DEMO_OPTIMIZERS = ("MSGD", "SNGM", "LARS", "LAMB", "VRMomentum", "MSGD-untuned", "AdaScale(MSGD)-untuned")
DEFAULT_BATCH_SIZES = (16, 64, 256, 1024)
DEFAULT_SEEDS = 5
QUICK_OPTIMIZERS = ("MSGD", "SNGM")
QUICK_BATCH_SIZES = (16, 128, 1024)
QUICK_SEEDS = 3
DEFAULT_OUTPUT_DIR = "tf-largebatch-study"
#: Per dataset: examples of the longest initial schedule, the learning-rate shift of every recipe, the
#: training-set size (None: read from the data), the default batch sizes.
DATASET_DEFAULTS = {
    "digits": {"budget_examples": 2**14, "lr_multiplier": 8.0, "train_size": tasks.DIGITS_TRAIN_SIZE},
    "teacher_student": {"budget_examples": 2**18, "lr_multiplier": 1.0, "train_size": 131072},
    "cifar10": {"budget_examples": 2**18, "lr_multiplier": 1.0, "train_size": None},
}


class UsageError(ValueError):
    """A flag's value is wrong; the message names the flag."""


def add_arguments(parser):
    """Adds the study's flags to ``parser``."""
    parser.add_argument("--optimizers", default=None,
                        help="comma-separated names: MSGD (Keras SGD, momentum 0.9), any tf_largebatch or Keras "
                        "optimizer class, or NAME-untuned (reuses NAME's smallest-batch setting everywhere, "
                        f"untuned); the first is the reference of the comparisons (default: "
                        f"{','.join(DEMO_OPTIMIZERS)})")
    parser.add_argument("--batch-sizes", default=None,
                        help=f"comma-separated batch sizes (default: {','.join(map(str, DEFAULT_BATCH_SIZES))})")
    parser.add_argument("--quick", action="store_true",
                        help="a smaller grid of the same study for a first look: optimizers "
                        f"{','.join(QUICK_OPTIMIZERS)}, batch sizes {','.join(map(str, QUICK_BATCH_SIZES))}, "
                        f"{QUICK_SEEDS} seeds, one widening per side")
    parser.add_argument("--learning-rates", type=int, default=4,
                        help="learning rates per (optimizer, batch size) before widening (default: %(default)s)")
    parser.add_argument("--lr-factor", type=float, default=2.0,
                        help="ratio of neighbouring learning rates in the grid (default: %(default)s)")
    parser.add_argument("--lr-multiplier", type=float, default=None,
                        help="shifts every optimizer's learning-rate grid by this factor (default: 8 on digits, "
                        "1 otherwise)")
    parser.add_argument("--schedule-lengths", type=int, default=3,
                        help="schedule lengths per (optimizer, batch size) before widening, each half the next "
                        "(default: %(default)s)")
    parser.add_argument("--dataset", choices=DATASETS, default="digits",
                        help="the UCI digits bundled with scikit-learn (default), the synthetic teacher-student "
                        "task, or CIFAR-10 from a prepared TFDS copy (never downloaded); all offline")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory (only with --dataset cifar10)")
    parser.add_argument("--train-size", type=int, default=None,
                        help="training examples, before a fifth is kept for validation (teacher_student: default "
                        "131072; cifar10: default all; not for digits)")
    parser.add_argument("--test-size", type=int, default=None,
                        help="test examples (teacher_student: default 8192; cifar10: default all; not for digits)")
    parser.add_argument("--target", default=None,
                        help="the accuracy 'steps to target' counts to, or a loose,tight pair (default: the "
                        "task's own: digits 0.85,0.93)")
    parser.add_argument("--budget-examples", type=int, default=None,
                        help="examples of the longest initial schedule: clip(this / batch size, --min-steps, "
                        "--max-steps) steps, grown when a selection sits at that edge (default: 16384 on digits, "
                        "262144 otherwise)")
    parser.add_argument("--min-steps", type=int, default=32,
                        help="fewest steps of the longest initial schedule (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=4096,
                        help="most steps of the longest initial schedule (default: %(default)s)")
    parser.add_argument("--eval-spacing", type=float, default=0.05,
                        help="evaluations at most max(1, this x step) steps apart, which bounds the error of a "
                        "crossing (default: %(default)s)")
    parser.add_argument("--gradient-samples", type=int, default=4,
                        help="k gradient samples per step (micro-batches) for the VR optimizers and the noise "
                        "scale (default: %(default)s)")
    parser.add_argument("--xla", choices=("auto", "on", "off"), default="auto",
                        help="compile the training steps with XLA: auto (only many small steps, where it pays), "
                        "on, off (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data split and the tuning runs (default: 0)")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"reporting seeds per cell, the same for every optimizer (default: {DEFAULT_SEEDS}, "
                        f"--quick {QUICK_SEEDS})")
    parser.add_argument("--tuning-seeds", type=int, default=2,
                        help="seeds of every tuning run; a setting is selected on their mean validation steps, "
                        "each reaching the target (default: %(default)s)")
    parser.add_argument("--output-dir", default=None,
                        help=f"results directory; the same directory resumes (default: ./{DEFAULT_OUTPUT_DIR}, "
                        f"--quick ./{DEFAULT_OUTPUT_DIR}-quick)")
    parser.add_argument("--no-progress", action="store_true", help="one line per finished run instead of a bar")
    return parser


def _list(flag, text, convert, expected):
    """A comma-separated flag value: no empty list, no empty item, every item converted."""
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise UsageError(f"{flag} must name at least one value, got {text!r}")
    if not all(items):
        raise UsageError(f"{flag} must not hold empty items, got {text!r}")
    try:
        return [convert(item) for item in items]
    except ValueError:
        raise UsageError(f"{flag} must be a comma-separated list of {expected}, got {text!r}") from None


def _check(flag, ok, value, expected):
    if not ok:
        raise UsageError(f"{flag} must be {expected}, got {value!r}")


def _check_output_dir(text):
    path = pathlib.Path(text).expanduser()
    if path.exists():
        _check("--output-dir", path.is_dir(), text, "a directory (it is an existing file)")
        _check("--output-dir", os.access(path, os.W_OK | os.X_OK), text, "a writable directory")
        return path
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    _check("--output-dir", parent.is_dir(), text, f"a path under a directory ({parent} is a file)")
    _check("--output-dir", os.access(parent, os.W_OK | os.X_OK), text, f"a writable place ({parent} is not)")
    return path


def _targets(text):
    values = _list("--target", text, float, "accuracies")
    for value in values:
        _check("--target", math.isfinite(value) and 0 < value <= 1, text, "accuracies in (0, 1]")
    _check("--target", len(values) <= 2 and values == sorted(set(values)), text,
           "one accuracy or an increasing loose,tight pair")
    return tuple(values)


def _dataset_flags(args):
    """Flags that only some datasets use: a flag that would do nothing is an error."""
    if args.data_dir is not None:
        _check("--data-dir", args.dataset == "cifar10", args.data_dir, "given only with --dataset cifar10")
    if args.dataset == "digits":
        for flag, value in (("--train-size", args.train_size), ("--test-size", args.test_size)):
            _check(flag, value is None, value, "left out with --dataset digits (its splits are fixed)")
    for flag, value in (("--train-size", args.train_size), ("--test-size", args.test_size)):
        _check(flag, value is None or value >= 1, value, "an integer >= 1")


def _batch_sizes(args, quick):
    given = args.batch_sizes is not None
    batch_sizes = _list("--batch-sizes", args.batch_sizes, int, "integers") if given else list(
        QUICK_BATCH_SIZES if quick else DEFAULT_BATCH_SIZES)
    for batch_size in batch_sizes:
        _check("--batch-sizes", batch_size >= 1, args.batch_sizes, "positive integers")
    _check("--batch-sizes", len(set(batch_sizes)) == len(batch_sizes), args.batch_sizes, "distinct values")
    _check("--gradient-samples", args.gradient_samples >= 2, args.gradient_samples, "an integer >= 2")
    for batch_size in batch_sizes:
        if batch_size % args.gradient_samples:
            if given:
                raise UsageError(f"--batch-sizes must be multiples of --gradient-samples ({args.gradient_samples}), "
                                 f"got {args.batch_sizes!r}")
            raise UsageError(f"--gradient-samples must divide every batch size ({','.join(map(str, batch_sizes))}, "
                             f"the default --batch-sizes), got {args.gradient_samples!r}")
    batch_sizes = sorted(batch_sizes)
    train_size = args.train_size or DATASET_DEFAULTS[args.dataset]["train_size"]
    if args.train_size is not None:
        # A fifth of --train-size becomes the validation split.
        usable = args.train_size - max(1, round(tasks.VALIDATION_FRACTION * args.train_size))
        _check("--train-size", usable >= batch_sizes[-1], args.train_size,
               f"large enough that its training part ({usable}, after a fifth for validation) holds the largest "
               f"batch size ({batch_sizes[-1]} in --batch-sizes)")
    elif train_size is not None:
        usable = train_size - round(tasks.VALIDATION_FRACTION * train_size) if args.dataset != "digits" else \
            train_size
        _check("--batch-sizes", batch_sizes[-1] <= usable, args.batch_sizes,
               f"at most the training split ({usable} examples on {args.dataset}" +
               ("; see --train-size)" if args.dataset != "digits" else ")"))
    return batch_sizes


def config_from_args(args):
    """``(StudyConfig keyword arguments, output path)`` from parsed flags; UsageError names a bad flag.

    Optimizer names that are not built-in recipes are checked later, by
    :func:`resolve_optimizers`, once TensorFlow may start.
    """
    quick = args.quick
    _dataset_flags(args)
    optimizers = _list("--optimizers", args.optimizers, str, "names") if args.optimizers is not None else list(
        QUICK_OPTIMIZERS if quick else DEMO_OPTIMIZERS)
    optimizers = [recipes.builtin(name).name if recipes.builtin(name) else name for name in optimizers]
    _check("--optimizers", len(set(optimizers)) == len(optimizers), args.optimizers, "a list without repeats")
    batch_sizes = _batch_sizes(args, quick)
    _check("--learning-rates", args.learning_rates >= 2, args.learning_rates, "an integer >= 2")
    _check("--lr-factor", math.isfinite(args.lr_factor) and args.lr_factor > 1, args.lr_factor, "a finite number > 1")
    defaults = DATASET_DEFAULTS[args.dataset]
    lr_multiplier = args.lr_multiplier if args.lr_multiplier is not None else defaults["lr_multiplier"]
    _check("--lr-multiplier", math.isfinite(lr_multiplier) and lr_multiplier > 0, args.lr_multiplier,
           "a finite number > 0")
    _check("--schedule-lengths", args.schedule_lengths >= 1, args.schedule_lengths, "an integer >= 1")
    targets = _targets(args.target) if args.target is not None else None
    _check("--seed", args.seed >= 0, args.seed, "an integer >= 0")
    _check("--eval-spacing", math.isfinite(args.eval_spacing) and 0 < args.eval_spacing < 1, args.eval_spacing,
           "a number in (0, 1)")
    seeds = args.seeds if args.seeds is not None else (QUICK_SEEDS if quick else DEFAULT_SEEDS)
    _check("--seeds", seeds >= 1, seeds, "an integer >= 1")
    _check("--tuning-seeds", args.tuning_seeds >= 1, args.tuning_seeds, "an integer >= 1")
    budget = args.budget_examples if args.budget_examples is not None else defaults["budget_examples"]
    min_steps, max_steps = args.min_steps, args.max_steps
    _check("--budget-examples", budget >= 1, budget, "an integer >= 1")
    _check("--min-steps", min_steps >= 1, min_steps, "an integer >= 1")
    _check("--max-steps", max_steps >= min_steps, max_steps, f"an integer >= --min-steps ({min_steps})")
    output_dir = _check_output_dir(args.output_dir or (DEFAULT_OUTPUT_DIR + ("-quick" if quick else "")))
    config = dict(
        optimizers=tuple(optimizers), batch_sizes=tuple(batch_sizes), num_learning_rates=args.learning_rates,
        learning_rate_factor=args.lr_factor, lr_multiplier=lr_multiplier, schedule_lengths=args.schedule_lengths,
        budget_examples=budget, min_steps=min_steps, max_steps=max_steps, eval_spacing=args.eval_spacing,
        gradient_samples=args.gradient_samples, seed=args.seed, seeds=seeds, tuning_seeds=args.tuning_seeds,
        max_widening=1 if quick else 2,
        xla=args.xla,
    )
    return config, output_dir, targets


def resolve_optimizers(names):
    """The names as the study records them; UsageError for an unknown name or an orphan untuned contender.

    Names outside the built-in recipes need Keras: call this after every other flag is checked.
    """
    resolved = []
    for name in names:
        try:
            resolved.append(recipes.resolve(name))
        except ValueError as error:
            raise UsageError(f"--optimizers: {error}") from None
    tuned = {r.name for r in resolved if not r.transfer_from}
    for recipe in resolved:
        if recipe.transfer_from and recipe.transfer_from not in tuned:
            raise UsageError(f"--optimizers: {recipe.name} reuses the setting selected for {recipe.transfer_from}, "
                             f"which must be in --optimizers too")
    return tuple(r.name for r in resolved)


def load_task(args, targets):
    extra = {} if targets is None else {"target": targets}
    if args.dataset == "cifar10":
        return tasks.cifar10_task(args.data_dir, args.train_size, args.test_size, **extra)
    if args.dataset == "teacher_student":
        return tasks.teacher_student_task(num_train=args.train_size or 131072, num_test=args.test_size or 8192,
                                          seed=args.seed, **extra)
    return tasks.digits_task(seed=args.seed, **extra)


def _error(message):
    print(f"tf-largebatch demo: error: {message}", file=sys.stderr)
    return 2


def run(args, verbose=False):
    """Runs the study from parsed flags; returns the exit code (0, 2 usage, 130 interrupted).

    TensorFlow starts (quietly unless ``verbose``) only once every flag is valid.
    """
    try:
        config, output_dir, targets = config_from_args(args)
    except UsageError as error:
        return _error(error)
    from tf_largebatch.startup import start_tensorflow

    start_tensorflow(verbose)
    try:
        config["optimizers"] = resolve_optimizers(config["optimizers"])
    except UsageError as error:
        return _error(error)
    from tf_largebatch.study import api, grid
    from tf_largebatch.study.store import StoreMismatchError

    try:
        task = load_task(args, targets)
    except tasks.DatasetNotAvailableError as error:
        return _error(f"--dataset {args.dataset}: {error}")
    except ImportError as error:
        return _error(f"--dataset {args.dataset} needs {error.name or 'a missing package'}: pip install "
                      "'tf_largebatch[demo]'")
    if config["batch_sizes"][-1] > len(task.train):
        return _error(f"--batch-sizes: {config['batch_sizes'][-1]} is larger than the training set "
                      f"({len(task.train)} examples)")
    created = not output_dir.exists()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        if created and output_dir.exists():
            output_dir.rmdir()
        return _error(f"--output-dir {str(output_dir)!r} cannot be written: {error.strerror or error}")
    try:
        outcome = api.run_task(task, grid.StudyConfig(**config), output_dir, progress=not args.no_progress)
    except StoreMismatchError as error:
        return _error(f"--output-dir: {error}")
    return 130 if outcome.interrupted else 0


def build_parser(prog="tf-largebatch demo"):
    description = __doc__.split("\n\n")[0].split(": ", 1)[-1]
    parser = argparse.ArgumentParser(prog=prog, description=description[0].upper() + description[1:])
    return add_arguments(parser)


def main(argv=None, verbose=False):
    """``tf-largebatch demo`` / ``python -m tf_largebatch.study``; returns the exit code."""
    return run(build_parser().parse_args(argv), verbose=verbose)
