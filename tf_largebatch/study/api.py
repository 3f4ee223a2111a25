"""Running a whole study: the grid, then the analysis, the files and the figures.

:func:`run` is the Python entry point for a user's own model and data;
:func:`run_task` is what it and ``tf-largebatch demo`` share.
"""

import dataclasses
import math
import pathlib
import sys

from tf_largebatch.study import recipes
from tf_largebatch.study.grid import GridRunner, StudyConfig, build_model
from tf_largebatch.study.store import RunStore, write_text_atomically
from tf_largebatch.study.tasks import make_task


@dataclasses.dataclass
class StudyResult:
    """What a study produced.

    Attributes:
        result: the analysis (``summary``, ``per_optimizer``, ``noise_scale``,
            ``seed_spread_at_largest_batch``, ``target_test_accuracy``).
        runs: every finished run (dicts, with their curves).
        table: the printed report.
        paths: the files written, by name.
        interrupted: True if a ``KeyboardInterrupt`` stopped the grid.
    """

    result: dict
    runs: list
    table: str
    paths: dict
    interrupted: bool


class _Progress:
    """One ``keras.utils.Progbar`` over the whole study, or one line per finished run."""

    def __init__(self, enabled, stream):
        self.enabled = enabled
        self.stream = stream
        self.bar = None
        self.done = 0

    def __call__(self, run, done, planned, resumed):
        self.done = done
        if self.enabled:
            import keras

            if self.bar is None:
                self.bar = keras.utils.Progbar(planned, unit_name="run")
            self.bar.target = planned
            self.bar.update(done, finalize=False)
            return
        if run is None:
            what = "noise-scale measurement"
        else:
            what = (f"{run['optimizer']:>10} B={run['batch_size']:<5} lr={run['learning_rate']:<10.4g} "
                    f"seed={run['seed']}")
        if resumed:
            print(f"[{done}/{planned}] {what}: already done", file=self.stream, flush=True)
            return
        if run is None:
            print(f"[{done}/{planned}] {what}: done", file=self.stream, flush=True)
            return
        outcome = (f"diverged at step {run['diverged_at_step']}" if run["diverged"]
                   else f"best test acc {100 * run['best_test_accuracy']:.2f}%")
        print(f"[{done}/{planned}] {what}: {run['steps_run']} steps, {outcome} ({run['cpu_seconds']:.1f} s CPU)",
              file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.update(self.done, finalize=True)


def run_task(task, config, output_dir, progress=True, stream=None):
    """Runs (or resumes) a study of ``task`` into ``output_dir`` and writes every output.

    A ``KeyboardInterrupt`` during the grid keeps the finished runs, writes the
    outputs of what is done and returns with ``interrupted=True``.

    Args:
        task: a :class:`tf_largebatch.study.tasks.Task` (with ``model_fn`` and ``target``).
        config: a :class:`tf_largebatch.study.grid.StudyConfig`.
        output_dir: directory of the results (created; a study there with the
            same settings is resumed).
        progress: a progress bar (True) or one line per run (False).
        stream: where the lines and tables go (default ``sys.stdout``).
    """
    from tf_largebatch.study import plots, report

    stream = stream or sys.stdout
    output_dir = pathlib.Path(output_dir)
    largest = config.batch_sizes[-1]
    if largest > len(task.train):
        raise ValueError(f"`batch_sizes`: {largest} is larger than the training set ({len(task.train)} examples).")
    build_model(task.model_fn)  # a bad model_fn fails here, before the output directory exists
    store = RunStore(output_dir, config.fingerprint(task))
    steps_by_batch = {b: config.steps(b) for b in config.batch_sizes}
    header = {
        "task": task.description,
        "bayes_test_accuracy": task.bayes_test_accuracy,
        "config": dataclasses.asdict(config),
        "steps_by_batch_size": {str(b): s for b, s in steps_by_batch.items()},
        "optimizers": {name: recipes.resolve(name).describe() for name in config.optimizers},
        "base_batch_size": recipes.BASE_BATCH_SIZE,
        "protocol": "Shallue et al. 2019: per batch size, tune the learning rate and count steps to the target; "
                    "McCandlish et al. 2018: S = S_min (1 + B_crit / B)",
    }
    print(f"Task: {task.description}; target: {100 * task.target:.1f}% test accuracy", file=stream)
    print(f"{len(config.optimizers)} optimizers x {len(config.batch_sizes)} batch sizes x >= "
          f"{config.num_learning_rates} learning rates; writing to {output_dir}", file=stream, flush=True)
    reporter = _Progress(progress, stream)
    runner = GridRunner(task, config, store, on_run_end=reporter)
    interrupted = False
    try:
        runner.run()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        reporter.close()
    if interrupted:
        print(f"\nInterrupted: keeping the {len(store.runs)} finished runs; the same command resumes.",
              file=sys.stderr)
    runs = store.runs
    result = report.analyse(runs, task.target, list(config.optimizers), list(config.batch_sizes), steps_by_batch,
                            store.extras.get("noise_scale"))
    paths = report.write_outputs(output_dir, header, runs, result)
    table = report.tables(result, list(config.optimizers), list(config.batch_sizes), steps_by_batch)
    if not math.isnan(task.bayes_test_accuracy):
        table += f"\n(the teacher itself scores {100 * task.bayes_test_accuracy:.2f}% test accuracy)"
    paths["table.txt"] = output_dir / "table.txt"
    write_text_atomically(paths["table.txt"], table + "\n")
    if runs:
        for path in plots.plot_all(runs, result, list(config.optimizers), list(config.batch_sizes), steps_by_batch,
                                   output_dir, bayes_accuracy=task.bayes_test_accuracy):
            paths[path.name] = path
    print("\n" + table, file=stream)
    print(f"\nResults in {output_dir.resolve()}: " + ", ".join(sorted(paths)), file=stream, flush=True)
    return StudyResult(result=result, runs=runs, table=table, paths=paths, interrupted=interrupted)


def run(model_fn, train, test, target, output_dir, optimizers=recipes.DEFAULT_OPTIMIZERS,
        batch_sizes=StudyConfig.batch_sizes, progress=True, name="custom", **config):
    """A batch-size scaling study of your own model and data.

    For each optimizer and batch size it tunes the peak learning rate on a grid
    centred on the optimizer's scaling rule, counts the steps to reach ``target``
    test accuracy, and reports the best learning rates, the maximal useful batch
    size, the fit ``S = S_min (1 + B_crit / B)`` and the gradient noise scale, in
    files and figures under ``output_dir`` (see ``docs/study.md``). Running it
    again with the same arguments resumes: finished runs are skipped.

    Example::

        import keras
        import tf_largebatch.study

        def model_fn():
            return keras.Sequential([keras.Input((20,)), keras.layers.Dense(64, activation="relu"),
                                     keras.layers.Dense(3)])

        outcome = tf_largebatch.study.run(model_fn, (x_train, y_train), (x_test, y_test), target=0.9,
                                output_dir="my_study", batch_sizes=(32, 128, 512, 2048))
        print(outcome.table)

    Args:
        model_fn: ``model_fn() -> keras.Model``, a fresh built model producing
            one logit per class (the loss is sparse categorical cross-entropy
            from logits; labels are integer class indices). Keras's seed is set
            before each call, so initial weights follow the study's seeds.
        train: ``(x, y)`` arrays or a finite ``tf.data.Dataset`` of ``(x, y)``
            (examples or batches); held in memory, minibatches drawn from it
            with replacement inside the compiled training loop.
        test: the same for the test set (evaluated whole, ``evaluations`` times per run).
        target: test accuracy in (0, 1] that "steps to target" counts to.
        output_dir: where the results go.
        optimizers: names (package, Keras or :data:`tf_largebatch.study.recipes.RECIPES`).
        batch_sizes: increasing batch sizes, each at most the training-set size.
        progress: a progress bar (True) or one line per finished run (False).
        name: the task's name in the outputs.
        **config: any other field of :class:`tf_largebatch.study.grid.StudyConfig`
            (``num_learning_rates``, ``learning_rate_factor``, ``lr_multiplier``,
            ``budget_examples``, ``min_steps``, ``max_steps``, ``seeds``, ...).

    Returns:
        A :class:`StudyResult`.

    Raises:
        KeyboardInterrupt: after writing the outputs of the finished runs.

    References:
        Shallue et al., "Measuring the Effects of Data Parallelism on Neural
        Network Training", JMLR 2019. McCandlish et al., "An Empirical Model of
        Large-Batch Training", 2018.
    """
    task = make_task(model_fn, train, test, target, name=name)
    study_config = StudyConfig(optimizers=tuple(optimizers), batch_sizes=tuple(batch_sizes), **config)
    for optimizer in study_config.optimizers:
        recipes.resolve(optimizer)
    outcome = run_task(task, study_config, output_dir, progress=progress)
    if outcome.interrupted:
        raise KeyboardInterrupt
    return outcome
