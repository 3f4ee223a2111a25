"""Running a whole study: the grid, then the analysis, the files and the figures.

:func:`run` is the Python entry point for a user's own model and data;
:func:`run_task` is what it and ``tf-largebatch demo`` share.
"""

import dataclasses
import math
import pathlib
import sys

from tf_largebatch.atomic_files import write_text_atomically
from tf_largebatch.study import recipes
from tf_largebatch.study.grid import GridRunner, StudyConfig, build_model
from tf_largebatch.study.store import RunStore
from tf_largebatch.study.tasks import make_task


@dataclasses.dataclass
class StudyResult:
    """What a study produced.

    Attributes:
        result: the analysis (``summary``, ``fits``, ``paired_comparisons``,
            ``noise_scale``, ``sensitivity``, ``targets``;
            :func:`tf_largebatch.study.report.analyse`).
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
                    f"length={run['length']:<5} seed={run['seed']}")
        if resumed:
            print(f"[{done}/{planned}] {what}: already done", file=self.stream, flush=True)
            return
        if run is None:
            print(f"[{done}/{planned}] {what}: done", file=self.stream, flush=True)
            return
        outcome = (f"diverged at step {run['diverged_at_step']}" if run["diverged"]
                   else f"best validation acc {100 * run['best_validation_accuracy']:.2f}%")
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
        task: a :class:`tf_largebatch.study.tasks.Task` (with ``model_fn`` and ``targets``).
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
    resolved = [recipes.resolve(name) for name in config.optimizers]
    names = [r.name for r in resolved]
    if len(set(names)) != len(names):
        raise ValueError(f"`optimizers` must name each optimizer once. Received: {names}")
    config = dataclasses.replace(config, optimizers=tuple(resolved))
    build_model(task.model_fn)  # a bad model_fn fails here, before the output directory exists
    runner_check = GridRunner.check_contenders(resolved)
    if runner_check:
        raise ValueError(runner_check)
    store = RunStore(output_dir, config.fingerprint(task))
    header = {
        "task": task.description,
        "bayes_test_accuracy": task.bayes_test_accuracy,
        "config": dataclasses.asdict(config),
        "initial_budget_steps": {str(b): config.budget(b) for b in config.batch_sizes},
        "optimizer_recipes": {r.name: r.describe() for r in resolved},
        "base_batch_size": recipes.BASE_BATCH_SIZE,
        "protocol": "Shallue et al. 2019: per batch size, tune learning rate and schedule length on a validation "
                    "split, count steps to each target on the test split over reporting seeds; McCandlish et al. "
                    "2018: S = S_min (1 + B_crit / B)",
        "evaluation_bound": f"a crossing is placed within max(1 step, {100 * config.eval_spacing:g} % of its step)",
    }
    targets = ", ".join(f"{100 * t:.1f}%" for t in task.targets)
    print(f"Task: {task.description}; targets: {targets} accuracy (selection on validation, report on test)",
          file=stream)
    print(f"{len(config.optimizers)} optimizers x {len(config.batch_sizes)} batch sizes; tuning grid "
          f"{config.num_learning_rates} learning rates x {config.schedule_lengths} schedule lengths; "
          f"{config.seeds} reporting seeds; writing to {output_dir}", file=stream, flush=True)
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
    transfers = {r.name: r.transfer_from for r in resolved if r.transfer_from}
    result = report.analyse(runs, runner.plan, list(task.targets), names, transfers,
                            list(config.batch_sizes), (config.gradient_samples, config.noise_micro_batch))
    paths = report.write_outputs(output_dir, header, runs, result, runner.plan)
    table = report.tables(result)
    if not math.isnan(task.bayes_test_accuracy):
        table += f"\n(the teacher itself scores {100 * task.bayes_test_accuracy:.2f}% test accuracy)"
    paths["table.txt"] = output_dir / "table.txt"
    write_text_atomically(paths["table.txt"], table + "\n")
    if runs:
        for path in plots.plot_all(result, output_dir):
            paths[path.name] = path
    print("\n" + table, file=stream)
    print(f"\nResults in {output_dir.resolve()}: " + ", ".join(sorted(paths)), file=stream, flush=True)
    return StudyResult(result=result, runs=runs, table=table, paths=paths, interrupted=interrupted)


def run(model_fn, train, test, target, output_dir, optimizers=recipes.DEFAULT_OPTIMIZERS,
        batch_sizes=StudyConfig.batch_sizes, progress=True, name="custom", validation_data=None, **config):
    """A batch-size scaling study of your own model and data.

    For each optimizer and batch size it tunes the peak learning rate and the
    schedule length on a validation split (carved from ``train`` unless
    ``validation_data`` is given), runs the selected setting with ``seeds``
    reporting seeds (the same for every optimizer), counts their steps to each
    target on ``test``, and reports means with 95 % intervals, paired
    comparisons between optimizers, the fit ``S = S_min (1 + B_crit / B)`` with
    its residuals and bootstrap interval, and the gradient noise scale along the
    runs, in files and figures under ``output_dir`` (see ``docs/study.md``).
    Running it again with the same arguments resumes: finished runs are skipped.

    Example::

        import keras
        import tf_largebatch.study

        def model_fn():
            return keras.Sequential([keras.Input((20,)), keras.layers.Dense(64, activation="relu"),
                                     keras.layers.Dense(3)])

        outcome = tf_largebatch.study.run(model_fn, (x_train, y_train), (x_test, y_test), target=(0.85, 0.9),
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
        test: the same for the test set (reporting only).
        target: an accuracy in (0, 1], or an increasing (loose, tight) pair, that
            "steps to target" counts to.
        output_dir: where the results go.
        optimizers: names (package, Keras or :data:`tf_largebatch.study.recipes.RECIPES`)
            or :class:`tf_largebatch.study.recipes.Recipe` objects (your own
            setting); ``"NAME-untuned"`` adds an untuned-transfer contender of
            ``NAME``. The first is the reference of the paired comparisons.
        batch_sizes: increasing batch sizes, each at most the training-set size.
        progress: a progress bar (True) or one line per finished run (False).
        name: the task's name in the outputs.
        validation_data: the selection split; default a seeded fifth of ``train``.
        **config: any other field of :class:`tf_largebatch.study.grid.StudyConfig`
            (``num_learning_rates``, ``schedule_lengths``, ``budget_examples``,
            ``min_steps``, ``max_steps``, ``seeds``, ``eval_spacing``, ...).

    Returns:
        A :class:`StudyResult`.

    Raises:
        KeyboardInterrupt: after writing the outputs of the finished runs.

    References:
        Shallue et al., "Measuring the Effects of Data Parallelism on Neural
        Network Training", JMLR 2019. McCandlish et al., "An Empirical Model of
        Large-Batch Training", 2018.
    """
    study_config = StudyConfig(optimizers=tuple(optimizers), batch_sizes=tuple(batch_sizes), **config)
    for optimizer in study_config.optimizers:
        recipes.resolve(optimizer)
    task = make_task(model_fn, train, test, target, name=name, validation_data=validation_data)
    outcome = run_task(task, study_config, output_dir, progress=progress)
    if outcome.interrupted:
        raise KeyboardInterrupt
    return outcome
