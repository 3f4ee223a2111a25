"""``tf-largebatch demo``: a batch-size scaling study, offline, on a CPU.

For each optimizer and batch size the peak learning rate is tuned on a grid
centred on the optimizer's scaling rule, and every run counts the optimizer
steps it needs to reach a fixed test accuracy (Shallue et al., 2019). The
outputs show how far each optimizer scales: steps to target against batch size
(log-log, with perfect scaling and the measured gradient noise scale), the
maximal useful batch, the fit S = S_min (1 + B_crit / B) (McCandlish et al.,
2018), the best accuracies and the learning-rate sensitivity at the largest
batch. Re-running the same command resumes an interrupted study.

Every flag is checked before anything runs: a bad one exits with status 2,
names the flag and creates no directory.
"""

import argparse
import math
import os
import pathlib
import sys

from tf_largebatch.study import recipes

DEFAULT_BATCH_SIZES = (32, 128, 512, 2048, 8192)
QUICK_OPTIMIZERS = ("MSGD", "SNGM", "LAMB", "VRMomentum")
QUICK_BATCH_SIZES = (128, 512, 2048, 8192)
DEFAULT_OUTPUT_DIR = "tf-largebatch-study"


class UsageError(ValueError):
    """A flag's value is wrong; the message names the flag."""


def add_arguments(parser):
    """Adds the study's flags to ``parser``."""
    parser.add_argument("--optimizers", default=None,
                        help="comma-separated names: MSGD (Keras SGD, momentum 0.9) or any tf_largebatch or Keras "
                        f"optimizer class (default: {','.join(recipes.DEFAULT_OPTIMIZERS)})")
    parser.add_argument("--batch-sizes", default=None,
                        help=f"comma-separated batch sizes (default: {','.join(map(str, DEFAULT_BATCH_SIZES))})")
    parser.add_argument("--quick", action="store_true",
                        help="a smaller grid of the same study for a first look: optimizers "
                        f"{','.join(QUICK_OPTIMIZERS)}, batch sizes {','.join(map(str, QUICK_BATCH_SIZES))}, "
                        "one widening per side, two sensitivity steps, one seed")
    parser.add_argument("--learning-rates", type=int, default=4,
                        help="learning rates per (optimizer, batch size) before widening (default: %(default)s)")
    parser.add_argument("--lr-factor", type=float, default=2.0,
                        help="ratio of neighbouring learning rates in the grid (default: %(default)s)")
    parser.add_argument("--lr-multiplier", type=float, default=1.0,
                        help="shifts the whole learning-rate grid by this factor (default: %(default)s)")
    parser.add_argument("--dataset", choices=("teacher_student", "cifar10"), default="teacher_student",
                        help="the offline synthetic task (default) or CIFAR-10 from a prepared TFDS copy "
                        "(never downloaded)")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory for --dataset cifar10")
    parser.add_argument("--train-size", type=int, default=None,
                        help="training examples (default: 131072, or all of CIFAR-10)")
    parser.add_argument("--test-size", type=int, default=None,
                        help="test examples (default: 8192, or all of CIFAR-10)")
    parser.add_argument("--target", type=float, default=None,
                        help="test accuracy that 'steps to target' counts to (default: the task's own)")
    parser.add_argument("--budget-examples", type=int, default=None,
                        help="examples per run; steps = clip(this / batch size, --min-steps, --max-steps) "
                        "(default: 262144)")
    parser.add_argument("--min-steps", type=int, default=64, help="fewest steps of a run (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=1024, help="most steps of a run (default: %(default)s)")
    parser.add_argument("--evaluations", type=int, default=32, help="test evaluations per run (default: %(default)s)")
    parser.add_argument("--gradient-samples", type=int, default=4,
                        help="k gradient samples per step (micro-batches) for the VR optimizers and the noise "
                        "scale (default: %(default)s)")
    parser.add_argument("--xla", choices=("auto", "on", "off"), default="auto",
                        help="compile the training steps with XLA: auto (only many small steps, where it pays), "
                        "on, off (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, weights and minibatches (default: 0)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds of the best run per optimizer at the largest batch (default: 3, --quick 1)")
    parser.add_argument("--output-dir", default=None,
                        help=f"results directory; the same directory resumes (default: ./{DEFAULT_OUTPUT_DIR}, "
                        f"--quick ./{DEFAULT_OUTPUT_DIR}-quick)")
    parser.add_argument("--no-progress", action="store_true", help="one line per finished run instead of a bar")
    return parser


def _list(flag, text, convert):
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise UsageError(f"{flag} must name at least one value, got {text!r}")
    try:
        return [convert(item) for item in items]
    except ValueError:
        raise UsageError(f"{flag} must be a comma-separated list, got {text!r}") from None


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


def config_from_args(args):
    """``(StudyConfig keyword arguments, output path)`` from parsed flags; UsageError names a bad flag."""
    quick = args.quick
    optimizers = _list("--optimizers", args.optimizers, str) if args.optimizers else list(
        QUICK_OPTIMIZERS if quick else recipes.DEFAULT_OPTIMIZERS)
    for name in optimizers:
        try:
            recipes.resolve(name)
        except ValueError as error:
            raise UsageError(f"--optimizers: {error}") from None
    _check("--optimizers", len(set(optimizers)) == len(optimizers), args.optimizers, "a list without repeats")
    batch_sizes = _list("--batch-sizes", args.batch_sizes, int) if args.batch_sizes else list(
        QUICK_BATCH_SIZES if quick else DEFAULT_BATCH_SIZES)
    for batch_size in batch_sizes:
        _check("--batch-sizes", batch_size >= 1, args.batch_sizes, "positive integers")
    _check("--batch-sizes", len(set(batch_sizes)) == len(batch_sizes), args.batch_sizes, "distinct values")
    batch_sizes = sorted(batch_sizes)
    _check("--learning-rates", args.learning_rates >= 2, args.learning_rates, "an integer >= 2")
    _check("--lr-factor", math.isfinite(args.lr_factor) and args.lr_factor > 1, args.lr_factor, "a finite number > 1")
    _check("--lr-multiplier", math.isfinite(args.lr_multiplier) and args.lr_multiplier > 0, args.lr_multiplier,
           "a finite number > 0")
    _check("--gradient-samples", args.gradient_samples >= 2, args.gradient_samples, "an integer >= 2")
    for batch_size in batch_sizes:
        _check("--batch-sizes", batch_size % args.gradient_samples == 0, args.batch_sizes,
               f"multiples of --gradient-samples ({args.gradient_samples})")
    for flag, value in (("--train-size", args.train_size), ("--test-size", args.test_size)):
        _check(flag, value is None or value >= 1, value, "an integer >= 1")
    if args.train_size is not None:
        _check("--train-size", args.train_size >= batch_sizes[-1], args.train_size,
               f"at least the largest batch size ({batch_sizes[-1]} in --batch-sizes)")
    elif args.dataset == "teacher_student":
        _check("--batch-sizes", batch_sizes[-1] <= 131072, args.batch_sizes,
               "at most the training-set size (131072; see --train-size)")
    _check("--target", args.target is None or (math.isfinite(args.target) and 0 < args.target <= 1), args.target,
           "a test accuracy in (0, 1]")
    _check("--seed", args.seed >= 0, args.seed, "an integer >= 0")
    _check("--evaluations", args.evaluations >= 1, args.evaluations, "an integer >= 1")
    seeds = args.seeds if args.seeds is not None else (1 if quick else 3)
    _check("--seeds", seeds >= 1, seeds, "an integer >= 1")
    budget = args.budget_examples if args.budget_examples is not None else 2**18
    min_steps, max_steps = args.min_steps, args.max_steps
    _check("--budget-examples", budget >= 1, budget, "an integer >= 1")
    _check("--min-steps", min_steps >= 1, min_steps, "an integer >= 1")
    _check("--max-steps", max_steps >= min_steps, max_steps, f"an integer >= --min-steps ({min_steps})")
    output_dir = _check_output_dir(args.output_dir or (DEFAULT_OUTPUT_DIR + ("-quick" if quick else "")))
    config = dict(
        optimizers=tuple(optimizers), batch_sizes=tuple(batch_sizes), num_learning_rates=args.learning_rates,
        learning_rate_factor=args.lr_factor, lr_multiplier=args.lr_multiplier, budget_examples=budget,
        min_steps=min_steps, max_steps=max_steps, evaluations=args.evaluations,
        gradient_samples=args.gradient_samples, seed=args.seed, seeds=seeds, max_widening=1 if quick else 2,
        sensitivity_steps=2 if quick else 3, xla=args.xla,
    )
    return config, output_dir


def load_task(args):
    from tf_largebatch.study import tasks

    extra = {} if args.target is None else {"target": args.target}
    if args.dataset == "cifar10":
        return tasks.cifar10_task(args.data_dir, args.train_size, args.test_size, **extra)
    return tasks.teacher_student_task(num_train=args.train_size or 131072, num_test=args.test_size or 8192,
                                      seed=args.seed, **extra)


def _error(message):
    print(f"tf-largebatch demo: error: {message}", file=sys.stderr)
    return 2


def run(args, verbose=False):
    """Runs the study from parsed flags; returns the exit code (0, 2 usage, 130 interrupted).

    TensorFlow starts (quietly unless ``verbose``) only once every flag is valid.
    """
    try:
        config, output_dir = config_from_args(args)
    except UsageError as error:
        return _error(error)
    from tf_largebatch.startup import start_tensorflow

    start_tensorflow(verbose)
    from tf_largebatch.study import api, grid, tasks
    from tf_largebatch.study.store import StoreMismatchError

    try:
        task = load_task(args)
    except tasks.DatasetNotAvailableError as error:
        return _error(f"--dataset {args.dataset}: {error}")
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
